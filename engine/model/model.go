// Package model is the seam between the engine's serving side (queues,
// batcher, HTTP APIs) and the runtimes that execute a model: USE-Lite on
// GoMLX, or a user's ONNX encoder through onnx-gomlx.
package model

import (
	"context"
	"errors"
)

// ErrUntokenizable marks input the tokenizer cannot turn into tokens; the
// APIs answer it with 422.
var ErrUntokenizable = errors.New("input cannot be tokenized")

// Encoder turns texts into fixed-size embedding vectors.
//
// Tokenize runs on the request goroutine, so token counts are known before a
// request is queued (for max_batch_tokens and usage). Embed runs one batch
// on a worker; implementations pad to their shape buckets themselves.
type Encoder interface {
	// Tokenize returns the token ids of text, or an error wrapping
	// ErrUntokenizable.
	Tokenize(text string) ([]int32, error)
	// Embed returns one vector of Dim() floats per sequence, in order.
	Embed(ctx context.Context, batch [][]int32) ([][]float32, error)
	// Dim is the embedding width.
	Dim() int
	// MaxTokens is the longest sequence Embed accepts; longer input is
	// truncated by the engine before it is queued.
	MaxTokens() int
	// Close frees the runtime's resources.
	Close() error
}

// Streamer is an Encoder that runs a batch in parts (model.Shapes.Plan) and
// hands out each part's vectors as soon as it is done, so the batcher can
// answer short texts before the long ones of the same batch are computed.
// emit(indices, vectors) gives vectors[k] for batch[indices[k]]; every
// index is emitted once before EmbedEach returns nil.
type Streamer interface {
	EmbedEach(ctx context.Context, batch [][]int32, emit func(indices []int, vectors [][]float32)) error
}

// Collect runs each (an EmbedEach) and returns its vectors in batch order:
// Embed for a Streamer.
func Collect(ctx context.Context, batch [][]int32, each func(context.Context, [][]int32, func([]int, [][]float32)) error) ([][]float32, error) {
	out := make([][]float32, len(batch))
	err := each(ctx, batch, func(indices []int, vectors [][]float32) {
		for k, i := range indices {
			out[i] = vectors[k]
		}
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}
