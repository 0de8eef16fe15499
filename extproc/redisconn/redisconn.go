// Package redisconn is the ext_proc server's connection to the shared
// Redis: every call is bounded by a timeout, and after a failure calls are
// skipped for a short backoff so that an outage costs requests nothing but
// the fallback (in-process cache and limits), not a timeout each.
package redisconn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/infergate/infergate/config"
)

// Backoff is how long calls are skipped after a failure before the next
// call tries Redis again.
const Backoff = time.Second

// ErrUnavailable is returned while Redis is in backoff after a failure.
var ErrUnavailable = errors.New("redis unavailable (in backoff after an error)")

// Conn is a Redis client with outage handling. A nil *Conn is valid and
// always unavailable, so callers need no separate "no Redis" branch.
type Conn struct {
	Client    *redis.Client
	Prefix    string
	timeout   time.Duration
	log       *slog.Logger
	logEvery  time.Duration
	onError   func(op string)
	mu        sync.Mutex
	downUntil time.Time
	lastLog   time.Time
	suppress  int
}

// quietClientLog routes go-redis's own log lines (one per failed dial,
// printed to stderr by default) to slog at debug level: the outage is
// reported by Conn, once per interval.
var quietClientLog sync.Once

type debugLogger struct{ log *slog.Logger }

func (d debugLogger) Printf(ctx context.Context, format string, v ...any) {
	d.log.DebugContext(ctx, "redis client: "+fmt.Sprintf(format, v...))
}

// New connects lazily to cfg.Addr; onError is called once per failed call
// with the operation's name (for the redis-errors metric).
func New(cfg config.ExtProcRedis, log *slog.Logger, onError func(op string)) *Conn {
	client := redis.NewClient(&redis.Options{
		Addr:         cfg.Addr,
		Username:     cfg.Username,
		Password:     os.Getenv(cfg.PasswordEnv),
		DB:           cfg.DB,
		DialTimeout:  cfg.Timeout,
		ReadTimeout:  cfg.Timeout,
		WriteTimeout: cfg.Timeout,
		MaxRetries:   -1, // the fallback is the retry; a retry would double the stall
	})
	quietClientLog.Do(func() { redis.SetLogger(debugLogger{log: log}) })
	if onError == nil {
		onError = func(string) {}
	}
	return &Conn{Client: client, Prefix: cfg.KeyPrefix, timeout: cfg.Timeout, log: log, logEvery: cfg.ErrorLogInterval, onError: onError}
}

// Do runs fn against Redis with the call timeout, unless Redis is in
// backoff. redis.Nil (a missing key) is not a failure.
func (c *Conn) Do(ctx context.Context, op string, fn func(ctx context.Context, client *redis.Client) error) error {
	if c == nil {
		return ErrUnavailable
	}
	now := time.Now()
	c.mu.Lock()
	down := now.Before(c.downUntil)
	c.mu.Unlock()
	if down {
		return ErrUnavailable
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	err := fn(ctx, c.Client)
	if err == nil || errors.Is(err, redis.Nil) {
		return err
	}
	if errors.Is(err, context.Canceled) && ctx.Err() == context.Canceled {
		// The caller went away; that says nothing about Redis.
		return err
	}
	c.failed(op, err, now)
	return err
}

// failed starts a backoff and logs the outage at most once per interval,
// with the count of failures not logged since.
func (c *Conn) failed(op string, err error, now time.Time) {
	c.onError(op)
	c.mu.Lock()
	c.downUntil = now.Add(Backoff)
	logNow := now.Sub(c.lastLog) >= c.logEvery
	suppressed := c.suppress
	if logNow {
		c.lastLog = now
		c.suppress = 0
	} else {
		c.suppress++
	}
	c.mu.Unlock()
	if logNow {
		c.log.Warn("redis call failed; using in-process fallback", "op", op, "error", err, "failures_not_logged", suppressed)
	}
}

// Available reports whether calls are currently attempted.
func (c *Conn) Available() bool {
	if c == nil {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return !time.Now().Before(c.downUntil)
}

// Close closes the client.
func (c *Conn) Close() error {
	if c == nil {
		return nil
	}
	return c.Client.Close()
}
