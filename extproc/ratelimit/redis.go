package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/infergate/infergate/extproc/redisconn"
)

// gcraScript is gcra() in Lua, run atomically by Redis. Time is Redis's own
// clock (TIME), so replicas with skewed clocks still agree. Times are
// microseconds. It returns {allowed, backlog}.
var gcraScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local take = ARGV[4] == '1'
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local backlog = tat - now
local nextb = backlog + n * interval
if take then
  if (n > 0 and nextb > capacity) or (n == 0 and nextb >= capacity) then
    return {0, string.format('%d', backlog)}
  end
end
if n > 0 then
  redis.call('SET', KEYS[1], string.format('%d', now + nextb), 'PX', math.ceil(nextb / 1000) + 1000)
end
return {1, string.format('%d', nextb)}
`)

// Redis keeps limits in Redis, shared by every replica using the same
// prefix.
type Redis struct {
	conn *redisconn.Conn
}

// NewRedis returns a limiter on conn.
func NewRedis(conn *redisconn.Conn) *Redis { return &Redis{conn: conn} }

// Take implements Limiter.
func (r *Redis) Take(ctx context.Context, key string, l Limit, n float64) (Decision, error) {
	backlog, allowed, err := r.run(ctx, "ratelimit_take", key, l, n, true)
	if err != nil {
		return Decision{}, err
	}
	return decide(backlog, allowed, l, n), nil
}

// Charge implements Limiter.
func (r *Redis) Charge(ctx context.Context, key string, l Limit, n float64) error {
	_, _, err := r.run(ctx, "ratelimit_charge", key, l, n, false)
	return err
}

func (r *Redis) run(ctx context.Context, op, key string, l Limit, n float64, take bool) (time.Duration, bool, error) {
	takeArg := "0"
	if take {
		takeArg = "1"
	}
	var res []any
	err := r.conn.Do(ctx, op, func(ctx context.Context, c *redis.Client) error {
		var err error
		res, err = gcraScript.Run(ctx, c, []string{r.conn.Prefix + "rl:" + key},
			micros(l.interval()), micros(l.capacity()), n, takeArg).Slice()
		return err
	})
	if err != nil {
		return 0, false, err
	}
	if len(res) != 2 {
		return 0, false, fmt.Errorf("ratelimit: script returned %d values", len(res))
	}
	allowed, _ := res[0].(int64)
	s, _ := res[1].(string)
	var us int64
	if _, err := fmt.Sscan(s, &us); err != nil {
		return 0, false, fmt.Errorf("ratelimit: script returned backlog %q", s)
	}
	return time.Duration(us) * time.Microsecond, allowed == 1, nil
}

// micros is d in microseconds, the script's unit, keeping the fraction: a
// budget of millions of tokens a minute emits one token in well under a
// microsecond, and rounding that to 0 would make every charge free.
func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// ErrUnavailable is returned by a fail-closed Fallback while Redis is down.
var ErrUnavailable = errors.New("ratelimit: shared limiter unavailable")

// Fallback uses Redis and, when it fails, either the in-process limiter
// (fail open: limits hold per replica) or ErrUnavailable (fail closed).
type Fallback struct {
	Shared     Limiter
	Local      Limiter
	FailClosed bool
}

// Take implements Limiter.
func (f *Fallback) Take(ctx context.Context, key string, l Limit, n float64) (Decision, error) {
	d, err := f.Shared.Take(ctx, key, l, n)
	if err == nil {
		return d, nil
	}
	if f.FailClosed {
		return Decision{}, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return f.Local.Take(ctx, key, l, n)
}

// Charge implements Limiter.
func (f *Fallback) Charge(ctx context.Context, key string, l Limit, n float64) error {
	if err := f.Shared.Charge(ctx, key, l, n); err != nil {
		if f.FailClosed {
			return fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		return f.Local.Charge(ctx, key, l, n)
	}
	return nil
}
