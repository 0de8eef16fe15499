// Package cache is the exact response cache of the ext_proc server: keys
// built from the canonical request, entries that carry a whole HTTP
// response, an in-process store (bigcache) with an optional shared Redis
// level, purges by key, tenant, route or model, and request collapsing.
package cache

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// Header is one stored response header (lower-case name).
type Header struct {
	Name  string
	Value string
}

// Entry is a stored response.
type Entry struct {
	Status   int
	Header   []Header
	Body     []byte
	StoredAt time.Time
	TTL      time.Duration
}

// Remaining is how long e may still be served at now (negative once stale).
func (e *Entry) Remaining(now time.Time) time.Duration {
	return e.StoredAt.Add(e.TTL).Sub(now)
}

// Age is the entry's age at now (RFC 9111's Age), in whole seconds.
func (e *Entry) Age(now time.Time) int64 {
	age := now.Sub(e.StoredAt)
	if age < 0 {
		return 0
	}
	return int64(age / time.Second)
}

// Size is the number of bytes Encode produces, used against the size bound.
func (e *Entry) Size() int {
	n := 1 + 8 + 8 + 2 + 4 + 4 + len(e.Body)
	for _, h := range e.Header {
		n += 8 + len(h.Name) + len(h.Value)
	}
	return n
}

// entryVersion leads every encoded entry so that a future layout never
// misreads an old one left in Redis.
const entryVersion = 1

// Encode lays e out as: version, stored-at (unix ns), TTL (ns), status,
// header count, each header as two length-prefixed strings, body length,
// body.
func (e *Entry) Encode() []byte {
	b := make([]byte, 0, e.Size())
	b = append(b, entryVersion)
	b = binary.BigEndian.AppendUint64(b, uint64(e.StoredAt.UnixNano()))
	b = binary.BigEndian.AppendUint64(b, uint64(e.TTL))
	b = binary.BigEndian.AppendUint16(b, uint16(e.Status))
	b = binary.BigEndian.AppendUint32(b, uint32(len(e.Header)))
	for _, h := range e.Header {
		b = binary.BigEndian.AppendUint32(b, uint32(len(h.Name)))
		b = append(b, h.Name...)
		b = binary.BigEndian.AppendUint32(b, uint32(len(h.Value)))
		b = append(b, h.Value...)
	}
	b = binary.BigEndian.AppendUint32(b, uint32(len(e.Body)))
	return append(b, e.Body...)
}

var errCorrupt = errors.New("cache entry is corrupt")

// Decode reads what Encode wrote. The body aliases b.
func Decode(b []byte) (Entry, error) {
	r := reader{b: b}
	if v := r.byte(); v != entryVersion {
		return Entry{}, fmt.Errorf("cache entry version %d, want %d", v, entryVersion)
	}
	var e Entry
	e.StoredAt = time.Unix(0, int64(r.uint64()))
	e.TTL = time.Duration(r.uint64())
	e.Status = int(r.uint16())
	n := r.uint32()
	if uint64(n)*8 > uint64(len(r.b)) {
		return Entry{}, errCorrupt
	}
	e.Header = make([]Header, 0, n)
	for range n {
		name := r.bytes(r.uint32())
		value := r.bytes(r.uint32())
		e.Header = append(e.Header, Header{Name: string(name), Value: string(value)})
	}
	e.Body = r.bytes(r.uint32())
	if r.bad || len(r.b) != 0 {
		return Entry{}, errCorrupt
	}
	return e, nil
}

// reader consumes b front to back; a short read sets bad instead of
// panicking, so a corrupt entry is an error.
type reader struct {
	b   []byte
	bad bool
}

func (r *reader) bytes(n uint32) []byte {
	if r.bad || uint64(n) > uint64(len(r.b)) {
		r.bad = true
		return nil
	}
	out := r.b[:n:n]
	r.b = r.b[n:]
	return out
}

func (r *reader) byte() byte {
	if b := r.bytes(1); b != nil {
		return b[0]
	}
	return 0
}

func (r *reader) uint16() uint16 {
	if b := r.bytes(2); b != nil {
		return binary.BigEndian.Uint16(b)
	}
	return 0
}

func (r *reader) uint32() uint32 {
	if b := r.bytes(4); b != nil {
		return binary.BigEndian.Uint32(b)
	}
	return 0
}

func (r *reader) uint64() uint64 {
	if b := r.bytes(8); b != nil {
		return binary.BigEndian.Uint64(b)
	}
	return 0
}
