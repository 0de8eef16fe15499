package model

import (
	"cmp"
	"context"
	"slices"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/backends/simplego"
)

// BatchBuckets are the padded batch sizes the encoders compile; a larger
// batch runs as chunks of the last. The batcher's default preferred batch
// sizes are the same powers of two, so a formed batch fills its bucket.
var BatchBuckets = []int{1, 2, 4, 8, 16, 32, 64, 128}

// Shapes is how an encoder on one backend pads what it runs: each
// execution is padded up to a batch bucket and a length bucket, so only
// len(Batch) × len(Length) graphs are ever compiled.
//
// How fine the lengths are, and whether a batch is split, depends on what
// padding costs. On SimpleGo a graph compiles in milliseconds and a run's
// time grows with its padded rows × tokens (measured on USE-Lite at 32
// rows: 16 tokens 0.37 s, 20 tokens 0.47 s, 32 tokens 0.73 s; at 8
// tokens, 32 rows 0.19 s and one row 17 ms), so lengths step by quarters
// of each power of two and a batch of mixed lengths runs as a few
// executions of similar lengths. On XLA each bucket takes seconds to
// compile and an accelerator runs a padded row almost as fast as a shorter
// one, so lengths double and a batch runs whole.
type Shapes struct {
	Batch  []int // BatchBuckets
	Length []int // ascending, the model's limit last
	// Split plans a batch as executions of similar lengths (Plan).
	Split bool
}

// perExecution is a SimpleGo execution's fixed cost in padded row-tokens:
// one row of 8 tokens takes 17 ms, the time of 24 row-tokens in a batch of
// 32, so 16 more than its own 8.
const perExecution = 16

// ShapesFor returns the shapes of an encoder on backend whose sequences
// are padded to at least smallest tokens and hold at most maxTokens.
func ShapesFor(backend backends.Backend, smallest, maxTokens int) Shapes {
	_, cheapCompile := backend.(*simplego.Backend)
	s := Shapes{Batch: BatchBuckets, Split: cheapCompile}
	for octave := smallest; octave < maxTokens; octave *= 2 {
		steps := []int{octave}
		if cheapCompile && octave >= 8 {
			q := octave / 4
			steps = []int{octave, octave + q, octave + 2*q, octave + 3*q}
		}
		for _, l := range steps {
			if l >= maxTokens {
				break
			}
			s.Length = append(s.Length, l)
		}
	}
	s.Length = append(s.Length, maxTokens)
	return s
}

// Bucket is the padded (rows, length) shape that holds rows sequences of
// at most longest tokens; rows beyond the largest batch bucket do not fit.
func (s Shapes) Bucket(rows, longest int) (int, int) {
	return bucketFor(s.Batch, rows), bucketFor(s.Length, longest)
}

// Plan splits a batch whose sequences have the given lengths into
// executions, as lists of indices into lengths; every execution fits the
// largest batch bucket and the lists together hold every index once.
// Without Split they are consecutive chunks in order. With Split they are
// runs of the sequences sorted by length, chosen to minimise padded
// row-tokens plus perExecution for each run.
func (s Shapes) Plan(lengths []int) [][]int {
	maxRows := s.Batch[len(s.Batch)-1]
	order := make([]int, len(lengths))
	for i := range order {
		order[i] = i
	}
	if !s.Split {
		return chunks(order, maxRows)
	}
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(lengths[a], lengths[b]) })
	// best[j] is the least cost of running order[:j]; from[j] where its
	// last run starts.
	n := len(order)
	best, from := make([]int, n+1), make([]int, n+1)
	for j := 1; j <= n; j++ {
		best[j] = -1
		_, length := s.Bucket(1, lengths[order[j-1]])
		for i := j - 1; i >= max(0, j-maxRows); i-- {
			rows, _ := s.Bucket(j-i, 1)
			if c := best[i] + perExecution + rows*length; best[j] < 0 || c < best[j] {
				best[j], from[j] = c, i
			}
		}
	}
	var runs [][]int
	for j := n; j > 0; j = from[j] {
		runs = append(runs, order[from[j]:j])
	}
	slices.Reverse(runs)
	return runs
}

// Run embeds batch as the executions Plan gives, calling execute once per
// execution with its sequences, and returns the vectors in batch's order.
// Sequences count as at most maxTokens long, as the encoder truncates.
func (s Shapes) Run(ctx context.Context, batch [][]int32, maxTokens int, execute func([][]int32) ([][]float32, error)) ([][]float32, error) {
	lengths := make([]int, len(batch))
	for i, seq := range batch {
		lengths[i] = min(len(seq), maxTokens)
	}
	out := make([][]float32, len(batch))
	for _, run := range s.Plan(lengths) {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		seqs := make([][]int32, len(run))
		for k, i := range run {
			seqs[k] = batch[i]
		}
		vecs, err := execute(seqs)
		if err != nil {
			return nil, err
		}
		for k, i := range run {
			out[i] = vecs[k]
		}
	}
	return out, nil
}

func chunks(order []int, size int) [][]int {
	var out [][]int
	for start := 0; start < len(order); start += size {
		out = append(out, order[start:min(start+size, len(order))])
	}
	return out
}

// bucketFor is the smallest of buckets (ascending) that holds n, or the
// largest when none does.
func bucketFor(buckets []int, n int) int {
	for _, b := range buckets {
		if b >= n {
			return b
		}
	}
	return buckets[len(buckets)-1]
}
