package config

import (
	"errors"
	"fmt"
	"time"
)

// ExtProc configures the ext_proc server. Per-route policy is not here: it
// travels with each request from the xDS route config.
type ExtProc struct {
	// Listen is the gRPC address Envoy's ext_proc filter calls. Default 127.0.0.1:18080.
	Listen string `yaml:"listen"`
	// Admin is the HTTP address of the purge API, /metrics, /healthz and
	// /readyz. Default 127.0.0.1:18081.
	Admin string `yaml:"admin"`
	// MaxBodyBytes is the largest request or response body the server
	// accepts in one gRPC message; it bounds memory per stream and should be
	// at least Envoy's buffer limit. Default 16777216 (16 MiB).
	MaxBodyBytes int `yaml:"max_body_bytes"`
	// Cache is the exact response cache.
	Cache ExtProcCache `yaml:"cache"`
	// Redis, when Addr is set, shares the cache and the rate limits between
	// ext_proc replicas.
	Redis ExtProcRedis `yaml:"redis"`
}

// ExtProcCache configures the in-process exact cache and request collapsing.
type ExtProcCache struct {
	// MemoryMB bounds the in-process cache. Default 256.
	MemoryMB int `yaml:"memory_mb"`
	// MaxEntryBytes is the largest response body stored. Default 1048576 (1 MiB).
	MaxEntryBytes int `yaml:"max_entry_bytes"`
	// MaxTTL caps every route's TTL. Default 1h.
	MaxTTL time.Duration `yaml:"max_ttl"`
	// CollapseWait is how long identical requests wait for the one already
	// in flight before going upstream themselves; a negative value turns
	// collapsing off. Default 5s.
	CollapseWait time.Duration `yaml:"collapse_wait"`
}

// ExtProcRedis configures the optional shared Redis.
type ExtProcRedis struct {
	// Addr is host:port of Redis; empty means in-process only. Default empty.
	Addr string `yaml:"addr"`
	// Username for Redis ACLs. Default empty.
	Username string `yaml:"username"`
	// PasswordEnv names the environment variable holding the password, so
	// that no secret sits in the config file. Default empty.
	PasswordEnv string `yaml:"password_env"`
	// DB is the Redis database number. Default 0.
	DB int `yaml:"db"`
	// KeyPrefix starts every key infergate writes. Default "infergate:".
	KeyPrefix string `yaml:"key_prefix"`
	// Timeout bounds each Redis call; past it the call counts as failed.
	// Default 100ms.
	Timeout time.Duration `yaml:"timeout"`
	// FailureMode is what rate limits do while Redis is unreachable: open
	// (fall back to in-process limits) or closed (answer 503). The cache
	// always falls back to in-process. Default open.
	FailureMode string `yaml:"failure_mode"`
	// ErrorLogInterval is how often a Redis outage is logged. Default 30s.
	ErrorLogInterval time.Duration `yaml:"error_log_interval"`
}

func (e *ExtProc) setDefaults() {
	if e.Listen == "" {
		e.Listen = "127.0.0.1:18080"
	}
	if e.Admin == "" {
		e.Admin = "127.0.0.1:18081"
	}
	if e.MaxBodyBytes == 0 {
		e.MaxBodyBytes = 16 << 20
	}
	if e.Cache.MemoryMB == 0 {
		e.Cache.MemoryMB = 256
	}
	if e.Cache.MaxEntryBytes == 0 {
		e.Cache.MaxEntryBytes = 1 << 20
	}
	if e.Cache.MaxTTL == 0 {
		e.Cache.MaxTTL = time.Hour
	}
	if e.Cache.CollapseWait == 0 {
		e.Cache.CollapseWait = 5 * time.Second
	}
	if e.Redis.KeyPrefix == "" {
		e.Redis.KeyPrefix = "infergate:"
	}
	if e.Redis.Timeout == 0 {
		e.Redis.Timeout = 100 * time.Millisecond
	}
	if e.Redis.FailureMode == "" {
		e.Redis.FailureMode = "open"
	}
	if e.Redis.ErrorLogInterval == 0 {
		e.Redis.ErrorLogInterval = 30 * time.Second
	}
}

func (e *ExtProc) validate() error {
	errs := []error{checkHostPort("extproc.listen", e.Listen), checkHostPort("extproc.admin", e.Admin)}
	if e.MaxBodyBytes < 1024 {
		errs = append(errs, fmt.Errorf("extproc.max_body_bytes: %d is below 1024", e.MaxBodyBytes))
	}
	if e.Cache.MemoryMB < 1 {
		errs = append(errs, fmt.Errorf("extproc.cache.memory_mb: %d must be at least 1", e.Cache.MemoryMB))
	}
	if e.Cache.MaxEntryBytes < 1 || e.Cache.MaxEntryBytes > e.Cache.MemoryMB<<20 {
		errs = append(errs, fmt.Errorf("extproc.cache.max_entry_bytes: %d must be between 1 and memory_mb (%d MiB)", e.Cache.MaxEntryBytes, e.Cache.MemoryMB))
	}
	if e.Cache.MaxTTL < time.Second {
		errs = append(errs, fmt.Errorf("extproc.cache.max_ttl: %s is below 1s", e.Cache.MaxTTL))
	}
	if e.Redis.Addr != "" {
		errs = append(errs, checkHostPort("extproc.redis.addr", e.Redis.Addr))
	}
	if e.Redis.DB < 0 {
		errs = append(errs, fmt.Errorf("extproc.redis.db: %d is negative", e.Redis.DB))
	}
	if e.Redis.Timeout <= 0 {
		errs = append(errs, fmt.Errorf("extproc.redis.timeout: %s must be positive", e.Redis.Timeout))
	}
	switch e.Redis.FailureMode {
	case "open", "closed":
	default:
		errs = append(errs, fmt.Errorf("extproc.redis.failure_mode: %q is not one of open, closed", e.Redis.FailureMode))
	}
	if e.Redis.ErrorLogInterval <= 0 {
		errs = append(errs, fmt.Errorf("extproc.redis.error_log_interval: %s must be positive", e.Redis.ErrorLogInterval))
	}
	return errors.Join(errs...)
}
