package model

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/backends/simplego"
)

// Backend names accepted by NewBackend.
const (
	BackendSimpleGo = "simplego"
	BackendXLA      = "xla"
)

// NewBackend returns the GoMLX backend a model runs on, from a config string
// "<name>[:<options>]":
//
//   - "simplego" (the default, also for ""): pure Go, works with
//     CGO_ENABLED=0. Options are SimpleGo's, comma-separated, e.g.
//     "simplego:parallelism=4"; ops run one at a time (each op itself is
//     parallel) unless "ops_parallel" is given.
//   - "xla:<plugin>[,option...]": XLA through a PJRT plugin, e.g.
//     "xla:cuda", "xla:cpu" or "xla:/abs/path/to/pjrt_plugin.so"; plain "xla"
//     picks cuda when present, else cpu. Plugins are looked up in
//     PJRT_PLUGIN_LIBRARY_PATH, then ~/.local/lib/go-xla,
//     /usr/local/lib/go-xla and the system library paths. Nothing is ever
//     downloaded. Needs a cgo build on linux/amd64. Options: the GPU
//     client's memory_fraction=<0..1>, preallocate=<bool> and
//     allocator=<default|platform|bfc|cuda_async> (XLA otherwise reserves
//     75% of the GPU's memory at start), and GoMLX's own bare words
//     (tf32, shared_buffers).
func NewBackend(name string) (backends.Backend, error) {
	kind, options, _ := strings.Cut(name, ":")
	switch kind {
	case "", BackendSimpleGo:
		// SimpleGo's parallel op scheduler has data races (v0.26.0: it
		// reads use counts unlocked and may reuse a buffer in place while
		// another op reads it); sequential op order is race-free and still
		// splits each large matmul across all cores.
		if !strings.Contains(options, "ops_parallel") {
			options = strings.Trim("ops_sequential,"+options, ",")
		}
		b, err := simplego.New(options)
		if err != nil {
			return nil, fmt.Errorf("model backend %q: %w", name, err)
		}
		return b, nil
	case BackendXLA:
		cfg, err := parseXLAConfig(options)
		if err != nil {
			return nil, fmt.Errorf("model backend %q: %w", name, err)
		}
		return newXLABackend(name, cfg)
	}
	return nil, fmt.Errorf("unknown model backend %q: valid backends are %q (default, pure Go) and %q (e.g. \"xla:cuda\", \"xla:cpu\")",
		name, BackendSimpleGo, BackendXLA)
}

// xlaConfig is an "xla:" backend string taken apart: what GoMLX's XLA
// backend takes as its config ("plugin[,word...]") and the PJRT client's
// create options.
type xlaConfig struct {
	gomlx  string
	client map[string]any
}

// parseXLAConfig splits options ("plugin[,option...]") into GoMLX's part
// and the PJRT GPU client's options, typed as the plugin expects them.
func parseXLAConfig(options string) (xlaConfig, error) {
	parts := strings.Split(options, ",")
	cfg := xlaConfig{client: map[string]any{}}
	gomlx := parts[:1]
	for _, p := range parts[1:] {
		key, value, ok := strings.Cut(p, "=")
		if !ok {
			// GoMLX's own words; it only logs any other and goes on, so a
			// misspelt option would silently do nothing.
			if !slices.Contains([]string{"tf32", "shared_buffers", "noshared_buffers"}, p) {
				return cfg, fmt.Errorf("unknown option %q: the XLA backend takes tf32, shared_buffers, noshared_buffers, memory_fraction=, preallocate= and allocator=", p)
			}
			gomlx = append(gomlx, p)
			continue
		}
		switch key {
		case "memory_fraction":
			f, err := strconv.ParseFloat(value, 32)
			if err != nil || !(f > 0 && f <= 1) {
				return cfg, fmt.Errorf("memory_fraction=%s: want a fraction of the GPU's memory in (0, 1]", value)
			}
			cfg.client[key] = float32(f)
		case "preallocate":
			b, err := strconv.ParseBool(value)
			if err != nil {
				return cfg, fmt.Errorf("preallocate=%s: want true or false", value)
			}
			cfg.client[key] = b
		case "allocator":
			switch value {
			case "default", "platform", "bfc", "cuda_async":
			default:
				return cfg, fmt.Errorf("allocator=%s: want default, platform, bfc or cuda_async", value)
			}
			cfg.client[key] = value
		default:
			return cfg, fmt.Errorf("unknown option %q: the XLA backend takes memory_fraction, preallocate and allocator", key)
		}
	}
	cfg.gomlx = strings.Join(gomlx, ",")
	return cfg, nil
}
