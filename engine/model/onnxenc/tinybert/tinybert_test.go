package tinybert

import (
	"math"
	"testing"

	"github.com/gomlx/gomlx/backends/simplego"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
	"github.com/gomlx/onnx-gomlx/onnx"
)

// TestONNXMatchesReference runs the generated ONNX file through onnx-gomlx
// and checks both outputs, padded positions included, against the float64
// forward pass.
func TestONNXMatchesReference(t *testing.T) {
	for _, noTypes := range []bool{false, true} {
		m, err := New(Config{VocabSize: 30, Seed: 7, NoTokenTypeInput: noTypes})
		if err != nil {
			t.Fatal(err)
		}
		data, err := m.ONNX()
		if err != nil {
			t.Fatal(err)
		}
		om, err := onnx.Parse(data)
		if err != nil {
			t.Fatal(err)
		}
		// Sequential ops: simplego's parallel scheduler trips the race detector.
		backend, err := simplego.New("ops_sequential")
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.New()
		if err := om.VariablesToContext(ctx); err != nil {
			t.Fatal(err)
		}
		ids := [][]int64{{2, 5, 6, 7, 3}, {2, 9, 3, 0, 0}}
		mask := [][]int64{{1, 1, 1, 1, 1}, {1, 1, 1, 0, 0}}
		types := [][]int64{{0, 0, 0, 1, 1}, {0, 0, 0, 0, 0}}
		if noTypes {
			types[0] = []int64{0, 0, 0, 0, 0}
		}
		outs, err := context.MustNewExec(backend, ctx, func(ctx *context.Context, in []*Node) []*Node {
			feeds := map[string]*Node{"input_ids": in[0], "attention_mask": in[1]}
			if !noTypes {
				feeds["token_type_ids"] = in[2]
			}
			return om.CallGraph(ctx, in[0].Graph(), feeds, "last_hidden_state", "pooler_output")
		}).Exec(ids, mask, types)
		if err != nil {
			t.Fatal(err)
		}
		hidden := tensors.MustCopyFlatData[float32](outs[0])
		pooled := tensors.MustCopyFlatData[float32](outs[1])
		worst := 0.0
		for b := range ids {
			want, err := m.Forward(toInts(ids[b]), toInts(types[b]), toInts(mask[b]))
			if err != nil {
				t.Fatal(err)
			}
			for s := range want {
				for j, w := range want[s] {
					worst = math.Max(worst, math.Abs(float64(hidden[(b*5+s)*m.Hidden+j])-w))
				}
			}
			for j, w := range m.Pooled(want) {
				worst = math.Max(worst, math.Abs(float64(pooled[b*m.Hidden+j])-w))
			}
		}
		t.Logf("token types input=%v: max abs error %.2g", !noTypes, worst)
		if worst > 1e-4 {
			t.Errorf("token types input=%v: max abs error %g against the float64 reference", !noTypes, worst)
		}
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Error("New without VocabSize succeeded")
	}
	if _, err := New(Config{VocabSize: 10, Hidden: 30, Heads: 4}); err == nil {
		t.Error("New with Hidden not a multiple of Heads succeeded")
	}
}

func toInts(v []int64) []int {
	out := make([]int, len(v))
	for i, x := range v {
		out[i] = int(x)
	}
	return out
}
