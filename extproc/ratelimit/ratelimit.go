// Package ratelimit enforces per-tenant, per-route limits with GCRA (the
// generic cell rate algorithm, a token bucket kept as one timestamp): a
// request rate with a burst, and a token budget per window that responses
// are charged after the fact and may overdraw. State lives in process or in
// Redis, where one Lua script per decision keeps N replicas on one limit.
package ratelimit

import (
	"context"
	"math"
	"sync"
	"time"
)

// Limit is one GCRA limit: Quota units per Window, of which up to Burst may
// be used at once.
type Limit struct {
	// Name appears in the RateLimit headers ("requests", "tokens").
	Name   string
	Quota  float64
	Window time.Duration
	Burst  float64
}

// interval is the time one unit costs (GCRA's emission interval).
func (l Limit) interval() time.Duration {
	return time.Duration(float64(l.Window) / l.Quota)
}

// capacity is how far ahead of now the theoretical arrival time may run.
func (l Limit) capacity() time.Duration {
	return time.Duration(l.Burst * float64(l.Window) / l.Quota)
}

// Decision is the outcome of a Take.
type Decision struct {
	Allowed bool
	// Remaining is the number of units that could still be taken now.
	Remaining int64
	// RetryAfter is how long until the denied request would be allowed.
	RetryAfter time.Duration
	// Reset is how long until the limit is fully available again.
	Reset time.Duration
}

// Limiter keeps limit state by key.
type Limiter interface {
	// Take takes n units if the limit allows it. n = 0 takes nothing and
	// asks whether anything is left, which is how a token budget is checked
	// before the request (its cost is known only from the response).
	Take(ctx context.Context, key string, l Limit, n float64) (Decision, error)
	// Charge takes n units unconditionally: a response's real token usage
	// may overdraw the budget, and the requests after it wait.
	Charge(ctx context.Context, key string, l Limit, n float64) error
}

// gcra applies one operation to the backlog (tat - now) and returns the new
// backlog and whether it was allowed. take=false charges unconditionally.
func gcra(backlog time.Duration, l Limit, n float64, take bool) (time.Duration, bool) {
	if backlog < 0 {
		backlog = 0
	}
	next := backlog + time.Duration(n*float64(l.interval()))
	if take {
		capacity := l.capacity()
		if (n > 0 && next > capacity) || (n == 0 && next >= capacity) {
			return backlog, false
		}
	}
	return next, true
}

// decide turns a backlog after (allowed) or before (denied) the operation
// into a Decision.
func decide(backlog time.Duration, allowed bool, l Limit, n float64) Decision {
	interval, capacity := l.interval(), l.capacity()
	d := Decision{Allowed: allowed, Reset: backlog}
	if free := capacity - backlog; free > 0 {
		d.Remaining = int64(math.Floor(float64(free) / float64(interval)))
	}
	if !allowed {
		d.RetryAfter = backlog + time.Duration(n*float64(interval)) - capacity
		if n == 0 {
			// A budget check passes once the backlog is strictly under
			// capacity; a nanosecond past the boundary is enough.
			d.RetryAfter++
		}
		d.Reset = backlog
	}
	return d
}

// Local keeps limits in this process.
type Local struct {
	shards [64]localShard
	now    func() time.Time
}

type localShard struct {
	mu  sync.Mutex
	tat map[string]time.Time
	// sweepAt is the size at which drained entries are next swept out:
	// twice what the last sweep left, so that a shard of live keys is
	// not scanned on every call.
	sweepAt int
}

// pruneAt is the shard size at which drained entries are swept out, so
// that keys of tenants gone quiet do not accumulate.
const pruneAt = 4096

// NewLocal returns an empty in-process limiter.
func NewLocal() *Local {
	l := &Local{now: time.Now}
	for i := range l.shards {
		l.shards[i].tat = map[string]time.Time{}
	}
	return l
}

func (l *Local) shard(key string) *localShard {
	var h uint32 = 2166136261
	for i := 0; i < len(key); i++ {
		h = (h ^ uint32(key[i])) * 16777619
	}
	return &l.shards[h%uint32(len(l.shards))]
}

// Take implements Limiter.
func (l *Local) Take(_ context.Context, key string, lim Limit, n float64) (Decision, error) {
	backlog, allowed := l.apply(key, lim, n, true)
	return decide(backlog, allowed, lim, n), nil
}

// Charge implements Limiter.
func (l *Local) Charge(_ context.Context, key string, lim Limit, n float64) error {
	l.apply(key, lim, n, false)
	return nil
}

func (l *Local) apply(key string, lim Limit, n float64, take bool) (time.Duration, bool) {
	s := l.shard(key)
	now := l.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	backlog, allowed := gcra(s.tat[key].Sub(now), lim, n, take)
	if allowed {
		if len(s.tat) >= max(pruneAt, s.sweepAt) {
			for k, t := range s.tat {
				if !t.After(now) {
					delete(s.tat, k)
				}
			}
			s.sweepAt = 2 * len(s.tat)
		}
		s.tat[key] = now.Add(backlog)
	}
	return backlog, allowed
}
