package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strings"
	"time"
)

// Engine configures the inference engine. Its HTTP listener serves the
// OpenAI and KServe v2 APIs as well as /metrics, /healthz and /readyz.
type Engine struct {
	// Listen is the engine's HTTP address. Default 127.0.0.1:8080.
	Listen string `yaml:"listen"`
	// Backend is the GoMLX backend every model runs on: "simplego" (pure
	// Go, the default), "simplego:<options>", or "xla[:cuda|cpu|<plugin>]".
	Backend string `yaml:"backend"`
	// MaxBodyBytes caps a request body; larger bodies get 413.
	// Default 2 MiB (TEI's payload_limit).
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// EmbeddingCacheBytes bounds the engine's per-input embedding cache
	// (model + exact text → vector, LRU), which lets a request compute only
	// the inputs not seen before. 0 turns it off. Default 64 MiB.
	EmbeddingCacheBytes *int64 `yaml:"embedding_cache_bytes"`
	// Models are served under their names. Default: one model "use-lite"
	// of kind use-lite in models/use-lite.
	Models []EngineModel `yaml:"models"`
	// Register makes the engine join an xDS pool by itself.
	Register EngineRegister `yaml:"register"`
}

// EngineRegister makes the engine register itself into a pool of the
// control plane (its admin API) once it is ready, heartbeat while it stays
// ready, and deregister when it shuts down, so Envoy's EDS follows engines
// that come and go.
type EngineRegister struct {
	// ControlPlane is the xDS admin base URL, e.g. http://127.0.0.1:18001.
	// Empty: the engine does not register. Default empty.
	ControlPlane string `yaml:"control_plane"`
	// TokenFile holds the bearer token to present to the control plane,
	// its xds.admin_token_file. Default empty: none.
	TokenFile string `yaml:"token_file"`
	// Pool is the pool to join. Default "default".
	Pool string `yaml:"pool"`
	// Advertise is the ip:port Envoy dials. Default engine.listen.
	Advertise string `yaml:"advertise"`
	// TTL is how long the control plane keeps the endpoint without a
	// heartbeat. Default 15s.
	TTL time.Duration `yaml:"ttl"`
	// Interval is the time between heartbeats. Default TTL/3.
	Interval time.Duration `yaml:"interval"`
}

// EngineModel is one served model with its queue and dynamic batcher.
// Knob names follow NVIDIA Triton's dynamic_batching and HuggingFace TEI;
// the equivalents are given with each field.
type EngineModel struct {
	// Name is what clients put in "model" and in /v2/models/{name}.
	Name string `yaml:"name"`
	// Kind is use-lite (the TF.js USE-Lite graph) or onnx (onnx-gomlx).
	Kind string `yaml:"kind"`
	// Path is the model folder (use-lite) or the .onnx file (onnx).
	Path string `yaml:"path"`
	// MaxBatchSize caps the items (input texts) in one batch.
	// Triton: max_batch_size; TEI: max_client_batch_size. Default 32.
	MaxBatchSize int `yaml:"max_batch_size"`
	// MaxBatchTokens caps a batch's padded size: items × longest item in
	// tokens, which is what the runtime computes. One item always fits.
	// TEI: max_batch_tokens (TEI counts real tokens). Default 8192.
	MaxBatchTokens int `yaml:"max_batch_tokens"`
	// PreferredBatchSizes: a gathered batch is cut to the largest of
	// these that fits and the rest waits for the next batch, so batches
	// fill the runtime's padded shape buckets. Triton:
	// preferred_batch_size. Default: the powers of two up to
	// max_batch_size, and max_batch_size (the runtimes' buckets); [] turns
	// it off.
	PreferredBatchSizes []int `yaml:"preferred_batch_sizes"`
	// MaxQueueDelay is the longest the oldest queued request waits for
	// others to join its batch while another batch is running; with the
	// model idle a batch starts at once. Triton:
	// max_queue_delay_microseconds (which waits even when idle). 0 batches
	// only what is already queued. Default 2ms.
	MaxQueueDelay *time.Duration `yaml:"max_queue_delay"`
	// QueueSize caps queued requests; beyond it requests get 429.
	// Triton: max_queue_size; TEI: max_concurrent_requests. Default 512.
	QueueSize int `yaml:"queue_size"`
	// Workers is how many batches run at once. Triton: instance_group
	// count. Default 1.
	Workers int `yaml:"workers"`
	// PriorityLevels is the number of priorities, 0 (lowest) to
	// PriorityLevels-1 (highest), chosen per request by the
	// x-infergate-priority header (route policies send 1..9). Triton:
	// priority_levels (where 1 is the highest). Default 10.
	PriorityLevels int `yaml:"priority_levels"`
	// DefaultPriority applies to requests without the header.
	// Triton: default_priority_level. Default 5 (the policy default).
	DefaultPriority *int `yaml:"default_priority"`
	// Timeout is a request's deadline from arrival; past it the request
	// gets 504 and is never computed. Triton: default_queue_policy
	// default_timeout_microseconds. Default 30s.
	Timeout time.Duration `yaml:"timeout"`
	// MaxInputs caps the texts in one request (413 beyond).
	// TEI: max_client_batch_size. Default 2048 (OpenAI's limit).
	MaxInputs int `yaml:"max_inputs"`
	// MaxInputChars caps one text in Unicode code points (413 beyond);
	// texts within it but longer than the model's token limit are
	// truncated. Default 32768.
	MaxInputChars int `yaml:"max_input_chars"`
	// ONNX describes an onnx model's tokenizer and tensors.
	ONNX ONNXModel `yaml:"onnx"`
}

// ONNXModel is what onnx-gomlx needs to run a user's encoder.
type ONNXModel struct {
	// Tokenizer is the HuggingFace tokenizer.json (WordPiece). Required
	// for kind onnx.
	Tokenizer string `yaml:"tokenizer"`
	// InputIDs, AttentionMask and TokenTypeIDs name the graph inputs.
	// Defaults input_ids, attention_mask, token_type_ids.
	// Inputs the graph does not have are not fed.
	InputIDs      string `yaml:"input_ids"`
	AttentionMask string `yaml:"attention_mask"`
	TokenTypeIDs  string `yaml:"token_type_ids"`
	// Output names the graph output. Default last_hidden_state.
	Output string `yaml:"output"`
	// Pooling turns per-token outputs into one vector: mean, cls or none
	// (the output is already one vector per sequence). Default mean.
	Pooling string `yaml:"pooling"`
	// Normalize scales vectors to unit length. Default false.
	Normalize bool `yaml:"normalize"`
	// MaxTokens is the longest sequence the graph takes, special tokens
	// included; longer input is truncated. Default 256.
	MaxTokens int `yaml:"max_tokens"`
}

// Engine defaults, in one place; the README's reference lists them.
const (
	DefaultEngineListen       = "127.0.0.1:8080"
	DefaultEngineBackend      = "simplego"
	DefaultEngineMaxBodyBytes = 2 << 20
	DefaultEmbeddingCache     = 64 << 20
	DefaultModelName          = "use-lite"
	DefaultModelPath          = "models/use-lite"
	DefaultMaxBatchSize       = 32
	DefaultMaxBatchTokens     = 8192
	DefaultMaxQueueDelay      = 2 * time.Millisecond
	DefaultQueueSize          = 512
	DefaultWorkers            = 1
	DefaultPriorityLevels     = 10
	DefaultPriority           = 5
	DefaultRequestTimeout     = 30 * time.Second
	DefaultMaxInputs          = 2048
	DefaultMaxInputChars      = 32768
	DefaultONNXMaxTokens      = 256
)

func (e *Engine) setDefaults() {
	if e.Listen == "" {
		e.Listen = DefaultEngineListen
	}
	if e.Backend == "" {
		e.Backend = DefaultEngineBackend
	}
	if e.MaxBodyBytes == 0 {
		e.MaxBodyBytes = DefaultEngineMaxBodyBytes
	}
	if e.EmbeddingCacheBytes == nil {
		n := int64(DefaultEmbeddingCache)
		e.EmbeddingCacheBytes = &n
	}
	if r := &e.Register; r.ControlPlane != "" {
		if r.Pool == "" {
			r.Pool = "default"
		}
		if r.Advertise == "" {
			r.Advertise = e.Listen
		}
		if r.TTL == 0 {
			r.TTL = 15 * time.Second
		}
		if r.Interval == 0 {
			r.Interval = r.TTL / 3
		}
	}
	if len(e.Models) == 0 {
		e.Models = []EngineModel{{Name: DefaultModelName, Kind: "use-lite", Path: DefaultModelPath}}
	}
	for i := range e.Models {
		e.Models[i].setDefaults()
	}
}

func (m *EngineModel) setDefaults() {
	if m.Kind == "" {
		m.Kind = "use-lite"
	}
	if m.Path == "" && m.Kind == "use-lite" {
		m.Path = DefaultModelPath
	}
	if m.MaxBatchSize == 0 {
		m.MaxBatchSize = DefaultMaxBatchSize
	}
	if m.PreferredBatchSizes == nil {
		for p := 1; p < m.MaxBatchSize; p *= 2 {
			m.PreferredBatchSizes = append(m.PreferredBatchSizes, p)
		}
		m.PreferredBatchSizes = append(m.PreferredBatchSizes, m.MaxBatchSize)
	}
	if m.MaxBatchTokens == 0 {
		m.MaxBatchTokens = DefaultMaxBatchTokens
	}
	if m.MaxQueueDelay == nil {
		d := DefaultMaxQueueDelay
		m.MaxQueueDelay = &d
	}
	if m.QueueSize == 0 {
		m.QueueSize = DefaultQueueSize
	}
	if m.Workers == 0 {
		m.Workers = DefaultWorkers
	}
	if m.PriorityLevels == 0 {
		m.PriorityLevels = DefaultPriorityLevels
	}
	if m.DefaultPriority == nil {
		p := min(DefaultPriority, m.PriorityLevels-1)
		m.DefaultPriority = &p
	}
	if m.Timeout == 0 {
		m.Timeout = DefaultRequestTimeout
	}
	if m.MaxInputs == 0 {
		m.MaxInputs = DefaultMaxInputs
	}
	if m.MaxInputChars == 0 {
		m.MaxInputChars = DefaultMaxInputChars
	}
	if m.Kind == "onnx" {
		o := &m.ONNX
		if o.InputIDs == "" {
			o.InputIDs = "input_ids"
		}
		if o.AttentionMask == "" {
			o.AttentionMask = "attention_mask"
		}
		if o.TokenTypeIDs == "" {
			o.TokenTypeIDs = "token_type_ids"
		}
		if o.Output == "" {
			o.Output = "last_hidden_state"
		}
		if o.Pooling == "" {
			o.Pooling = "mean"
		}
		if o.MaxTokens == 0 {
			o.MaxTokens = DefaultONNXMaxTokens
		}
	}
}

// modelName keeps names safe in URL paths and metric labels.
var modelName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

func (e *Engine) validate() error {
	errs := []error{checkHostPort("engine.listen", e.Listen)}
	switch kind, _, _ := strings.Cut(e.Backend, ":"); kind {
	case "simplego", "xla":
	default:
		errs = append(errs, fmt.Errorf("engine.backend: %q is not simplego[:options] or xla[:plugin]", e.Backend))
	}
	if e.MaxBodyBytes < 1024 {
		errs = append(errs, fmt.Errorf("engine.max_body_bytes: %d is below the minimum of 1024", e.MaxBodyBytes))
	}
	if r := e.Register; r.ControlPlane != "" {
		if u, err := url.Parse(r.ControlPlane); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("engine.register.control_plane: %q is not an http(s) URL such as http://127.0.0.1:18001", r.ControlPlane))
		}
		if ip, _, err := net.SplitHostPort(r.Advertise); err != nil || net.ParseIP(ip) == nil || net.ParseIP(ip).IsUnspecified() {
			errs = append(errs, fmt.Errorf("engine.register.advertise: %q is not an ip:port Envoy can dial (set it when engine.listen is a wildcard or a name)", r.Advertise))
		}
		if r.TTL < 0 || r.Interval <= 0 || r.Interval >= r.TTL {
			errs = append(errs, fmt.Errorf("engine.register: interval %s must be positive and below ttl %s", r.Interval, r.TTL))
		}
	}
	if e.EmbeddingCacheBytes != nil && *e.EmbeddingCacheBytes < 0 {
		errs = append(errs, fmt.Errorf("engine.embedding_cache_bytes: %d must not be negative (0 turns the cache off)", *e.EmbeddingCacheBytes))
	}
	seen := map[string]bool{}
	for i := range e.Models {
		m := &e.Models[i]
		field := fmt.Sprintf("engine.models[%d]", i)
		if m.Name != "" {
			field = fmt.Sprintf("engine.models[%d] (%s)", i, m.Name)
		}
		if seen[m.Name] {
			errs = append(errs, fmt.Errorf("%s.name: %q is used by an earlier model", field, m.Name))
		}
		seen[m.Name] = true
		errs = append(errs, m.validate(field))
	}
	return errors.Join(errs...)
}

func (m *EngineModel) validate(field string) error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s.%s: %s", field, key, fmt.Sprintf(format, args...)))
	}
	if !modelName.MatchString(m.Name) {
		bad("name", "%q must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit", m.Name)
	}
	switch m.Kind {
	case "use-lite":
	case "onnx":
		if m.ONNX.Tokenizer == "" {
			bad("onnx.tokenizer", "is required for kind onnx (the model's tokenizer.json)")
		}
		switch m.ONNX.Pooling {
		case "mean", "cls", "none":
		default:
			bad("onnx.pooling", "%q is not one of mean, cls, none", m.ONNX.Pooling)
		}
		if m.ONNX.MaxTokens < 2 {
			bad("onnx.max_tokens", "%d must be at least 2", m.ONNX.MaxTokens)
		}
	default:
		bad("kind", "%q is not one of use-lite, onnx", m.Kind)
	}
	if m.Path == "" {
		bad("path", "is required for kind %s", m.Kind)
	}
	positive := func(key string, v int) {
		if v < 1 {
			bad(key, "%d must be at least 1", v)
		}
	}
	positive("max_batch_size", m.MaxBatchSize)
	positive("max_batch_tokens", m.MaxBatchTokens)
	for _, p := range m.PreferredBatchSizes {
		if p < 1 || p > m.MaxBatchSize {
			bad("preferred_batch_sizes", "%d is outside 1..%d (max_batch_size)", p, m.MaxBatchSize)
		}
	}
	positive("queue_size", m.QueueSize)
	positive("workers", m.Workers)
	positive("priority_levels", m.PriorityLevels)
	positive("max_inputs", m.MaxInputs)
	positive("max_input_chars", m.MaxInputChars)
	if m.MaxQueueDelay != nil && *m.MaxQueueDelay < 0 {
		bad("max_queue_delay", "%s must not be negative", *m.MaxQueueDelay)
	}
	if m.Timeout < 0 {
		bad("timeout", "%s must not be negative", m.Timeout)
	}
	if m.Timeout > 0 && m.Timeout < time.Millisecond {
		bad("timeout", "%s is below 1ms (a duration needs a unit, e.g. 30s)", m.Timeout)
	}
	if m.DefaultPriority != nil && (*m.DefaultPriority < 0 || *m.DefaultPriority >= m.PriorityLevels) {
		bad("default_priority", "%d is outside 0..%d (priority_levels %d)", *m.DefaultPriority, m.PriorityLevels-1, m.PriorityLevels)
	}
	return errors.Join(errs...)
}
