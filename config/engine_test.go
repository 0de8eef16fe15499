package config

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestEngineDefaults(t *testing.T) {
	e := Default().Engine
	if e.Backend != "simplego" || e.MaxBodyBytes != 2<<20 || *e.EmbeddingCacheBytes != 64<<20 || len(e.Models) != 1 {
		t.Fatalf("engine defaults %+v", e)
	}
	m := e.Models[0]
	if m.Name != "use-lite" || m.Kind != "use-lite" || m.Path != "models/use-lite" {
		t.Fatalf("default model %+v", m)
	}
	if m.MaxBatchSize != 32 || m.MaxBatchTokens != 8192 || *m.MaxQueueDelay != 2*time.Millisecond || m.QueueSize != 512 ||
		m.Workers != 1 || m.PriorityLevels != 10 || *m.DefaultPriority != 5 || m.Timeout != 30*time.Second ||
		m.MaxInputs != 2048 || m.MaxInputChars != 32768 {
		t.Fatalf("default batching knobs %+v", m)
	}
	if fmt.Sprint(m.PreferredBatchSizes) != "[1 2 4 8 16 32]" {
		t.Fatalf("default preferred batch sizes %v", m.PreferredBatchSizes)
	}
}

func TestPreferredBatchSizes(t *testing.T) {
	c, err := Parse("e.yaml", []byte("engine:\n  models:\n  - name: a\n    max_batch_size: 24\n  - name: b\n    preferred_batch_sizes: []\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(c.Engine.Models[0].PreferredBatchSizes); got != "[1 2 4 8 16 24]" {
		t.Fatalf("preferred sizes for max 24: %s", got)
	}
	if got := c.Engine.Models[1].PreferredBatchSizes; got == nil || len(got) != 0 {
		t.Fatalf("explicit [] should turn preferred sizes off, got %v", got)
	}
}

// Zero is a meaningful max_queue_delay (batch only what is queued) and
// default_priority (the lowest level); they are kept, not defaulted.
func TestEngineExplicitZeroes(t *testing.T) {
	c, err := Parse("e.yaml", []byte("engine:\n  models:\n  - name: a\n    max_queue_delay: 0s\n    default_priority: 0\n"))
	if err != nil {
		t.Fatal(err)
	}
	if m := c.Engine.Models[0]; *m.MaxQueueDelay != 0 || *m.DefaultPriority != 0 || m.Kind != "use-lite" {
		t.Fatalf("model %+v", m)
	}
}

func TestEngineONNXDefaults(t *testing.T) {
	c, err := Parse("e.yaml", []byte("engine:\n  models:\n  - name: bert\n    kind: onnx\n    path: m.onnx\n    onnx:\n      tokenizer: tokenizer.json\n"))
	if err != nil {
		t.Fatal(err)
	}
	o := c.Engine.Models[0].ONNX
	if o.InputIDs != "input_ids" || o.AttentionMask != "attention_mask" || o.TokenTypeIDs != "token_type_ids" ||
		o.Output != "last_hidden_state" || o.Pooling != "mean" || o.MaxTokens != 256 {
		t.Fatalf("onnx defaults %+v", o)
	}
}

func TestEngineValidation(t *testing.T) {
	tests := []struct{ name, yaml, want string }{
		{"backend", "engine:\n  backend: tpu\n", "engine.backend"},
		{"cache", "engine:\n  embedding_cache_bytes: -1\n", "engine.embedding_cache_bytes"},
		{"body", "engine:\n  max_body_bytes: 10\n", "engine.max_body_bytes"},
		{"name", "engine:\n  models:\n  - name: a/b\n", "engine.models[0] (a/b).name"},
		{"duplicate", "engine:\n  models:\n  - name: a\n  - name: a\n", "used by an earlier model"},
		{"kind", "engine:\n  models:\n  - name: a\n    kind: tflite\n", `"tflite" is not one of use-lite, onnx`},
		{"onnx tokenizer", "engine:\n  models:\n  - name: a\n    kind: onnx\n    path: m.onnx\n", "onnx.tokenizer"},
		{"onnx path", "engine:\n  models:\n  - name: a\n    kind: onnx\n    onnx: {tokenizer: t.json}\n", "path: is required"},
		{"pooling", "engine:\n  models:\n  - name: a\n    kind: onnx\n    path: m\n    onnx: {tokenizer: t, pooling: max}\n", "onnx.pooling"},
		{"batch size", "engine:\n  models:\n  - name: a\n    max_batch_size: -1\n", "max_batch_size: -1"},
		{"workers", "engine:\n  models:\n  - name: a\n    workers: -2\n", "workers"},
		{"delay", "engine:\n  models:\n  - name: a\n    max_queue_delay: -1ms\n", "max_queue_delay"},
		{"delay unit", "engine:\n  models:\n  - name: a\n    max_queue_delay: 5\n", "line 4"},
		{"priority", "engine:\n  models:\n  - name: a\n    priority_levels: 2\n    default_priority: 2\n", "default_priority: 2 is outside 0..1"},
		{"preferred", "engine:\n  models:\n  - name: a\n    max_batch_size: 8\n    preferred_batch_sizes: [4, 16]\n", "preferred_batch_sizes: 16 is outside 1..8"},
		{"timeout unit", "engine:\n  models:\n  - name: a\n    timeout: 30ns\n", "timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("bad.yaml", []byte(tt.yaml))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want it to mention %q", err, tt.want)
			}
		})
	}
}

func TestEngineRegister(t *testing.T) {
	c, err := Parse("r.yaml", []byte("engine:\n  listen: 10.0.0.5:8080\n  register:\n    control_plane: http://10.0.0.1:18001\n"))
	if err != nil {
		t.Fatal(err)
	}
	r := c.Engine.Register
	if r.Pool != "default" || r.Advertise != "10.0.0.5:8080" || r.TTL != 15*time.Second || r.Interval != 5*time.Second {
		t.Errorf("register defaults %+v", r)
	}
	for yaml, want := range map[string]string{
		"engine:\n  register:\n    control_plane: 10.0.0.1:18001\n":                                "engine.register.control_plane",
		"engine:\n  listen: 0.0.0.0:8080\n  register:\n    control_plane: http://10.0.0.1:18001\n": "engine.register.advertise",
		"engine:\n  register:\n    control_plane: http://h:1\n    ttl: 3s\n    interval: 5s\n":     "below ttl",
	} {
		if _, err := Parse("r.yaml", []byte(yaml)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want one naming %q", yaml, err, want)
		}
	}
}
