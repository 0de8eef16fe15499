// Package onnxenc serves a user's BERT-style ONNX sentence encoder (for
// example a torch.onnx.export of a HuggingFace BertModel, or a
// sentence-transformers model) as a model.Encoder. The graph runs through
// onnx-gomlx on any GoMLX backend; tokenization is the pure-Go WordPiece of
// the model's tokenizer.json; pooling (masked mean or [CLS]) and the
// optional L2 normalisation run inside the compiled graph.
//
// Batches are padded to shape buckets (model.Shapes) so that only a
// bounded set of graphs is ever compiled, whatever mix of lengths arrives.
package onnxenc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"
	"github.com/gomlx/onnx-gomlx/onnx"

	"github.com/infergate/infergate/engine/model"
	"github.com/infergate/infergate/engine/model/wordpiece"
)

// Pooling modes.
const (
	PoolMean = "mean" // mean of the output over the attended tokens
	PoolCLS  = "cls"  // the output at the first token
	PoolNone = "none" // the output is already one vector per sequence
)

// DefaultMaxTokens is MaxTokens when Options leaves it zero.
const DefaultMaxTokens = 256

// minSeqBucket is the smallest padded sequence length.
const minSeqBucket = 16

// Options says where the model is and how its graph is wired.
type Options struct {
	ModelPath     string // the .onnx file
	TokenizerPath string // HuggingFace tokenizer.json with a WordPiece model
	// Graph input and output names; empty takes the default in brackets.
	InputIDsName      string // [input_ids]
	AttentionMaskName string // [attention_mask]; fed only if the graph has it
	TokenTypeIDsName  string // [token_type_ids]; fed (zeros) only if the graph has it
	OutputName        string // [last_hidden_state]
	Pooling           string // mean (default), cls, or none for a [batch, dim] output
	Normalize         bool   // L2-normalise every vector
	MaxTokens         int    // longest sequence, special tokens included [256]
}

func (o *Options) setDefaults() {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&o.InputIDsName, "input_ids")
	def(&o.AttentionMaskName, "attention_mask")
	def(&o.TokenTypeIDsName, "token_type_ids")
	def(&o.OutputName, "last_hidden_state")
	def(&o.Pooling, PoolMean)
	if o.MaxTokens == 0 {
		o.MaxTokens = DefaultMaxTokens
	}
}

// Encoder is a loaded ONNX encoder; safe for concurrent use.
type Encoder struct {
	opts      Options
	tok       *wordpiece.Tokenizer
	onnxModel *onnx.Model
	gatherNDs []gatherND
	weights   *mlctx.Context
	backend   backends.Backend
	feeds     []feed // graph inputs, in the order the executables take them
	dim       int
	numIDs    int
	shapes    model.Shapes

	// buildMu serialises graph conversion: onnx-gomlx's Model is not meant
	// for concurrent conversions, and callModel edits its input list.
	buildMu sync.Mutex

	// closeMu makes Close wait for running Embed calls; closed is set
	// under its write lock.
	closeMu sync.RWMutex
	closed  bool

	mu    sync.Mutex
	execs map[bucket]*mlctx.Exec
}

// feed is one graph input the encoder fills.
type feed struct {
	name  string
	kind  feedKind
	dtype dtypes.DType
}

type feedKind int

const (
	feedIDs feedKind = iota
	feedMask
	feedTypes
)

type bucket struct{ batch, seq int }

var _ model.Encoder = (*Encoder)(nil)

// Load reads the model and tokenizer, checks the graph's inputs and output
// against opts, and compiles the smallest bucket, so a graph onnx-gomlx
// cannot convert fails here rather than on the first request.
func Load(opts Options, backend backends.Backend) (*Encoder, error) {
	opts.setDefaults()
	switch opts.Pooling {
	case PoolMean, PoolCLS, PoolNone:
	default:
		return nil, fmt.Errorf("onnxenc: pooling %q: want %q, %q or %q", opts.Pooling, PoolMean, PoolCLS, PoolNone)
	}
	if opts.MaxTokens < 2 {
		return nil, fmt.Errorf("onnxenc: max tokens %d: need at least 2 for [CLS] and [SEP]", opts.MaxTokens)
	}
	if backend == nil {
		return nil, errors.New("onnxenc: nil backend")
	}
	tok, err := wordpiece.Load(opts.TokenizerPath)
	if err != nil {
		return nil, fmt.Errorf("onnxenc: tokenizer: %w", err)
	}
	m, err := readModel(opts.ModelPath)
	if err != nil {
		return nil, fmt.Errorf("onnxenc: %w", err)
	}
	gatherNDs, err := findGatherND(m)
	if err != nil {
		return nil, fmt.Errorf("onnxenc: %s: %w", opts.ModelPath, err)
	}
	e := &Encoder{
		opts:      opts,
		tok:       tok.WithMaxLength(opts.MaxTokens),
		onnxModel: m,
		gatherNDs: gatherNDs,
		backend:   backend,
		numIDs:    tok.NumIDs(),
		shapes:    model.ShapesFor(backend, minSeqBucket, opts.MaxTokens),
		execs:     map[bucket]*mlctx.Exec{},
	}
	if err := e.wireInputs(); err != nil {
		return nil, err
	}
	if err := e.checkOutput(); err != nil {
		return nil, err
	}
	e.weights = mlctx.New()
	if err := catch(func() error { return m.VariablesToContext(e.weights) }); err != nil {
		e.release()
		return nil, fmt.Errorf("onnxenc: loading weights of %s: %w", opts.ModelPath, err)
	}
	// Compile the smallest bucket now and learn the width where the graph
	// leaves it dynamic.
	out, err := e.runChunk([][]int32{{0}})
	if err != nil {
		e.release()
		return nil, fmt.Errorf("%w (model %s)", err, opts.ModelPath)
	}
	e.dim = len(out[0])
	slog.Info("onnx encoder loaded", "model", opts.ModelPath, "dim", e.dim, "pooling", opts.Pooling,
		"normalize", opts.Normalize, "max_tokens", opts.MaxTokens, "inputs", m.InputsNames)
	return e, nil
}

// wireInputs maps every graph input to what the encoder feeds it.
func (e *Encoder) wireInputs() error {
	names, shapes := e.onnxModel.Inputs()
	kinds := map[string]feedKind{
		e.opts.InputIDsName:      feedIDs,
		e.opts.AttentionMaskName: feedMask,
		e.opts.TokenTypeIDsName:  feedTypes,
	}
	if len(kinds) != 3 {
		return fmt.Errorf("onnxenc: input names must differ: input_ids %q, attention_mask %q, token_type_ids %q",
			e.opts.InputIDsName, e.opts.AttentionMaskName, e.opts.TokenTypeIDsName)
	}
	for i, name := range names {
		kind, ok := kinds[name]
		if !ok {
			return fmt.Errorf("onnxenc: graph input %q is none of the configured input_ids %q, attention_mask %q, token_type_ids %q; the graph's inputs are %s",
				name, e.opts.InputIDsName, e.opts.AttentionMaskName, e.opts.TokenTypeIDsName, describe(names, shapes))
		}
		s := shapes[i]
		if s.Rank() != 2 || !s.DType.IsInt() {
			return fmt.Errorf("onnxenc: graph input %q is %s, want an integer [batch, sequence] tensor", name, s)
		}
		for axis, d := range s.Dimensions {
			if d > 0 {
				return fmt.Errorf("onnxenc: graph input %q has the fixed shape %s; export the model with dynamic batch and sequence axes", name, s)
			}
			// onnx-gomlx ties dynamic axes by name; give unnamed ones a
			// name of their own so batch and sequence may differ.
			if s.Names[axis] == onnx.UnnamedDynamicDimension {
				s.Names[axis] = fmt.Sprintf("%s#%d", name, axis)
			}
		}
		e.feeds = append(e.feeds, feed{name: name, kind: kind, dtype: s.DType})
	}
	if !slices.ContainsFunc(e.feeds, func(f feed) bool { return f.kind == feedIDs }) {
		return fmt.Errorf("onnxenc: the graph has no input %q; its inputs are %s", e.opts.InputIDsName, describe(names, shapes))
	}
	if !slices.ContainsFunc(e.feeds, func(f feed) bool { return f.kind == feedMask }) {
		// Sequences are padded to shared lengths; without a mask the real
		// tokens attend to the padding and every vector changes.
		return fmt.Errorf("onnxenc: the graph has no input %q, so padding would change its vectors; export it with the attention mask as an input (its inputs are %s)",
			e.opts.AttentionMaskName, describe(names, shapes))
	}
	return nil
}

func (e *Encoder) checkOutput() error {
	names, shapes := e.onnxModel.Outputs()
	i := slices.Index(names, e.opts.OutputName)
	if i < 0 {
		return fmt.Errorf("onnxenc: the graph has no output %q; its outputs are %s", e.opts.OutputName, describe(names, shapes))
	}
	s := shapes[i]
	want := 3
	if e.opts.Pooling == PoolNone {
		want = 2
	}
	if s.Rank() != want || !s.DType.IsFloat() {
		return fmt.Errorf("onnxenc: output %q is %s; pooling %q needs a float tensor of rank %d", e.opts.OutputName, s, e.opts.Pooling, want)
	}
	return nil
}

func describe(names []string, shapes []onnx.DynamicShape) string {
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = fmt.Sprintf("%q %s", n, shapes[i])
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

// Tokenize implements model.Encoder; text is truncated to MaxTokens.
func (e *Encoder) Tokenize(text string) ([]int32, error) {
	ids, err := e.tok.Encode(text)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", model.ErrUntokenizable, err)
	}
	return ids, nil
}

// Dim implements model.Encoder.
func (e *Encoder) Dim() int { return e.dim }

// MaxTokens implements model.Encoder.
func (e *Encoder) MaxTokens() int { return e.opts.MaxTokens }

// Embed implements model.Encoder.
func (e *Encoder) Embed(ctx context.Context, batch [][]int32) ([][]float32, error) {
	for i, seq := range batch {
		if len(seq) == 0 || len(seq) > e.opts.MaxTokens {
			return nil, fmt.Errorf("onnxenc: sequence %d has %d tokens, want 1 to %d", i, len(seq), e.opts.MaxTokens)
		}
		for _, id := range seq {
			if id < 0 || int(id) >= e.numIDs {
				return nil, fmt.Errorf("onnxenc: sequence %d holds token id %d outside the vocabulary of %d", i, id, e.numIDs)
			}
		}
	}
	e.closeMu.RLock()
	defer e.closeMu.RUnlock()
	if e.closed {
		return nil, errClosed
	}
	return e.shapes.Run(ctx, batch, e.opts.MaxTokens, e.runChunk)
}

// Close implements model.Encoder: it drops the compiled graphs, after
// running Embed calls finish.
func (e *Encoder) Close() error {
	e.closeMu.Lock()
	defer e.closeMu.Unlock()
	if e.closed {
		return nil
	}
	e.closed = true
	e.mu.Lock()
	defer e.mu.Unlock()
	e.release()
	return nil
}

// release frees the compiled buckets and the weights (on XLA, device
// memory), with e.mu held or before e is shared.
func (e *Encoder) release() {
	for _, ex := range e.execs {
		ex.Finalize()
	}
	e.execs = nil
	if e.weights != nil {
		e.weights.Finalize()
		e.weights = nil
	}
}

// catch turns a panic of the graph-building libraries into an error.
func catch(fn func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			if re, ok := r.(error); ok {
				err = re
			} else {
				err = fmt.Errorf("%v", r)
			}
		}
	}()
	return fn()
}
