package extproc_test

import (
	"strings"
	"testing"
	"time"

	"github.com/infergate/infergate/config"
)

func TestQuickstartExtProcSectionParses(t *testing.T) {
	cfg, err := config.Load("../examples/quickstart/infergate.yaml")
	if err != nil {
		t.Fatal(err)
	}
	e := cfg.ExtProc
	if e.Cache.MemoryMB != 256 || e.Cache.CollapseWait != 5*time.Second || e.Redis.FailureMode != "open" || e.Redis.Addr != "" {
		t.Fatalf("quickstart extproc section: %+v", e)
	}
	sem := e.Semantic
	if sem.EngineURL != "http://"+cfg.Engine.Listen || sem.Model != "use-lite" || sem.MemoryMB != 64 || sem.HNSWThreshold != 2048 ||
		sem.HNSWM != 16 || sem.HNSWEfConstruction != 100 || sem.HNSWEfSearch != 64 || sem.EmbedTimeout != 150*time.Millisecond || sem.MaxInFlight != 64 {
		t.Fatalf("quickstart extproc.semantic section: %+v", sem)
	}
}

func TestSemanticEngineURLFollowsTheEngine(t *testing.T) {
	for yaml, want := range map[string]string{
		"engine:\n  listen: 10.0.0.5:9000\n":                                    "http://10.0.0.5:9000",
		"engine:\n  listen: 0.0.0.0:9000\n":                                     "http://127.0.0.1:9000",
		"engine:\n  listen: \"[::]:9000\"\n":                                    "http://127.0.0.1:9000",
		"extproc:\n  semantic:\n    engine_url: https://engine.internal:8443\n": "https://engine.internal:8443",
	} {
		cfg, err := config.Parse("test.yaml", []byte(yaml))
		if err != nil {
			t.Fatalf("%q: %v", yaml, err)
		}
		if got := cfg.ExtProc.Semantic.EngineURL; got != want {
			t.Errorf("%q: engine_url %q, want %q", yaml, got, want)
		}
	}
}

func TestExtProcConfigErrorsNameTheField(t *testing.T) {
	for field, yaml := range map[string]string{
		"extproc.cache.memory_mb":               "extproc:\n  cache:\n    memory_mb: -1\n",
		"extproc.cache.max_entry_bytes":         "extproc:\n  cache:\n    memory_mb: 1\n    max_entry_bytes: 4194304\n",
		"extproc.redis.failure_mode":            "extproc:\n  redis:\n    failure_mode: maybe\n",
		"extproc.redis.addr":                    "extproc:\n  redis:\n    addr: nohost\n",
		"extproc.max_body_bytes":                "extproc:\n  max_body_bytes: 10\n",
		"extproc.semantic.engine_url":           "extproc:\n  semantic:\n    engine_url: localhost:8080\n",
		"extproc.semantic.memory_mb":            "extproc:\n  semantic:\n    memory_mb: -5\n",
		"extproc.semantic.hnsw_m":               "extproc:\n  semantic:\n    hnsw_m: 1\n",
		"extproc.semantic.hnsw_ef_construction": "extproc:\n  semantic:\n    hnsw_m: 32\n    hnsw_ef_construction: 8\n",
		"extproc.semantic.embed_timeout":        "extproc:\n  semantic:\n    embed_timeout: -1s\n",
		"extproc.semantic.max_in_flight":        "extproc:\n  semantic:\n    max_in_flight: -1\n",
	} {
		_, err := config.Parse("test.yaml", []byte(yaml))
		if err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: error %v does not name the field", field, err)
		}
	}
}
