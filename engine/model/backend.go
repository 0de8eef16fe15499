package model

import (
	"fmt"
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
//   - "xla:<plugin>": XLA through a PJRT plugin, e.g. "xla:cuda", "xla:cpu"
//     or "xla:/abs/path/to/pjrt_plugin.so"; plain "xla" picks cuda when
//     present, else cpu. Plugins are looked up in PJRT_PLUGIN_LIBRARY_PATH,
//     then ~/.local/lib/go-xla, /usr/local/lib/go-xla and the system library
//     paths. Nothing is ever downloaded. Needs a cgo build on linux/amd64.
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
		return newXLABackend(name, options)
	}
	return nil, fmt.Errorf("unknown model backend %q: valid backends are %q (default, pure Go) and %q (e.g. \"xla:cuda\", \"xla:cpu\")",
		name, BackendSimpleGo, BackendXLA)
}
