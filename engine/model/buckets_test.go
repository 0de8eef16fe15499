package model

import (
	"slices"
	"testing"
)

func TestLengthBuckets(t *testing.T) {
	simpleGo, err := NewBackend("")
	if err != nil {
		t.Fatal(err)
	}
	defer simpleGo.Finalize()
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
		if got := LengthBuckets(simpleGo, tc.smallest, tc.maxTokens); !slices.Equal(got, tc.want) {
			t.Errorf("LengthBuckets(simplego, %d, %d) = %v, want %v", tc.smallest, tc.maxTokens, got, tc.want)
		}
	}
	// Any other backend compiles each bucket for seconds: lengths double.
	if got, want := LengthBuckets(nil, 16, 100), []int{16, 32, 64, 100}; !slices.Equal(got, want) {
		t.Errorf("LengthBuckets(xla, 16, 100) = %v, want %v", got, want)
	}
}

func TestBucketFor(t *testing.T) {
	buckets := []int{8, 10, 12, 16}
	for n, want := range map[int]int{1: 8, 8: 8, 9: 10, 13: 16, 16: 16, 40: 16} {
		if got := BucketFor(buckets, n); got != want {
			t.Errorf("BucketFor(%v, %d) = %d, want %d", buckets, n, got, want)
		}
	}
}
