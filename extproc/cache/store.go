package cache

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/infergate/infergate/extproc/redisconn"
)

// Store is the two-level exact cache: the in-process Local first, then,
// when configured, Redis shared by every replica. Redis failures never fail
// a request: the store goes on with the local level.
type Store struct {
	local  *Local
	redis  *redisconn.Conn
	origin string
	log    *slog.Logger
	// relayed runs for each purge another replica relays, so that caches
	// beside this one (the semantic cache) purge too.
	relayed      func(Selector)
	resubscribed func()
}

// OnResubscribe registers fn to run when the purge subscription comes
// back after an outage: purges sent meanwhile were missed, so the caches
// beside this one drop what they hold and load it again from Redis. Call
// it before FollowPurges.
func (s *Store) OnResubscribe(fn func()) { s.resubscribed = fn }

// OnRelayedPurge registers fn to run for every purge relayed by another
// replica, after the in-process entries are purged. Call it before
// FollowPurges.
func (s *Store) OnRelayedPurge(fn func(Selector)) { s.relayed = fn }

// NewStore combines local with redis (nil for in-process only).
func NewStore(local *Local, redis *redisconn.Conn, log *slog.Logger) *Store {
	var id [8]byte
	_, _ = rand.Read(id[:])
	return &Store{local: local, redis: redis, origin: hex.EncodeToString(id[:]), log: log}
}

// Level says where a hit came from.
type Level string

// Levels.
const (
	LevelLocal Level = "local"
	LevelRedis Level = "redis"
)

func (s *Store) redisKey(k Key) string { return s.redis.Prefix + "c:" + string(k) }

// Get returns the fresh entry under k and the level that held it.
func (s *Store) Get(ctx context.Context, k Key) (Entry, Level, bool) {
	now := time.Now()
	if e, ok := s.local.Get(k, now); ok {
		return e, LevelLocal, true
	}
	if s.redis == nil {
		return Entry{}, "", false
	}
	var raw []byte
	err := s.redis.Do(ctx, "cache_get", func(ctx context.Context, c *redis.Client) error {
		var err error
		raw, err = c.Get(ctx, s.redisKey(k)).Bytes()
		return err
	})
	if err != nil {
		return Entry{}, "", false
	}
	e, err := Decode(raw)
	if err != nil || e.Remaining(now) <= 0 {
		return Entry{}, "", false
	}
	// Keep a local copy so the next hit on this replica skips Redis; the
	// entry keeps its own stored-at and TTL, so it expires at the same time.
	_ = s.local.setEncoded(k, raw)
	return e, LevelRedis, true
}

// Set stores e under k in both levels. Only an oversized entry is an
// error; a Redis failure is counted and logged by the connection.
func (s *Store) Set(ctx context.Context, k Key, e *Entry) error {
	b := e.Encode()
	if err := s.local.setEncoded(k, b); err != nil {
		return err
	}
	if s.redis != nil {
		_ = s.redis.Do(ctx, "cache_set", func(ctx context.Context, c *redis.Client) error {
			return c.Set(ctx, s.redisKey(k), b, e.TTL).Err()
		})
	}
	return nil
}

// purgeMessage is published so that every replica drops its local copies.
type purgeMessage struct {
	Origin   string   `json:"origin"`
	Selector Selector `json:"selector"`
}

func (s *Store) purgeChannel() string { return s.redis.Prefix + "purge" }

// Purge deletes the selected entries from this replica and from Redis, and
// tells the other replicas to drop theirs. It returns the number of entries
// deleted here and in Redis; the error reports a Redis failure (the local
// purge has happened regardless).
func (s *Store) Purge(ctx context.Context, sel Selector) (int, error) {
	n := s.local.Purge(sel)
	if s.redis == nil {
		return n, nil
	}
	msg, _ := json.Marshal(purgeMessage{Origin: s.origin, Selector: sel})
	err := s.redis.Do(ctx, "cache_purge", func(ctx context.Context, c *redis.Client) error {
		deleted, err := s.purgeRedis(ctx, c, sel)
		n += deleted
		if err != nil {
			return err
		}
		return c.Publish(ctx, s.purgeChannel(), msg).Err()
	})
	return n, err
}

func (s *Store) purgeRedis(ctx context.Context, c *redis.Client, sel Selector) (int, error) {
	if sel.Key != "" {
		n, err := c.Del(ctx, s.redisKey(sel.Key)).Result()
		return int(n), err
	}
	pattern := escapeGlob(s.redis.Prefix) + "c:" + sel.Pattern()
	total := 0
	var cursor uint64
	for {
		keys, next, err := c.Scan(ctx, cursor, pattern, 1000).Result()
		if err != nil {
			return total, err
		}
		if len(keys) > 0 {
			n, err := c.Unlink(ctx, keys...).Result()
			total += int(n)
			if err != nil {
				return total, err
			}
		}
		if next == 0 {
			return total, nil
		}
		cursor = next
	}
}

// escapeGlob quotes Redis glob metacharacters in a configured key prefix.
func escapeGlob(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\^`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// FollowPurges applies purges published by other replicas to the local
// level until ctx ends. Purges published while this replica was not
// subscribed (at start, while the connection was down, which go-redis
// repairs silently) never reach it, so at every subscription it empties
// the local level, and after an outage has the caches beside it start over
// (see OnResubscribe); Redis still holds every entry not purged.
func (s *Store) FollowPurges(ctx context.Context) {
	if s.redis == nil {
		return
	}
	for first := true; ctx.Err() == nil; {
		sub := s.redis.Client.Subscribe(ctx, s.purgeChannel())
		if _, err := sub.Receive(ctx); err != nil {
			_ = sub.Close()
			select {
			case <-ctx.Done():
			case <-time.After(redisconn.Backoff):
			}
			continue
		}
		s.subscribed(first)
		first = false
		s.applyPurges(ctx, sub.ChannelWithSubscriptions())
		_ = sub.Close()
	}
}

// subscribed empties what may hold purged entries; first is the
// subscription at start, when the caches beside this one hold only what
// they just loaded from Redis.
func (s *Store) subscribed(first bool) {
	s.local.Purge(Selector{All: true})
	if !first && s.resubscribed != nil {
		s.resubscribed()
	}
}

func (s *Store) applyPurges(ctx context.Context, ch <-chan any) {
	for {
		select {
		case <-ctx.Done():
			return
		case m, ok := <-ch:
			if !ok {
				return
			}
			switch m := m.(type) {
			case *redis.Subscription:
				if m.Kind == "subscribe" {
					// go-redis reconnected and subscribed again.
					s.subscribed(false)
				}
			case *redis.Message:
				s.applyPurge(m.Payload)
			}
		}
	}
}

func (s *Store) applyPurge(payload string) {
	var pm purgeMessage
	if err := json.Unmarshal([]byte(payload), &pm); err != nil {
		s.log.Warn("ignoring malformed purge message", "error", err)
		return
	}
	if pm.Origin == s.origin || pm.Selector.Validate() != nil {
		return
	}
	s.local.Purge(pm.Selector)
	if s.relayed != nil {
		s.relayed(pm.Selector)
	}
}

// Local is the in-process level (for its size gauges).
func (s *Store) Local() *Local { return s.local }
