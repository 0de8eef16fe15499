package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"
	"unicode"
)

// ExtProc configures the ext_proc server. Per-route policy is not here: it
// travels with each request from the xDS route config.
type ExtProc struct {
	// Listen is the gRPC address Envoy's ext_proc filter calls. Default 127.0.0.1:18080.
	Listen string `yaml:"listen"`
	// Admin is the HTTP address of the purge API, /metrics, /healthz and
	// /readyz. Default 127.0.0.1:18081.
	Admin string `yaml:"admin"`
	// AdminTokenFile holds the bearer token the purge API requires (read
	// once at start). Default empty: no token, so keep admin on loopback.
	AdminTokenFile string `yaml:"admin_token_file"`
	// MaxBodyBytes is the largest request or response body the server
	// accepts in one gRPC message; it bounds memory per stream and should be
	// at least Envoy's buffer limit. Default 16777216 (16 MiB).
	MaxBodyBytes int `yaml:"max_body_bytes"`
	// Cache is the exact response cache.
	Cache ExtProcCache `yaml:"cache"`
	// Redis, when Addr is set, shares the cache and the rate limits between
	// ext_proc replicas.
	Redis ExtProcRedis `yaml:"redis"`
	// Semantic is the semantic cache used by routes with cache: semantic.
	Semantic ExtProcSemantic `yaml:"semantic"`
}

// ExtProcSemantic configures the semantic cache: the stage after the exact
// cache that answers a paraphrase of a stored chat or completion question.
type ExtProcSemantic struct {
	// EngineURL is the base URL of the engine whose /v1/embeddings embeds
	// the questions. Default "http://" + engine.listen (an unspecified
	// host such as 0.0.0.0 becomes 127.0.0.1).
	EngineURL string `yaml:"engine_url"`
	// Model is the engine's embedding model. Default use-lite.
	Model string `yaml:"model"`
	// MemoryMB bounds the entries (vectors, responses, index links);
	// past it the least recently used are evicted. Default 64.
	MemoryMB int `yaml:"memory_mb"`
	// HNSWThreshold is the entry count past which one scope's exact search
	// becomes an HNSW graph. Default 2048.
	HNSWThreshold int `yaml:"hnsw_threshold"`
	// HNSWM is the number of links per graph node and layer. Default 16.
	HNSWM int `yaml:"hnsw_m"`
	// HNSWEfConstruction is the candidate list size while inserting. Default 100.
	HNSWEfConstruction int `yaml:"hnsw_ef_construction"`
	// HNSWEfSearch is the candidate list size while searching. Default 64.
	HNSWEfSearch int `yaml:"hnsw_ef_search"`
	// EmbedTimeout is the embedding budget of one lookup; past it the
	// lookup is a miss. Default 150ms.
	EmbedTimeout time.Duration `yaml:"embed_timeout"`
	// MaxInFlight bounds concurrent embedding calls; a lookup that finds
	// them all busy is skipped (a miss). Default 64.
	MaxInFlight int `yaml:"max_in_flight"`
	// Synonyms are groups of words, each entry space-separated ("thaw
	// defrost"), that the guard treats as one topic word, on top of its
	// built-in ones: a paraphrase that swaps them is answered from cache.
	// Only list words that never ask different things in your traffic.
	Synonyms []string `yaml:"synonyms"`
}

// SynonymGroups is Synonyms split into words.
func (s *ExtProcSemantic) SynonymGroups() [][]string {
	groups := make([][]string, 0, len(s.Synonyms))
	for _, g := range s.Synonyms {
		groups = append(groups, strings.Fields(g))
	}
	return groups
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

// CollapseMargin is what a waiting request adds to collapse_wait when it
// asks Envoy to extend its message timeout (to answer after the wait).
// Envoy ignores an extension past xds.ext_proc.max_message_timeout, and
// the waiting request then times out and passes unprocessed.
const CollapseMargin = time.Second

// CheckCollapseWait says whether the control plane's max_message_timeout
// lets the ext_proc server's collapsed requests wait as configured.
func (c Config) CheckCollapseWait() error {
	if wait := c.ExtProc.Cache.CollapseWait; wait > 0 && wait+CollapseMargin > c.XDS.ExtProc.MaxMessageTimeout {
		return fmt.Errorf("xds.ext_proc.max_message_timeout %s is below extproc.cache.collapse_wait %s + %s: requests waiting for an identical one would time out and pass without ext_proc",
			c.XDS.ExtProc.MaxMessageTimeout, wait, CollapseMargin)
	}
	return nil
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
	e.Semantic.setDefaults()
}

// setDefaults leaves EngineURL alone: its default comes from engine.listen,
// which Config.setDefaults fills in through engineURL.
func (s *ExtProcSemantic) setDefaults() {
	if s.Model == "" {
		s.Model = DefaultModelName
	}
	if s.MemoryMB == 0 {
		s.MemoryMB = 64
	}
	if s.HNSWThreshold == 0 {
		s.HNSWThreshold = 2048
	}
	if s.HNSWM == 0 {
		s.HNSWM = 16
	}
	if s.HNSWEfConstruction == 0 {
		s.HNSWEfConstruction = 100
	}
	if s.HNSWEfSearch == 0 {
		s.HNSWEfSearch = 64
	}
	if s.EmbedTimeout == 0 {
		s.EmbedTimeout = 150 * time.Millisecond
	}
	if s.MaxInFlight == 0 {
		s.MaxInFlight = 64
	}
}

// engineURL is the URL at which the engine listening on listen is reached
// from this host: a wildcard bind address is dialled on loopback.
func engineURL(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "http://" + listen
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port)
}

func (s *ExtProcSemantic) validate() error {
	var errs []error
	if u, err := url.Parse(s.EngineURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, fmt.Errorf("extproc.semantic.engine_url: %q is not an http:// or https:// URL with a host", s.EngineURL))
	}
	if s.Model == "" {
		errs = append(errs, errors.New("extproc.semantic.model: must not be empty"))
	}
	if s.MemoryMB < 1 {
		errs = append(errs, fmt.Errorf("extproc.semantic.memory_mb: %d must be at least 1", s.MemoryMB))
	}
	if s.HNSWThreshold < 1 {
		errs = append(errs, fmt.Errorf("extproc.semantic.hnsw_threshold: %d must be at least 1", s.HNSWThreshold))
	}
	if s.HNSWM < 2 || s.HNSWM > 128 {
		errs = append(errs, fmt.Errorf("extproc.semantic.hnsw_m: %d must be between 2 and 128", s.HNSWM))
	}
	if s.HNSWEfConstruction < s.HNSWM {
		errs = append(errs, fmt.Errorf("extproc.semantic.hnsw_ef_construction: %d must be at least hnsw_m (%d)", s.HNSWEfConstruction, s.HNSWM))
	}
	if s.HNSWEfSearch < 1 {
		errs = append(errs, fmt.Errorf("extproc.semantic.hnsw_ef_search: %d must be at least 1", s.HNSWEfSearch))
	}
	if s.EmbedTimeout <= 0 {
		errs = append(errs, fmt.Errorf("extproc.semantic.embed_timeout: %s must be positive", s.EmbedTimeout))
	}
	if s.MaxInFlight < 1 {
		errs = append(errs, fmt.Errorf("extproc.semantic.max_in_flight: %d must be at least 1", s.MaxInFlight))
	}
	for i, group := range s.SynonymGroups() {
		if len(group) < 2 {
			errs = append(errs, fmt.Errorf("extproc.semantic.synonyms[%d]: %q: give two or more words, separated by spaces", i, s.Synonyms[i]))
		}
		for _, w := range group {
			// The guard compares lower-case words of three letters or more.
			if len(w) < 3 || strings.IndexFunc(w, func(r rune) bool { return !unicode.IsLower(r) }) >= 0 {
				errs = append(errs, fmt.Errorf("extproc.semantic.synonyms[%d]: %q is not a lower-case word of three letters or more", i, w))
			}
		}
	}
	return errors.Join(errs...)
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
	errs = append(errs, e.Semantic.validate())
	return errors.Join(errs...)
}
