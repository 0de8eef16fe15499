//go:build !cgo

package gpu

import "errors"

// go-nvml reaches libnvidia-ml.so.1 through cgo, so a pure-Go build has no
// way to read the GPU; the engine still runs, without GPU gauges.
func openDriver() (driver, error) {
	return nil, errors.New("built without cgo")
}
