//go:build !(cgo && linux && amd64)

package model

import (
	"fmt"

	"github.com/gomlx/gomlx/backends"
)

// xlaAvailable tells whether this binary can run the XLA backend.
const xlaAvailable = false

func newXLABackend(name string, _ xlaConfig) (backends.Backend, error) {
	return nil, fmt.Errorf("model backend %q: this binary was built without cgo (or not for linux/amd64), "+
		"so only %q is available; rebuild with CGO_ENABLED=1 to use XLA", name, BackendSimpleGo)
}
