package model

import (
	"reflect"
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

// The GPU client's options are typed as the PJRT plugin checks them;
// GoMLX's own words stay with the plugin name; mistakes name the option.
func TestParseXLAConfig(t *testing.T) {
	cfg, err := parseXLAConfig("cuda,tf32,memory_fraction=0.25,preallocate=false,allocator=bfc")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.gomlx != "cuda,tf32" {
		t.Errorf("GoMLX config %q, want cuda,tf32", cfg.gomlx)
	}
	want := map[string]any{"memory_fraction": float32(0.25), "preallocate": false, "allocator": "bfc"}
	if !reflect.DeepEqual(cfg.client, want) {
		t.Errorf("client options %#v, want %#v", cfg.client, want)
	}
	if cfg, err := parseXLAConfig("/opt/jax/xla_cuda_plugin.so"); err != nil || cfg.gomlx != "/opt/jax/xla_cuda_plugin.so" || len(cfg.client) != 0 {
		t.Errorf("plain plugin path: %+v, %v", cfg, err)
	}
	for option, want := range map[string]string{
		"memory_fraction=0":    "(0, 1]",
		"memory_fraction=1.5":  "(0, 1]",
		"memory_fraction=most": "(0, 1]",
		"preallocate=maybe":    "true or false",
		"allocator=arena":      "cuda_async",
		"mem_fraction=0.5":     `unknown option "mem_fraction"`,
		"memory_fraction":      `unknown option "memory_fraction"`, // the value forgotten
		"tf_32":                `unknown option "tf_32"`,
	} {
		if _, err := parseXLAConfig("cuda," + option); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want one containing %q", option, err, want)
		}
	}
	// Through NewBackend the mistake is reported before any plugin loads.
	if _, err := NewBackend("xla:cuda,memory_fraction=2"); err == nil || !strings.Contains(err.Error(), "(0, 1]") {
		t.Errorf("NewBackend with a bad option: %v", err)
	}
}
