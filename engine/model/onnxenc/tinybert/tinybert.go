// Package tinybert builds small BERT-shaped encoders with seeded random
// weights: as an ONNX file shaped like a HuggingFace BertModel exported by
// the TorchScript-based torch.onnx.export (opset 17, int64 inputs, dynamic
// batch and sequence axes, state-dict weight names), optionally with its
// weights in an external data file, and as a float64 reference forward pass
// written independently of any ONNX runtime. Tests and benchmarks of the ONNX runtime use both to
// prove it computes the right numbers without downloading a model.
package tinybert

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
)

// Config sizes the encoder; the zero value of a field takes the default
// noted beside it.
type Config struct {
	VocabSize    int     // required
	Hidden       int     // 32
	Layers       int     // 2
	Heads        int     // 4
	Intermediate int     // 4 * Hidden
	MaxPositions int     // 512
	TypeVocab    int     // 2
	LayerNormEps float64 // 1e-12, as BERT
	Seed         uint64
	// NoTokenTypeInput leaves token_type_ids out of the graph's inputs; the
	// graph then uses zeros, like a BertModel exported without them.
	NoTokenTypeInput bool
	// NoAttentionMaskInput leaves attention_mask out of the graph's inputs;
	// every position is attended, like a model exported with input_ids
	// only.
	NoAttentionMaskInput bool
	// TorchScriptQuirks adds what torch.onnx.export(dynamo=False) emits
	// and the dynamo exporter does not: an empty int64 Constant, with no
	// data field, concatenated into a Reshape's target shape.
	TorchScriptQuirks bool
}

// Model is one encoder: its configuration and weights, named as in a
// HuggingFace BertModel state dict.
type Model struct {
	Config
	Word, Position, TokenType *Matrix
	EmbNormGamma, EmbNormBeta []float64
	Layer                     []Layer
	PoolerW                   *Matrix
	PoolerB                   []float64
}

// Layer is one transformer block.
type Layer struct {
	Q, K, V, AttnOut     *Matrix // [Hidden, Hidden], applied as x @ W
	QB, KB, VB, AttnOutB []float64
	AttnNormG, AttnNormB []float64
	Inter, Out           *Matrix // [Hidden, Intermediate], [Intermediate, Hidden]
	InterB, OutB         []float64
	OutNormG, OutNormB   []float64
}

// Matrix is a dense row-major matrix.
type Matrix struct {
	Rows, Cols int
	Data       []float64
}

// At returns element (r, c).
func (m *Matrix) At(r, c int) float64 { return m.Data[r*m.Cols+c] }

// New draws a model's weights from cfg.Seed.
func New(cfg Config) (*Model, error) {
	if cfg.VocabSize <= 0 {
		return nil, errors.New("tinybert: VocabSize must be positive")
	}
	setDefault := func(v *int, def int) {
		if *v == 0 {
			*v = def
		}
	}
	setDefault(&cfg.Hidden, 32)
	setDefault(&cfg.Layers, 2)
	setDefault(&cfg.Heads, 4)
	setDefault(&cfg.Intermediate, 4*cfg.Hidden)
	setDefault(&cfg.MaxPositions, 512)
	setDefault(&cfg.TypeVocab, 2)
	if cfg.LayerNormEps == 0 {
		cfg.LayerNormEps = 1e-12
	}
	if cfg.Hidden%cfg.Heads != 0 {
		return nil, fmt.Errorf("tinybert: Hidden %d is not a multiple of Heads %d", cfg.Hidden, cfg.Heads)
	}
	rng := rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15))
	normal := func(n int, std float64) []float64 {
		v := make([]float64, n)
		for i := range v {
			// Round through float32 so the ONNX file holds exactly these values.
			v[i] = float64(float32(rng.NormFloat64() * std))
		}
		return v
	}
	around := func(n int, center float64) []float64 {
		v := normal(n, 0.1)
		for i := range v {
			v[i] = float64(float32(v[i] + center))
		}
		return v
	}
	matrix := func(rows, cols int, std float64) *Matrix {
		return &Matrix{Rows: rows, Cols: cols, Data: normal(rows*cols, std)}
	}
	h, inter := cfg.Hidden, cfg.Intermediate
	wStd, iStd := 1/math.Sqrt(float64(h)), 1/math.Sqrt(float64(inter))
	m := &Model{
		Config:       cfg,
		Word:         matrix(cfg.VocabSize, h, 1),
		Position:     matrix(cfg.MaxPositions, h, 0.5),
		TokenType:    matrix(cfg.TypeVocab, h, 0.5),
		EmbNormGamma: around(h, 1),
		EmbNormBeta:  normal(h, 0.1),
		PoolerW:      matrix(h, h, wStd),
		PoolerB:      normal(h, 0.1),
	}
	for range cfg.Layers {
		m.Layer = append(m.Layer, Layer{
			Q: matrix(h, h, wStd), K: matrix(h, h, wStd), V: matrix(h, h, wStd), AttnOut: matrix(h, h, wStd),
			QB: normal(h, 0.1), KB: normal(h, 0.1), VB: normal(h, 0.1), AttnOutB: normal(h, 0.1),
			AttnNormG: around(h, 1), AttnNormB: normal(h, 0.1),
			Inter: matrix(h, inter, wStd), InterB: normal(inter, 0.1),
			Out: matrix(inter, h, iStd), OutB: normal(h, 0.1),
			OutNormG: around(h, 1), OutNormB: normal(h, 0.1),
		})
	}
	return m, nil
}
