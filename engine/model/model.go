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
