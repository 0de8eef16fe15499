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
}

func TestExtProcConfigErrorsNameTheField(t *testing.T) {
	for field, yaml := range map[string]string{
		"extproc.cache.memory_mb":       "extproc:\n  cache:\n    memory_mb: -1\n",
		"extproc.cache.max_entry_bytes": "extproc:\n  cache:\n    memory_mb: 1\n    max_entry_bytes: 4194304\n",
		"extproc.redis.failure_mode":    "extproc:\n  redis:\n    failure_mode: maybe\n",
		"extproc.redis.addr":            "extproc:\n  redis:\n    addr: nohost\n",
		"extproc.max_body_bytes":        "extproc:\n  max_body_bytes: 10\n",
	} {
		_, err := config.Parse("test.yaml", []byte(yaml))
		if err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: error %v does not name the field", field, err)
		}
	}
}
