package onnxenc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph" //nolint:revive // GoMLX graph code reads best with its ops unqualified.
	"github.com/gomlx/gomlx/pkg/core/tensors"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"
)

// errClosed is returned by Embed and WarmupBatches after Close.
var errClosed = errors.New("onnxenc: encoder is closed")

// WarmupBatches compiles the buckets of batches of up to maxBatch
// sequences of up to maxTokens tokens (each bound rounded up to its
// bucket), without running them.
func (e *Encoder) WarmupBatches(ctx context.Context, maxBatch, maxTokens int) error {
	e.closeMu.RLock()
	defer e.closeMu.RUnlock()
	if e.closed {
		return errClosed
	}
	topBatch, topSeq := e.shapes.Bucket(max(1, maxBatch), max(1, min(maxTokens, e.opts.MaxTokens)))
	for _, rows := range e.shapes.Batch {
		if rows > topBatch {
			break
		}
		for _, seq := range e.shapes.Length {
			if seq > topSeq {
				break
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := e.precompile(bucket{batch: rows, seq: seq}); err != nil {
				return fmt.Errorf("onnxenc: warm-up: %w", err)
			}
		}
	}
	return nil
}

// runChunk pads a chunk to its bucket and runs the bucket's executable.
func (e *Encoder) runChunk(chunk [][]int32) ([][]float32, error) {
	longest := 0
	for _, seq := range chunk {
		longest = max(longest, len(seq))
	}
	rows, seq := e.shapes.Bucket(len(chunk), longest)
	b := bucket{batch: rows, seq: seq}
	ex, err := e.executable(b)
	if err != nil {
		return nil, err
	}
	args := e.args(chunk, b)
	defer finalize(args)
	var outs []*tensors.Tensor
	if err := catch(func() (err error) { outs, err = ex.Exec(args...); return err }); err != nil {
		return nil, fmt.Errorf("onnxenc: running bucket %dx%d: %w", b.batch, b.seq, err)
	}
	defer func() {
		for _, t := range outs {
			t.FinalizeAll()
		}
	}()
	if len(outs) != 1 {
		return nil, fmt.Errorf("onnxenc: graph returned %d outputs, want 1", len(outs))
	}
	flat, err := tensors.CopyFlatData[float32](outs[0])
	if err != nil {
		return nil, fmt.Errorf("onnxenc: reading embeddings: %w", err)
	}
	dim := len(flat) / b.batch
	vecs := make([][]float32, len(chunk))
	for i := range chunk {
		vecs[i] = flat[i*dim : (i+1)*dim : (i+1)*dim]
	}
	return vecs, nil
}

// args are the executable's inputs for chunk padded to b. The mask
// always goes first: pooling needs it even where the graph takes none.
func (e *Encoder) args(chunk [][]int32, b bucket) []any {
	args := make([]any, 0, len(e.feeds)+1)
	args = append(args, e.paddedInput(chunk, b, feedMask, dtypes.Float32))
	for _, f := range e.feeds {
		args = append(args, e.paddedInput(chunk, b, f.kind, f.dtype))
	}
	return args
}

func finalize(args []any) {
	for _, a := range args {
		a.(*tensors.Tensor).FinalizeAll()
	}
}

// precompile compiles bucket b's executable for its shapes.
func (e *Encoder) precompile(b bucket) error {
	ex, err := e.executable(b)
	if err != nil {
		return err
	}
	args := e.args([][]int32{{0}}, b)
	defer finalize(args)
	if err := catch(func() error { return ex.PreCompile(args...) }); err != nil {
		return fmt.Errorf("onnxenc: compiling bucket %dx%d: %w", b.batch, b.seq, err)
	}
	return nil
}

// paddedInput lays a chunk out as a [batch, seq] tensor of the bucket's
// shape. Padding rows attend to their first token only, so no softmax in
// the graph ever sees a row with nothing to attend to.
func (e *Encoder) paddedInput(chunk [][]int32, b bucket, kind feedKind, dtype dtypes.DType) *tensors.Tensor {
	flat := make([]int64, b.batch*b.seq)
	for row := range b.batch {
		n := 1
		if row < len(chunk) {
			n = len(chunk[row])
		}
		for col := range n {
			switch kind {
			case feedIDs:
				if row < len(chunk) {
					flat[row*b.seq+col] = int64(chunk[row][col])
				}
			case feedMask:
				flat[row*b.seq+col] = 1
			case feedTypes:
				// Single-sentence input is all segment 0.
			}
		}
	}
	return tensorOf(flat, dtype, b)
}

func tensorOf(flat []int64, dtype dtypes.DType, b bucket) *tensors.Tensor {
	switch dtype {
	case dtypes.Int64:
		return tensors.FromFlatDataAndDimensions(flat, b.batch, b.seq)
	case dtypes.Int32:
		return tensors.FromFlatDataAndDimensions(convert[int32](flat), b.batch, b.seq)
	case dtypes.Float32:
		return tensors.FromFlatDataAndDimensions(convert[float32](flat), b.batch, b.seq)
	}
	// wireInputs admits integer inputs only; the widest is a safe default.
	return tensors.FromFlatDataAndDimensions(flat, b.batch, b.seq)
}

func convert[T int32 | float32](flat []int64) []T {
	out := make([]T, len(flat))
	for i, v := range flat {
		out[i] = T(v)
	}
	return out
}

// executable returns the bucket's executable, creating it on first use;
// GoMLX compiles it on its first Exec, and concurrent first calls wait for
// that one compilation.
func (e *Encoder) executable(b bucket) (*mlctx.Exec, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if ex, ok := e.execs[b]; ok {
		return ex, nil
	}
	ex, err := mlctx.NewExec(e.backend, e.weights, e.graph)
	if err != nil {
		return nil, fmt.Errorf("onnxenc: %w", err)
	}
	ex.SetMaxCache(1)
	e.execs[b] = ex
	slog.Debug("onnx encoder bucket created", "model", e.opts.ModelPath, "batch", b.batch, "seq", b.seq)
	return ex, nil
}

// graph builds the model call plus pooling: in[0] is the float mask, then
// the graph inputs in e.feeds order.
func (e *Encoder) graph(ctx *mlctx.Context, in []*Node) *Node {
	mask := in[0]
	feeds := make(map[string]*Node, len(e.feeds))
	for i, f := range e.feeds {
		feeds[f.name] = in[i+1]
	}
	out := func() *Node {
		e.buildMu.Lock()
		defer e.buildMu.Unlock()
		return e.callModel(ctx, mask.Graph(), feeds, e.opts.OutputName)
	}()
	out = ConvertDType(out, dtypes.Float32)
	switch e.opts.Pooling {
	case PoolMean:
		weights := ExpandAxes(mask, -1) // [batch, seq, 1]
		sum := ReduceSum(Mul(out, weights), 1)
		count := Max(ReduceSum(weights, 1), ScalarOne(mask.Graph(), dtypes.Float32))
		out = Div(sum, count)
	case PoolCLS:
		out = Squeeze(Slice(out, AxisRange(), AxisElem(0)), 1)
	}
	if e.opts.Normalize {
		norm := Sqrt(ReduceAndKeep(Square(out), ReduceSum, -1))
		out = Div(out, Max(norm, Scalar(out.Graph(), dtypes.Float32, 1e-12)))
	}
	return out
}
