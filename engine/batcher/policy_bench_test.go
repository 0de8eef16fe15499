package batcher

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// simDevice stands in for a GPU: each batch spends host time (padding,
// copies; overlaps with other batches) and device time (one batch at a
// time; grows slowly with the batch), so two workers can keep it busy
// while one alone leaves it idle during its host time.
type simDevice struct {
	mu         sync.Mutex
	host       time.Duration
	base, item time.Duration
}

func (d *simDevice) run(_ context.Context, batch [][]int32) ([][]float32, error) {
	time.Sleep(d.host)
	d.mu.Lock()
	time.Sleep(d.base + time.Duration(len(batch))*d.item)
	d.mu.Unlock()
	return make([][]float32, len(batch)), nil
}

// BenchmarkPolicyOnSimulatedDevice compares queue delays under closed-loop
// load with the ceiling: the same workers running full batches back to
// back. It reports items/s, the mean batch, and the share of the ceiling
// at that batch size.
func BenchmarkPolicyOnSimulatedDevice(b *testing.B) {
	dev := &simDevice{host: 400 * time.Microsecond, base: 300 * time.Microsecond, item: 8 * time.Microsecond}
	const workers, clients, maxBatch = 2, 256, 128
	for _, rtt := range []time.Duration{0, time.Millisecond, 3 * time.Millisecond} {
		for _, delay := range []time.Duration{0, 2 * time.Millisecond} {
			b.Run(fmt.Sprintf("rtt=%v/delay=%v", rtt, delay), func(b *testing.B) {
				bt, err := New(Config{Model: "sim", MaxBatchSize: maxBatch, MaxBatchTokens: 1 << 20, MaxQueueDelay: delay,
					QueueSize: 4096, Workers: workers, PriorityLevels: 1}, dev.run, nil)
				if err != nil {
					b.Fatal(err)
				}
				defer bt.Close(context.Background())
				var items, batches atomic.Int64
				run := bt.run
				bt.run = func(ctx context.Context, batch [][]int32) ([][]float32, error) {
					batches.Add(1)
					return run(ctx, batch)
				}
				var left atomic.Int64
				left.Store(int64(b.N))
				start := time.Now()
				var wg sync.WaitGroup
				for range clients {
					wg.Go(func() {
						for left.Add(-1) >= 0 {
							if _, err := bt.Do(context.Background(), [][]int32{{1, 2, 3}}, 0); err != nil {
								b.Error(err)
								return
							}
							items.Add(1)
							time.Sleep(rtt) // the response's way back and the next request's way in
						}
					})
				}
				wg.Wait()
				rate := float64(items.Load()) / time.Since(start).Seconds()
				mean := float64(items.Load()) / float64(max(1, batches.Load()))
				b.ReportMetric(rate, "items/s")
				b.ReportMetric(mean, "mean-batch")
				b.ReportMetric(100*rate/simCeiling(dev, workers, int(mean+0.5)), "%-of-ceiling")
			})
		}
	}
}

// simCeiling is the device's throughput with workers running batches of
// size back to back.
func simCeiling(dev *simDevice, workers, size int) float64 {
	var n atomic.Int64
	stop := time.Now().Add(300 * time.Millisecond)
	start := time.Now()
	var wg sync.WaitGroup
	batch := make([][]int32, size)
	for range workers {
		wg.Go(func() {
			for time.Now().Before(stop) {
				_, _ = dev.run(context.Background(), batch)
				n.Add(int64(size))
			}
		})
	}
	wg.Wait()
	return float64(n.Load()) / time.Since(start).Seconds()
}
