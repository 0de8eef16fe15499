//go:build unix

package loadgen

import (
	"syscall"
	"time"
)

// processCPU is the CPU time (user + system) this process has used: the
// engine's and the load generator's when the engine runs in-process. On a
// shared machine, items per CPU-second is steadier than items per second.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
