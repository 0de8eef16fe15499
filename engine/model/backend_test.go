package model

import (
	"strings"
	"testing"

	"github.com/gomlx/gomlx/backends/simplego"
)

func TestNewBackendSimpleGoIsTheDefault(t *testing.T) {
	for _, name := range []string{"", "simplego", "simplego:parallelism=2"} {
		b, err := NewBackend(name)
		if err != nil {
			t.Fatalf("NewBackend(%q): %v", name, err)
		}
		if _, ok := b.(*simplego.Backend); !ok {
			t.Errorf("NewBackend(%q) gave backend %q, want SimpleGo", name, b.Name())
		}
		b.Finalize()
	}
}

func TestNewBackendUnknownNameListsValidOnes(t *testing.T) {
	_, err := NewBackend("tpu:v5")
	if err == nil {
		t.Fatal("NewBackend(tpu:v5) succeeded")
	}
	for _, want := range []string{`"tpu:v5"`, BackendSimpleGo, BackendXLA} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}

// A missing PJRT plugin is an error, never a download.
func TestNewBackendXLAWithoutPlugin(t *testing.T) {
	_, err := NewBackend("xla:no-such-plugin")
	if err == nil {
		t.Fatal("NewBackend(xla:no-such-plugin) succeeded")
	}
	want := "PJRT_PLUGIN_LIBRARY_PATH"
	if !xlaAvailable {
		want = "without cgo"
	}
	if !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not mention %q", err, want)
	}
}
