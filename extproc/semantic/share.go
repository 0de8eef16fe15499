package semantic

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis layout, under the configured key prefix:
//
//	sem:e:<key>  hash: scope, q (question), vec (little-endian float32),
//	             body, hdr (JSON [[name, value], ...]), status, exp (unix ms);
//	             expires with the entry (PEXPIREAT)
//	sem:log      stream of stored entries: key, origin (the replica)
//
// A replica loads every live entry at start, then tails the stream from
// the ID it saw before loading, so nothing stored meanwhile is missed
// (applying an entry twice is harmless: it replaces itself). After a Redis
// error, or when it finds it fell behind a trimmed stream, it waits a
// second and starts over, which recovers the entries the stream no longer
// holds.
const (
	entryKeyPart = "sem:e:"
	logKeyPart   = "sem:log"
	// logMaxLen bounds the stream; replicas read it within seconds, and a
	// replica that falls further behind reloads everything.
	logMaxLen = 100000
	// logBatch is how many announcements one read takes.
	logBatch = 256
)

type sharer struct {
	c       *Cache
	client  *redis.Client
	prefix  string
	origin  string
	timeout time.Duration

	logMu   sync.Mutex
	lastLog time.Time

	// resync asks the follower to start over (see Cache.Resync).
	resync chan struct{}
}

// errResync ends a sync that Resync asked to start over.
var errResync = errors.New("semantic: resync requested")

// ShareVia makes the cache publish its entries to Redis and apply every
// entry other replicas publish, so that a paraphrase answered by one
// replica is a hit on all. An entry keeps its scope on every replica, so a
// tenant's entry still answers only that tenant. timeout bounds each
// Redis call of a Store. Call it before Run, which does the following.
func (c *Cache) ShareVia(client *redis.Client, keyPrefix string, timeout time.Duration) {
	var id [8]byte
	_, _ = rand.Read(id[:])
	if timeout <= 0 {
		timeout = 100 * time.Millisecond
	}
	c.share = &sharer{c: c, client: client, prefix: keyPrefix, origin: hex.EncodeToString(id[:]), timeout: timeout, resync: make(chan struct{}, 1)}
}

func (s *sharer) entryKey(key string) string { return s.prefix + entryKeyPart + key }
func (s *sharer) logKey() string             { return s.prefix + logKeyPart }

// publish writes e and announces it, in one transaction. A failure only
// means the other replicas do not get this entry.
func (s *sharer) publish(ctx context.Context, e *entry) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.timeout)
	defer cancel()
	hdr, _ := json.Marshal(e.resp.Headers)
	vec := make([]byte, 4*len(e.vec))
	for i, x := range e.vec {
		binary.LittleEndian.PutUint32(vec[4*i:], math.Float32bits(x))
	}
	k := s.entryKey(e.key)
	_, err := s.client.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, k, "scope", e.scope, "route", e.labels.Route, "tenant", e.labels.Scope, "model", e.labels.Model, "xkey", e.labels.Key, "q", e.question, "vec", vec, "body", e.resp.Body, "hdr", hdr, "status", e.resp.Status, "exp", e.expires.UnixMilli(), "at", e.stored.UnixMilli())
		p.PExpireAt(ctx, k, e.expires)
		p.XAdd(ctx, &redis.XAddArgs{Stream: s.logKey(), MaxLen: logMaxLen, Approx: true, Values: []any{"key", e.key, "origin", s.origin}})
		return nil
	})
	if err != nil {
		s.failed("publish", err)
		return
	}
	s.c.met.shared.WithLabelValues("published").Inc()
}

// Resync drops every entry this replica holds and, when it shares through
// Redis, loads the shared ones again: after missing purges, what it held
// may have been purged everywhere else. When sharing, the follower drops
// them itself as it starts over (within its 2 s read), so that no batch it
// fetched before can land after the drop.
func (c *Cache) Resync() {
	if c.share == nil {
		c.PurgeLocal(Selector{All: true})
		return
	}
	select {
	case c.share.resync <- struct{}{}:
	default: // one is pending
	}
}

// follow keeps the local index in step with Redis until ctx is done.
func (s *sharer) follow(ctx context.Context) {
	for ctx.Err() == nil {
		err := s.syncOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errResync) {
			s.c.PurgeLocal(Selector{All: true})
			continue
		}
		s.failed("follow", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

// syncOnce loads every entry, then applies announced ones until an error.
func (s *sharer) syncOnce(ctx context.Context) error {
	last := "0-0"
	tail, err := s.client.XRevRangeN(ctx, s.logKey(), "+", "-", 1).Result()
	if err != nil {
		return fmt.Errorf("reading the stream's tail: %w", err)
	}
	if len(tail) == 1 {
		last = tail[0].ID
	}
	if err := s.loadAll(ctx); err != nil {
		return err
	}
	return s.tail(ctx, last)
}

// tail applies the entries announced after last until an error.
func (s *sharer) tail(ctx context.Context, last string) error {
	for {
		select {
		case <-s.resync:
			return errResync
		default:
		}
		streams, err := s.client.XRead(ctx, &redis.XReadArgs{Streams: []string{s.logKey(), last}, Count: logBatch, Block: 2 * time.Second}).Result()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			return fmt.Errorf("reading the stream: %w", err)
		}
		if msgs := streams[0].Messages; len(msgs) == logBatch && last != "0-0" {
			// Behind. If the stream was trimmed past what this replica
			// read, what it reads now starts at the stream's first entry,
			// and the entries in between are gone: start over, which
			// loads every entry.
			info, err := s.client.XInfoStream(ctx, s.logKey()).Result()
			if err != nil {
				return fmt.Errorf("reading the stream's head: %w", err)
			}
			if msgs[0].ID == info.FirstEntry.ID {
				return errors.New("fell behind the trimmed stream: loading every entry again")
			}
		}
		var keys []string
		for _, st := range streams {
			for _, m := range st.Messages {
				last = m.ID
				if origin, _ := m.Values["origin"].(string); origin == s.origin {
					continue
				}
				if key, ok := m.Values["key"].(string); ok {
					keys = append(keys, s.entryKey(key))
				}
			}
		}
		if err := s.fetchAndApply(ctx, keys); err != nil {
			return err
		}
	}
}

func (s *sharer) loadAll(ctx context.Context) error {
	iter := s.client.Scan(ctx, 0, s.prefix+entryKeyPart+"*", 512).Iterator()
	var batch []string
	for iter.Next(ctx) {
		batch = append(batch, iter.Val())
		if len(batch) == 512 {
			if err := s.fetchAndApply(ctx, batch); err != nil {
				return err
			}
			batch = batch[:0]
		}
	}
	if err := iter.Err(); err != nil {
		return fmt.Errorf("scanning entries: %w", err)
	}
	return s.fetchAndApply(ctx, batch)
}

func (s *sharer) fetchAndApply(ctx context.Context, keys []string) error {
	if len(keys) == 0 {
		return nil
	}
	cmds, err := s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, k := range keys {
			p.HGetAll(ctx, k)
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("fetching entries: %w", err)
	}
	for i, cmd := range cmds {
		fields, err := cmd.(*redis.MapStringStringCmd).Result()
		if err != nil || len(fields) == 0 {
			continue // expired between announcement and fetch
		}
		e, err := decodeEntry(strings.TrimPrefix(keys[i], s.prefix+entryKeyPart), fields)
		if err != nil {
			s.failed("decode", err)
			continue
		}
		if s.c.insert(e) {
			s.c.met.shared.WithLabelValues("applied").Inc()
		}
	}
	return nil
}

// decodeEntry rebuilds an entry from its hash and checks that the key is
// the one its scope and question hash to, so a damaged hash cannot file an
// answer under another question.
func decodeEntry(key string, f map[string]string) (*entry, error) {
	exp, err := strconv.ParseInt(f["exp"], 10, 64)
	if err != nil {
		return nil, fmt.Errorf("entry %s: exp: %w", key, err)
	}
	raw := f["vec"]
	if len(raw) == 0 || len(raw)%4 != 0 {
		return nil, fmt.Errorf("entry %s: vector of %d bytes", key, len(raw))
	}
	vec := make([]float32, len(raw)/4)
	for i := range vec {
		vec[i] = math.Float32frombits(binary.LittleEndian.Uint32([]byte(raw[4*i : 4*i+4])))
	}
	vec, ok := normalize(vec)
	if !ok {
		return nil, fmt.Errorf("entry %s: vector is zero or not finite", key)
	}
	if hashHex(f["scope"], f["q"]) != key {
		return nil, fmt.Errorf("entry %s: key does not match its scope and question", key)
	}
	var hdr [][2]string
	if h := f["hdr"]; h != "" && h != "null" {
		if err := json.Unmarshal([]byte(h), &hdr); err != nil {
			return nil, fmt.Errorf("entry %s: headers: %w", key, err)
		}
	}
	status, _ := strconv.Atoi(f["status"])
	var stored time.Time
	if at, err := strconv.ParseInt(f["at"], 10, 64); err == nil {
		stored = time.UnixMilli(at)
	}
	return &entry{
		key: key, scope: f["scope"], question: f["q"], vec: vec,
		labels:  purgeLabels{Route: f["route"], Scope: f["tenant"], Model: f["model"], Key: f["xkey"]},
		resp:    StoredResponse{Status: status, Headers: hdr, Body: []byte(f["body"])},
		stored:  stored,
		expires: time.UnixMilli(exp),
	}, nil
}

// failed counts a Redis error and logs at most one every 30 seconds, so an
// outage does not flood the log.
func (s *sharer) failed(op string, err error) {
	s.c.met.shared.WithLabelValues("failed").Inc()
	s.logMu.Lock()
	defer s.logMu.Unlock()
	if time.Since(s.lastLog) < 30*time.Second {
		return
	}
	s.lastLog = time.Now()
	s.c.log.Warn("semantic cache: Redis sharing failed; this replica serves what it holds", "op", op, "error", err)
}
