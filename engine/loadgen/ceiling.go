package loadgen

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/infergate/infergate/engine/model"
)

// Ceiling measures the runtime alone: workers goroutines calling
// enc.Embed back to back with batches of batchSize of the texts,
// tokenized up front, with no HTTP, JSON or queueing. It is the best
// throughput the engine could reach at that batch size.
func Ceiling(ctx context.Context, o Options, enc model.Encoder, texts []string, batchSize, workers int) (Result, error) {
	if batchSize < 1 || workers < 1 || len(texts) == 0 {
		return Result{}, fmt.Errorf("loadgen: ceiling needs texts, batch size and workers ≥ 1")
	}
	seqs := make([][]int32, len(texts))
	for i, t := range texts {
		ids, err := enc.Tokenize(t)
		if err != nil {
			return Result{}, fmt.Errorf("loadgen: tokenizing %q: %w", t, err)
		}
		seqs[i] = ids[:min(len(ids), enc.MaxTokens())]
	}
	var (
		errMu  sync.Mutex
		runErr error
	)
	res, _, err := measure(ctx, o, func(rec *recorder) func() {
		lctx, cancel := context.WithCancel(ctx)
		var wg sync.WaitGroup
		for w := range workers {
			wg.Go(func() {
				next := w * batchSize
				for lctx.Err() == nil {
					batch := make([][]int32, batchSize)
					for i := range batch {
						batch[i] = seqs[next%len(seqs)]
						next++
					}
					start := time.Now()
					_, err := enc.Embed(lctx, batch)
					end := time.Now()
					if err != nil && lctx.Err() == nil {
						errMu.Lock()
						runErr = err
						errMu.Unlock()
					}
					rec.add(sample{end: end, latency: end.Sub(start), items: batchSize, ok: err == nil})
				}
			})
		}
		return func() { cancel(); wg.Wait() }
	})
	if err == nil {
		errMu.Lock()
		err = runErr
		errMu.Unlock()
	}
	res.Mode, res.Load, res.BatchSize = "ceiling", "batch", batchSize
	return res, err
}
