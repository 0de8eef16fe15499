package model

import (
	"context"
	"math/rand/v2"
	"slices"
	"testing"
)

func simpleGoShapes(t *testing.T, smallest, maxTokens int) Shapes {
	t.Helper()
	b, err := NewBackend("")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Finalize)
	return ShapesFor(b, smallest, maxTokens)
}

func TestShapeLengths(t *testing.T) {
	for _, tc := range []struct {
		smallest, maxTokens int
		want                []int
	}{
		// Quarter steps, so padding never wastes more than a fifth.
		{8, 128, []int{8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128}},
		// The model's limit ends the list even between steps.
		{16, 50, []int{16, 20, 24, 28, 32, 40, 48, 50}},
		{16, 16, []int{16}},
		// A limit under the smallest bucket is the only bucket.
		{16, 8, []int{8}},
	} {
		s := simpleGoShapes(t, tc.smallest, tc.maxTokens)
		if !slices.Equal(s.Length, tc.want) || !s.Split {
			t.Errorf("SimpleGo shapes(%d, %d): lengths %v split %v, want %v and split", tc.smallest, tc.maxTokens, s.Length, s.Split, tc.want)
		}
	}
	// Any other backend (nil stands for XLA here) compiles each bucket for
	// seconds: lengths double and batches run whole.
	if s := ShapesFor(nil, 16, 100); !slices.Equal(s.Length, []int{16, 32, 64, 100}) || s.Split {
		t.Errorf("XLA shapes: lengths %v split %v", s.Length, s.Split)
	}
}

func TestBucket(t *testing.T) {
	s := Shapes{Batch: BatchBuckets, Length: []int{8, 10, 12, 16}}
	for _, tc := range [][4]int{{1, 1, 1, 8}, {3, 9, 4, 10}, {17, 13, 32, 16}, {200, 40, 128, 16}} {
		if rows, length := s.Bucket(tc[0], tc[1]); rows != tc[2] || length != tc[3] {
			t.Errorf("Bucket(%d, %d) = %d, %d; want %d, %d", tc[0], tc[1], rows, length, tc[2], tc[3])
		}
	}
}

// paddedWork is what a plan costs: padded row-tokens plus perExecution
// for each execution.
func paddedWork(s Shapes, lengths []int, plan [][]int) int {
	work := 0
	for _, run := range plan {
		longest := 0
		for _, i := range run {
			longest = max(longest, lengths[i])
		}
		rows, length := s.Bucket(len(run), longest)
		work += perExecution + rows*length
	}
	return work
}

func TestPlanCoversTheBatchOnceWithinTheBuckets(t *testing.T) {
	split := simpleGoShapes(t, 8, 128)
	whole := ShapesFor(nil, 8, 128)
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{0, 1, 5, 32, 129, 300} {
		lengths := make([]int, n)
		for i := range lengths {
			lengths[i] = 1 + rng.IntN(128)
		}
		for _, s := range []Shapes{split, whole} {
			plan := s.Plan(lengths)
			seen := make([]bool, n)
			for _, run := range plan {
				if len(run) == 0 || len(run) > 128 {
					t.Fatalf("split=%v n=%d: a run of %d", s.Split, n, len(run))
				}
				for _, i := range run {
					if seen[i] {
						t.Fatalf("split=%v n=%d: index %d twice", s.Split, n, i)
					}
					seen[i] = true
				}
			}
			if slices.Contains(seen, false) {
				t.Fatalf("split=%v n=%d: an index is missing from %v", s.Split, n, plan)
			}
		}
		// Without Split the chunks keep the batch's order.
		if plan := whole.Plan(lengths); n > 0 && (plan[0][0] != 0 || len(plan) != (n+127)/128) {
			t.Errorf("n=%d: unsplit plan %v", n, plan)
		}
		// The split plan never costs more than running the batch whole.
		if n > 0 && paddedWork(split, lengths, split.Plan(lengths)) > paddedWork(split, lengths, whole.Plan(lengths)) {
			t.Errorf("n=%d: the split plan costs more than the unsplit one", n)
		}
	}
}

func TestPlanSplitsOnlyWhenItSavesWork(t *testing.T) {
	s := simpleGoShapes(t, 8, 128)
	// Similar lengths: one execution.
	if plan := s.Plan([]int{17, 19, 20, 18}); len(plan) != 1 {
		t.Errorf("similar lengths split into %v", plan)
	}
	// 16 short and 16 long: two executions, short ones together.
	lengths := make([]int, 32)
	for i := range lengths {
		lengths[i] = 8
		if i%2 == 1 {
			lengths[i] = 120
		}
	}
	plan := s.Plan(lengths)
	if len(plan) != 2 || len(plan[0]) != 16 || lengths[plan[0][0]] != 8 || lengths[plan[1][0]] != 120 {
		t.Errorf("8s and 120s planned as %v", plan)
	}
}

// Run hands each planned execution its sequences and puts the vectors back
// in the batch's order; it stops at a canceled context.
func TestRunKeepsTheBatchOrder(t *testing.T) {
	s := simpleGoShapes(t, 8, 128)
	batch := [][]int32{make([]int32, 120), make([]int32, 3), make([]int32, 200), make([]int32, 5)}
	var executions int
	out, err := s.Run(context.Background(), batch, 128, func(seqs [][]int32) ([][]float32, error) {
		executions++
		vecs := make([][]float32, len(seqs))
		for i, seq := range seqs {
			vecs[i] = []float32{float32(len(seq))}
		}
		return vecs, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for i, seq := range batch {
		if out[i][0] != float32(len(seq)) {
			t.Errorf("vector %d is that of a %v-token sequence, want %d", i, out[i][0], len(seq))
		}
	}
	if executions != 2 {
		t.Errorf("%d executions for two short and two long sequences, want 2", executions)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Run(ctx, batch, 128, nil); err != context.Canceled {
		t.Errorf("canceled: err = %v", err)
	}
}
