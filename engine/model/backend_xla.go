//go:build cgo && linux && amd64

package model

import (
	"fmt"

	"github.com/gomlx/go-xla/pkg/pjrt"
	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/backends/xla"
)

// xlaAvailable tells whether this binary can run the XLA backend.
const xlaAvailable = true

func newXLABackend(name string, cfg xlaConfig) (b backends.Backend, err error) {
	// The PJRT loader panics on some broken plugins; a bad config must not
	// take the process down.
	defer func() {
		if r := recover(); r != nil {
			b, err = nil, fmt.Errorf("model backend %q: %v", name, r)
		}
	}()
	// GoMLX would otherwise download PJRT plugins on first use; a server
	// must only use what the operator installed.
	xla.EnableAutoInstall(false)
	b, err = xla.NewWithOptions(cfg.gomlx, pjrt.NamedValuesMap(cfg.client))
	if err != nil {
		return nil, fmt.Errorf("model backend %q: %w (set PJRT_PLUGIN_LIBRARY_PATH to the folder holding "+
			"pjrt_c_api_<name>_plugin.so, or give the plugin's absolute path as \"xla:/path/to/plugin.so\")", name, err)
	}
	return b, nil
}
