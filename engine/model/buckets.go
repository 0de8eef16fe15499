package model

import (
	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/backends/simplego"
)

// BatchBuckets are the padded batch sizes the encoders compile; a larger
// batch runs as chunks of the last. The batcher's default preferred batch
// sizes are the same powers of two, so a formed batch fills its bucket.
var BatchBuckets = []int{1, 2, 4, 8, 16, 32, 64, 128}

// LengthBuckets returns the padded sequence lengths an encoder on backend
// compiles: from smallest up to maxTokens, which is always the last.
//
// How fine they are depends on what a bucket costs. On SimpleGo a graph
// compiles in milliseconds and a batch's run time grows with its padded
// length (measured on USE-Lite at 32 rows: 16 tokens 0.37 s, 20 tokens
// 0.47 s, 32 tokens 0.73 s), so each power of two is split in quarters and
// padding wastes at most a fifth of the work. On XLA each bucket takes
// seconds to compile and an accelerator runs a short padded row almost as
// fast as a shorter one, so lengths double.
func LengthBuckets(backend backends.Backend, smallest, maxTokens int) []int {
	_, cheapCompile := backend.(*simplego.Backend)
	var out []int
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
			out = append(out, l)
		}
	}
	return append(out, maxTokens)
}

// BucketFor is the smallest of buckets (ascending) that holds n, or the
// largest when none does.
func BucketFor(buckets []int, n int) int {
	for _, b := range buckets {
		if b >= n {
			return b
		}
	}
	return buckets[len(buckets)-1]
}
