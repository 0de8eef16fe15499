//go:build !unix

package loadgen

import "time"

// processCPU is unknown here; results leave the per-CPU figures at zero.
func processCPU() time.Duration { return 0 }
