package loadgen

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/infergate/infergate/engine/model"
)

// Sequences tokenizes texts for Ceiling. With tokens > 0 every sequence
// is exactly that long, cut from the texts' token stream laid end to end,
// so that the runtime sees one fixed shape (for comparing with a runtime
// measured at a fixed sequence length); with 0 each text is one sequence.
func Sequences(enc model.Encoder, texts []string, tokens int) ([][]int32, error) {
	if tokens > enc.MaxTokens() {
		return nil, fmt.Errorf("loadgen: %d tokens per sequence: the model takes at most %d", tokens, enc.MaxTokens())
	}
	var seqs [][]int32
	var stream []int32
	for _, t := range texts {
		ids, err := enc.Tokenize(t)
		if err != nil {
			return nil, fmt.Errorf("loadgen: tokenizing %q: %w", t, err)
		}
		if tokens <= 0 {
			seqs = append(seqs, ids[:min(len(ids), enc.MaxTokens())])
			continue
		}
		for stream = append(stream, ids...); len(stream) >= tokens; stream = stream[tokens:] {
			seqs = append(seqs, stream[:tokens:tokens])
		}
	}
	if len(seqs) == 0 {
		return nil, fmt.Errorf("loadgen: the texts hold fewer than %d tokens", tokens)
	}
	return seqs, nil
}

// Ceiling measures the runtime alone: workers goroutines calling
// enc.Embed back to back with batches of batchSize of seqs, with no HTTP,
// JSON, tokenizing or queueing. It is the best throughput the engine could
// reach at that batch size.
func Ceiling(ctx context.Context, o Options, enc model.Encoder, seqs [][]int32, batchSize, workers int) (Result, error) {
	if batchSize < 1 || workers < 1 || len(seqs) == 0 {
		return Result{}, fmt.Errorf("loadgen: ceiling needs sequences, batch size and workers ≥ 1")
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
