package cache

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/allegro/bigcache/v3"
)

// Local is the in-process level: bigcache, bounded in memory, with each
// entry's own TTL checked on read (bigcache's life window is the longest
// TTL allowed).
type Local struct {
	bc       *bigcache.BigCache
	maxEntry int
}

// LocalConfig sizes a Local.
type LocalConfig struct {
	MemoryMB int
	// MaxEntryBytes is the largest response body kept; headers may add up
	// to headerAllowance on top.
	MaxEntryBytes int
	MaxTTL        time.Duration
	// OnEvict is called with "expired" or "no_space" when bigcache drops an
	// entry by itself (not on purges).
	OnEvict func(reason string)
}

// headerAllowance is the room for stored headers beyond the body bound.
const headerAllowance = 64 << 10

// NewLocal starts a Local; Close releases its cleaner goroutine.
func NewLocal(cfg LocalConfig) (*Local, error) {
	// bigcache splits the memory bound evenly over its shards and refuses an
	// entry larger than one shard, so use as many shards (a power of two, up
	// to 256 for lock spread) as keep each shard at four max entries or more.
	maxEntry := cfg.MaxEntryBytes + headerAllowance
	shards := 256
	memory := cfg.MemoryMB << 20
	for shards > 1 && memory/shards < 4*maxEntry {
		shards /= 2
	}
	clean := time.Minute
	if cfg.MaxTTL < clean {
		clean = cfg.MaxTTL
	}
	bcfg := bigcache.Config{
		Shards:             shards,
		LifeWindow:         cfg.MaxTTL,
		CleanWindow:        clean,
		MaxEntriesInWindow: 1024,
		MaxEntrySize:       1024,
		HardMaxCacheSize:   cfg.MemoryMB,
	}
	if cfg.OnEvict != nil {
		bcfg.OnRemoveWithReason = func(_ string, _ []byte, reason bigcache.RemoveReason) {
			switch reason {
			case bigcache.Expired:
				cfg.OnEvict("expired")
			case bigcache.NoSpace:
				cfg.OnEvict("no_space")
			}
		}
	}
	bc, err := bigcache.New(context.Background(), bcfg)
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	return &Local{bc: bc, maxEntry: maxEntry}, nil
}

// Get returns the fresh entry under k.
func (l *Local) Get(k Key, now time.Time) (Entry, bool) {
	b, err := l.bc.Get(string(k))
	if err != nil {
		return Entry{}, false
	}
	e, err := Decode(b)
	if err != nil || e.Remaining(now) <= 0 {
		_ = l.bc.Delete(string(k))
		return Entry{}, false
	}
	return e, true
}

// ErrTooLarge is returned for an entry over the size bound.
var ErrTooLarge = errors.New("cache entry is larger than max_entry_bytes")

// Set stores e under k.
func (l *Local) Set(k Key, e *Entry) error {
	return l.setEncoded(k, e.Encode())
}

func (l *Local) setEncoded(k Key, b []byte) error {
	if len(b) > l.maxEntry {
		return ErrTooLarge
	}
	return l.bc.Set(string(k), b)
}

// Purge deletes every entry sel matches and returns how many.
func (l *Local) Purge(sel Selector) int {
	if sel.Key != "" {
		if l.bc.Delete(string(sel.Key)) == nil {
			return 1
		}
		return 0
	}
	var keys []string
	it := l.bc.Iterator()
	for it.SetNext() {
		info, err := it.Value()
		if err == nil && sel.Matches(Key(info.Key())) {
			keys = append(keys, info.Key())
		}
	}
	n := 0
	for _, k := range keys {
		if l.bc.Delete(k) == nil {
			n++
		}
	}
	return n
}

// Len is the number of entries held (including stale ones not yet cleaned).
func (l *Local) Len() int { return l.bc.Len() }

// Bytes is the memory bigcache has allocated for entries.
func (l *Local) Bytes() int { return l.bc.Capacity() }

// Close stops the cleaner.
func (l *Local) Close() error { return l.bc.Close() }
