package ratelimit

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/infergate/infergate/config"
	"github.com/infergate/infergate/extproc/internal/redistest"
	"github.com/infergate/infergate/extproc/redisconn"
)

var requests = Limit{Name: "requests", Quota: 2, Window: time.Second, Burst: 3}

// clock is a settable time source for the in-process limiter.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func TestLocalRequestRateWithBurst(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	l := NewLocal()
	l.now = c.now
	ctx := context.Background()
	for i := range 3 {
		d, _ := l.Take(ctx, "k", requests, 1)
		if !d.Allowed || d.Remaining != int64(2-i) {
			t.Fatalf("burst request %d: %+v", i, d)
		}
	}
	d, _ := l.Take(ctx, "k", requests, 1)
	if d.Allowed || d.Remaining != 0 || d.RetryAfter != 500*time.Millisecond {
		t.Fatalf("over burst: %+v", d)
	}
	c.t = c.t.Add(500 * time.Millisecond) // one emission interval refills one
	if d, _ := l.Take(ctx, "k", requests, 1); !d.Allowed {
		t.Fatalf("after refill: %+v", d)
	}
	if d, _ := l.Take(ctx, "other", requests, 1); !d.Allowed || d.Remaining != 2 {
		t.Fatalf("keys share state: %+v", d)
	}
}

// Keys still limited are kept however many there are, drained ones are
// swept out, and a shard full of live keys is not swept on every call
// (each sweep scans the whole shard under its lock).
func TestLocalSweepsDrainedKeysOnly(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	l := NewLocal()
	l.now = c.now
	ctx := context.Background()
	budget := Limit{Name: "tokens", Quota: 1, Window: time.Hour, Burst: 1}
	first := &l.shards[0]
	live := 0
	for i := 0; live < pruneAt+100; i++ {
		key := fmt.Sprint("tenant-", i)
		if l.shard(key) != first {
			continue
		}
		if err := l.Charge(ctx, key, budget, 1); err != nil {
			t.Fatal(err)
		}
		live++
	}
	if len(first.tat) != live {
		t.Fatalf("%d keys kept of %d still limited", len(first.tat), live)
	}
	if first.sweepAt < 2*pruneAt {
		t.Errorf("after sweeping a shard of %d live keys the next sweep is at %d: every call would scan it", live, first.sweepAt)
	}
	c.t = c.t.Add(2 * time.Hour) // every key has drained
	for i := 0; len(first.tat) >= live; i++ {
		key := fmt.Sprint("late-", i)
		if l.shard(key) == first {
			if _, err := l.Take(ctx, key, requests, 1); err != nil {
				t.Fatal(err)
			}
		}
		if i > 100*live {
			t.Fatal("drained keys were never swept out")
		}
	}
}

func TestLocalTokenBudgetOverdraw(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	l := NewLocal()
	l.now = c.now
	ctx := context.Background()
	budget := Limit{Name: "tokens", Quota: 100, Window: time.Minute, Burst: 100}
	if d, _ := l.Take(ctx, "k", budget, 0); !d.Allowed || d.Remaining != 100 {
		t.Fatalf("fresh budget: %+v", d)
	}
	// One response uses three budgets' worth: allowed after the fact.
	if err := l.Charge(ctx, "k", budget, 300); err != nil {
		t.Fatal(err)
	}
	d, _ := l.Take(ctx, "k", budget, 0)
	if d.Allowed || d.RetryAfter < 2*time.Minute || d.RetryAfter > 2*time.Minute+time.Millisecond {
		t.Fatalf("overdrawn budget: %+v (want denied for ~2m until back under the budget)", d)
	}
	c.t = c.t.Add(2*time.Minute + time.Second)
	if d, _ := l.Take(ctx, "k", budget, 0); !d.Allowed {
		t.Fatalf("recovered budget: %+v", d)
	}
}

func newRedisLimiter(t *testing.T, addr string) *Redis {
	cfg := config.Default().ExtProc.Redis
	cfg.Addr, cfg.Timeout = addr, time.Second
	conn := redisconn.New(cfg, slog.New(slog.DiscardHandler), nil)
	t.Cleanup(func() { _ = conn.Close() })
	return NewRedis(conn)
}

func TestRedisReplicasShareOneLimit(t *testing.T) {
	srv := redistest.Start(t)
	a, b := newRedisLimiter(t, srv.Addr), newRedisLimiter(t, srv.Addr)
	ctx := context.Background()
	slow := Limit{Name: "requests", Quota: 1, Window: time.Hour, Burst: 4}
	allowed := 0
	for i := range 8 {
		r := a
		if i%2 == 1 {
			r = b
		}
		d, err := r.Take(ctx, "tenant|route", slow, 1)
		if err != nil {
			t.Fatal(err)
		}
		if d.Allowed {
			allowed++
		} else if d.RetryAfter <= 0 {
			t.Fatalf("denied without Retry-After: %+v", d)
		}
	}
	if allowed != 4 {
		t.Fatalf("two replicas allowed %d requests, want the burst of 4", allowed)
	}
	budget := Limit{Name: "tokens", Quota: 10, Window: time.Hour, Burst: 10}
	if err := a.Charge(ctx, "t", budget, 50); err != nil {
		t.Fatal(err)
	}
	if d, err := b.Take(ctx, "t", budget, 0); err != nil || d.Allowed {
		t.Fatalf("replica b after a's overdraw: %+v %v", d, err)
	}
}

func TestFallbackWhenRedisIsDown(t *testing.T) {
	srv := redistest.Start(t)
	shared := newRedisLimiter(t, srv.Addr)
	srv.Kill()
	ctx := context.Background()
	open := &Fallback{Shared: shared, Local: NewLocal()}
	if d, err := open.Take(ctx, "k", requests, 1); err != nil || !d.Allowed {
		t.Fatalf("fail-open: %+v %v", d, err)
	}
	closed := &Fallback{Shared: shared, Local: NewLocal(), FailClosed: true}
	if _, err := closed.Take(ctx, "k", requests, 1); err == nil {
		t.Fatal("fail-closed allowed a request without Redis")
	}
}

// A budget of more than a million tokens a second has an emission interval
// under one microsecond, the Redis script's unit: it must still be charged.
func TestRedisEnforcesLargeTokenBudgets(t *testing.T) {
	srv := redistest.Start(t)
	r := newRedisLimiter(t, srv.Addr)
	ctx := context.Background()
	budget := Limit{Name: "tokens", Quota: 150e6, Window: time.Minute, Burst: 150e6}
	if err := r.Charge(ctx, "t", budget, 450e6); err != nil {
		t.Fatal(err)
	}
	d, err := r.Take(ctx, "t", budget, 0)
	if err != nil {
		t.Fatal(err)
	}
	if d.Allowed || d.RetryAfter < 119*time.Second || d.RetryAfter > 121*time.Second {
		t.Fatalf("150M tokens/min overdrawn by 300M: %+v, want denied for about 2m", d)
	}
}
