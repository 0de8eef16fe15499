package onnxenc

import (
	"context"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"testing"
)

// torchExpected is testdata/torch/expected.json, written by
// testdata/export_torch_bert.py next to the ONNX files it exported.
type torchExpected struct {
	Torch        string    `json:"torch"`
	Transformers string    `json:"transformers"`
	Sequences    [][]int32 `json:"sequences"`
	Variants     map[string]struct {
		File     string                 `json:"file"`
		Ops      []string               `json:"ops"`
		Expected map[string][][]float64 `json:"expected"`
	} `json:"variants"`
}

// TestTorchExport runs HuggingFace BertModels exported by torch.onnx.export
// (eager and SDPA attention; weights in an external data file; GatherND and
// IsNaN in the graph) and compares with PyTorch's own outputs.
func TestTorchExport(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("testdata", "torch", "expected.json"))
	if err != nil {
		t.Fatal(err)
	}
	var exp torchExpected
	if err := json.Unmarshal(raw, &exp); err != nil {
		t.Fatal(err)
	}
	tokPath := filepath.Join(t.TempDir(), "tokenizer.json")
	writeTokenizerJSON(t, tokPath)
	for name, v := range exp.Variants {
		for _, pc := range []struct{ pooling, output, key string }{
			{PoolMean, "last_hidden_state", "mean"},
			{PoolCLS, "last_hidden_state", "cls"},
			{PoolNone, "pooler_output", "pooler"},
		} {
			enc, err := Load(Options{
				ModelPath:     filepath.Join("testdata", "torch", v.File),
				TokenizerPath: tokPath,
				OutputName:    pc.output,
				Pooling:       pc.pooling,
				MaxTokens:     32,
			}, newBackend(t))
			if err != nil {
				t.Fatalf("%s: Load: %v", name, err)
			}
			got, err := enc.Embed(context.Background(), exp.Sequences)
			if err != nil {
				t.Fatalf("%s: Embed: %v", name, err)
			}
			worst := 0.0
			for i, want := range v.Expected[pc.key] {
				worst = math.Max(worst, maxAbsDiff(got[i], want))
			}
			t.Logf("%s (torch %s, transformers %s) %s: max abs error %.2g", name, exp.Torch, exp.Transformers, pc.key, worst)
			if worst > 1e-4 {
				t.Errorf("%s %s: max abs error %g against PyTorch", name, pc.key, worst)
			}
			_ = enc.Close()
		}
	}
}
