package redisconn

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/infergate/infergate/config"
	"github.com/infergate/infergate/extproc/internal/redistest"
)

func TestOutageBacksOffCountsAndLogsOnce(t *testing.T) {
	srv := redistest.Start(t)
	cfg := config.Default().ExtProc.Redis
	cfg.Addr, cfg.Timeout = srv.Addr, time.Second
	var logs bytes.Buffer
	var failures []string
	c := New(cfg, slog.New(slog.NewTextHandler(&logs, nil)), func(op string) { failures = append(failures, op) })
	defer c.Close()
	ctx := context.Background()
	ping := func(ctx context.Context, cl *redis.Client) error { return cl.Ping(ctx).Err() }

	if err := c.Do(ctx, "ping", ping); err != nil {
		t.Fatalf("redis up: %v", err)
	}
	missing := func(ctx context.Context, cl *redis.Client) error { return cl.Get(ctx, "absent").Err() }
	if err := c.Do(ctx, "get", missing); !errors.Is(err, redis.Nil) || !c.Available() {
		t.Fatalf("a missing key counted as a failure: %v", err)
	}

	srv.Kill()
	if err := c.Do(ctx, "ping", ping); err == nil {
		t.Fatal("ping succeeded with redis down")
	}
	if c.Available() {
		t.Fatal("still available right after a failure")
	}
	for range 5 {
		if err := c.Do(ctx, "ping", ping); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("call during backoff: %v, want ErrUnavailable without trying", err)
		}
	}
	if len(failures) != 1 || failures[0] != "ping" {
		t.Fatalf("failures counted: %v, want one ping", failures)
	}
	if n := strings.Count(logs.String(), "redis call failed"); n != 1 {
		t.Fatalf("%d outage log lines, want 1:\n%s", n, logs.String())
	}
	var nilConn *Conn
	if err := nilConn.Do(ctx, "ping", ping); !errors.Is(err, ErrUnavailable) || nilConn.Available() {
		t.Fatal("a nil Conn is not simply unavailable")
	}
}
