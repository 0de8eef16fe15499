//go:build cgo

package gpu

import (
	"path/filepath"
	"strings"
	"testing"
)

// openMissingLibrary is the no-driver host: go-nvml cannot dlopen the
// library, so nvmlInit fails before any other entry point exists.
func openMissingLibrary() (driver, error) {
	return openNVML(filepath.Join("/nonexistent", nvmlLibrary))
}

func TestMissingLibraryReason(t *testing.T) {
	tel, _ := openUnavailable(t)
	if !strings.Contains(tel.Reason(), "not found") {
		t.Errorf("Reason() = %q, want it to say the NVML library was not found", tel.Reason())
	}
}
