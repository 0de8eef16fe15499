package onnxenc

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	. "github.com/gomlx/gomlx/pkg/core/graph" //nolint:revive // GoMLX graph code reads best with its ops unqualified.
	"github.com/gomlx/gomlx/pkg/core/tensors"

	"github.com/infergate/infergate/engine/model/onnxenc/tinybert"
)

func TestExternalData(t *testing.T) {
	f := newFixture(t, tinybert.Config{Seed: 10})
	external := filepath.Join(f.dir, "external.onnx")
	if err := f.model.WriteONNXExternal(external, "weights.bin"); err != nil {
		t.Fatal(err)
	}
	inline := f.load(t, nil)
	split := f.load(t, func(o *Options) { o.ModelPath = external })
	batch := tokenizeAll(t, inline, sentences)
	want, err := inline.Embed(context.Background(), batch)
	if err != nil {
		t.Fatal(err)
	}
	got, err := split.Embed(context.Background(), batch)
	if err != nil {
		t.Fatal(err)
	}
	for i := range want {
		if !slices.Equal(got[i], want[i]) {
			t.Fatalf("sequence %d: external-data model differs from the inline one", i)
		}
	}

	data, err := os.ReadFile(external)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ location, want string }{
		// Same length as "weights.bin", so the protobuf stays well formed.
		{"../ghts.bin", "beside the model"},
		{"/etc/passwd", "beside the model"},
		{"missing.bin", "missing.bin"},
	} {
		path := filepath.Join(f.dir, "bad.onnx")
		if err := os.WriteFile(path, bytes.ReplaceAll(data, []byte("weights.bin"), []byte(c.location)), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := Load(Options{ModelPath: path, TokenizerPath: f.opts.TokenizerPath}, newBackend(t))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("location %q: err = %v, want it to mention %q", c.location, err, c.want)
		}
	}
}

func TestOnnxGatherND(t *testing.T) {
	exec := MustNewExec(newBackend(t), func(data, indices *Node) *Node {
		return onnxGatherND(data, indices)
	})
	data := [][]float32{{1, 2, 3}, {4, 5, 6}}
	cases := []struct {
		indices any
		want    []float32
		dims    []int
	}{
		// Full indexing, indices of higher rank than data (BERT's mask lookup).
		{[][][][]int64{{{{1, -1}}, {{0, 0}}}}, []float32{6, 1}, []int{1, 2, 1}},
		// Partial indexing gathers rows; -2 is the first row.
		{[][]int64{{-2}, {1}}, []float32{1, 2, 3, 4, 5, 6}, []int{2, 3}},
	}
	for _, c := range cases {
		out := exec.MustExec(data, c.indices)[0]
		if got := tensors.MustCopyFlatData[float32](out); !slices.Equal(got, c.want) || !slices.Equal(out.Shape().Dimensions, c.dims) {
			t.Errorf("GatherND(%v) = %v %v, want %v %v", c.indices, out.Shape().Dimensions, got, c.dims, c.want)
		}
	}
}
