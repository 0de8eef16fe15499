package tinybert

import (
	"fmt"
	"math"
)

// Forward runs one sequence through the encoder in float64 and returns its
// last hidden state, [len(ids)][Hidden]. typeIDs may be nil (all zeros);
// mask may be nil (all ones), otherwise keys where it is 0 are not attended.
func (m *Model) Forward(ids, typeIDs, mask []int) ([][]float64, error) {
	n, h := len(ids), m.Hidden
	if n > m.MaxPositions {
		return nil, fmt.Errorf("tinybert: %d tokens exceed %d positions", n, m.MaxPositions)
	}
	x := make([][]float64, n)
	for i, id := range ids {
		if id < 0 || id >= m.VocabSize {
			return nil, fmt.Errorf("tinybert: token id %d outside vocab of %d", id, m.VocabSize)
		}
		tt := 0
		if typeIDs != nil {
			tt = typeIDs[i]
		}
		x[i] = make([]float64, h)
		for j := range h {
			x[i][j] = m.Word.At(id, j) + m.Position.At(i, j) + m.TokenType.At(tt, j)
		}
		layerNorm(x[i], m.EmbNormGamma, m.EmbNormBeta, m.LayerNormEps)
	}
	for _, l := range m.Layer {
		attn := m.selfAttention(&l, x, mask)
		for i := range x {
			o := affine(attn[i], l.AttnOut, l.AttnOutB)
			for j := range o {
				o[j] += x[i][j]
			}
			layerNorm(o, l.AttnNormG, l.AttnNormB, m.LayerNormEps)
			inter := affine(o, l.Inter, l.InterB)
			for j, v := range inter {
				inter[j] = 0.5 * v * (1 + math.Erf(v/math.Sqrt2))
			}
			out := affine(inter, l.Out, l.OutB)
			for j := range out {
				out[j] += o[j]
			}
			layerNorm(out, l.OutNormG, l.OutNormB, m.LayerNormEps)
			x[i] = out
		}
	}
	return x, nil
}

// Pooled is BertModel's pooler_output: tanh(dense(first token)).
func (m *Model) Pooled(hidden [][]float64) []float64 {
	p := affine(hidden[0], m.PoolerW, m.PoolerB)
	for i, v := range p {
		p[i] = math.Tanh(v)
	}
	return p
}

func (m *Model) selfAttention(l *Layer, x [][]float64, mask []int) [][]float64 {
	n, heads := len(x), m.Heads
	dh := m.Hidden / heads
	q, k, v := make([][]float64, n), make([][]float64, n), make([][]float64, n)
	for i := range x {
		q[i], k[i], v[i] = affine(x[i], l.Q, l.QB), affine(x[i], l.K, l.KB), affine(x[i], l.V, l.VB)
	}
	out := make([][]float64, n)
	scale := 1 / math.Sqrt(float64(dh))
	for i := range n {
		out[i] = make([]float64, m.Hidden)
		for hd := range heads {
			lo := hd * dh
			scores := make([]float64, n)
			maxScore := math.Inf(-1)
			for j := range n {
				if mask != nil && mask[j] == 0 {
					continue
				}
				s := 0.0
				for d := range dh {
					s += q[i][lo+d] * k[j][lo+d]
				}
				scores[j] = s * scale
				maxScore = math.Max(maxScore, scores[j])
			}
			sum := 0.0
			for j := range n {
				if mask != nil && mask[j] == 0 {
					scores[j] = 0
					continue
				}
				scores[j] = math.Exp(scores[j] - maxScore)
				sum += scores[j]
			}
			for j := range n {
				p := scores[j] / sum
				for d := range dh {
					out[i][lo+d] += p * v[j][lo+d]
				}
			}
		}
	}
	return out
}

// affine returns x @ w + b.
func affine(x []float64, w *Matrix, b []float64) []float64 {
	out := make([]float64, w.Cols)
	copy(out, b)
	for r, xv := range x {
		row := w.Data[r*w.Cols : (r+1)*w.Cols]
		for c, wv := range row {
			out[c] += xv * wv
		}
	}
	return out
}

func layerNorm(x, gamma, beta []float64, eps float64) {
	mean, variance := 0.0, 0.0
	for _, v := range x {
		mean += v
	}
	mean /= float64(len(x))
	for _, v := range x {
		variance += (v - mean) * (v - mean)
	}
	variance /= float64(len(x))
	inv := 1 / math.Sqrt(variance+eps)
	for i, v := range x {
		x[i] = (v-mean)*inv*gamma[i] + beta[i]
	}
}
