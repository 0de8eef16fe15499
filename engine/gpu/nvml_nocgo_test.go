//go:build !cgo

package gpu

import (
	"strings"
	"testing"
)

// Without cgo there is no NVML at all: every host is a no-driver host.
func openMissingLibrary() (driver, error) { return openDriver() }

func TestNoCgoReason(t *testing.T) {
	tel, logs := openUnavailable(t)
	if tel.Reason() != "built without cgo" {
		t.Errorf("Reason() = %q, want %q", tel.Reason(), "built without cgo")
	}
	if l := logs.lines()[0]; !strings.Contains(l, "telemetry unavailable: built without cgo") {
		t.Errorf("log line %q does not say why", l)
	}
}
