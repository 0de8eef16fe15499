// Package loadgen is `infergate bench`: a load generator for the engine in
// the spirit of Triton's perf_analyzer. It drives POST /v1/embeddings
// closed-loop (a fixed number of concurrent clients, each sending its next
// request when the last answered) or open-loop (Poisson arrivals at a fixed
// rate, latency measured from the scheduled send time so that a slow
// server cannot hide queueing), and measures the runtime's own throughput
// in-process at the same batch sizes (the ceiling the engine is compared
// with).
//
// Every run warms up, then measures back-to-back windows until the last
// three agree on throughput and mean latency within the stability margin
// (perf_analyzer's rule), and reports those three windows together.
package loadgen

import (
	"context"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"
)

// Options shape every measurement.
type Options struct {
	// Warmup runs load without measuring. Default 2s.
	Warmup time.Duration
	// Window is one measurement window. Default 4s.
	Window time.Duration
	// Stability is the largest relative spread of throughput and mean
	// latency across the last three windows for a stable result.
	// Default 0.1 (perf_analyzer's 10%).
	Stability float64
	// MaxWindows bounds the windows; a result still unstable after them
	// is reported with Stable false. Default 8.
	MaxWindows int
}

func (o *Options) setDefaults() {
	if o.Warmup == 0 {
		o.Warmup = 2 * time.Second
	}
	if o.Window == 0 {
		o.Window = 4 * time.Second
	}
	if o.Stability == 0 {
		o.Stability = 0.1
	}
	if o.MaxWindows < 3 {
		o.MaxWindows = 8
	}
}

// Result is one measured load point.
type Result struct {
	// Mode names what was measured: "dynamic", "unbatched", "ceiling", …
	Mode string `json:"mode"`
	// Load is "concurrency", "rate" or "batch" (ceiling).
	Load        string  `json:"load"`
	Concurrency int     `json:"concurrency,omitempty"`
	Rate        float64 `json:"rate,omitempty"`
	// BatchSize is the ceiling's batch size.
	BatchSize int `json:"batch_size,omitempty"`
	// Requests and Errors count what completed in the reported windows.
	Requests int `json:"requests"`
	Errors   int `json:"errors"`
	// Throughput is items (input texts) per second.
	Throughput float64 `json:"throughput"`
	// Latencies are per request (per batch for the ceiling), in ms.
	MeanMs float64 `json:"mean_ms"`
	P50Ms  float64 `json:"p50_ms"`
	P90Ms  float64 `json:"p90_ms"`
	P95Ms  float64 `json:"p95_ms"`
	P99Ms  float64 `json:"p99_ms"`
	// CPUSeconds is the CPU time this process used per second of the
	// reported windows (at most the core count), and ItemsPerCPUSecond
	// the items computed per CPU-second: with the engine in-process, the
	// cost of serving an item whatever else the machine runs.
	CPUSeconds        float64 `json:"cpu_seconds_per_second,omitempty"`
	ItemsPerCPUSecond float64 `json:"items_per_cpu_second,omitempty"`
	// MeanBatch is the engine's mean items per batch over the reported
	// windows, when its /metrics could be read.
	MeanBatch float64 `json:"mean_batch,omitempty"`
	// QueueMs is the engine's mean wait of a request in its queue, and
	// BatchMs its mean run time of a batch, in ms: with MeanMs they show
	// where a request's time goes (the rest is HTTP, JSON and the client).
	QueueMs float64 `json:"engine_queue_ms,omitempty"`
	BatchMs float64 `json:"engine_batch_ms,omitempty"`
	Windows int     `json:"windows"`
	Stable  bool    `json:"stable"`
}

// sample is one completed request (or ceiling batch).
type sample struct {
	end     time.Time
	latency time.Duration
	items   int
	ok      bool
}

// recorder collects samples from many goroutines.
type recorder struct {
	mu      sync.Mutex
	samples []sample
}

func (r *recorder) add(s sample) {
	r.mu.Lock()
	r.samples = append(r.samples, s)
	r.mu.Unlock()
}

// between returns the samples that ended in [from, to).
func (r *recorder) between(from, to time.Time) []sample {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []sample
	for _, s := range r.samples {
		if !s.end.Before(from) && s.end.Before(to) {
			out = append(out, s)
		}
	}
	return out
}

// window is one measurement window's summary.
type window struct {
	from, to time.Time
	cpu      time.Duration // process CPU time used during the window
	samples  []sample
	tput     float64
	mean     time.Duration
}

func summarize(from, to time.Time, samples []sample) window {
	w := window{from: from, to: to, samples: samples}
	var items int
	var total time.Duration
	n := 0
	for _, s := range samples {
		if s.ok {
			items += s.items
			total += s.latency
			n++
		}
	}
	w.tput = float64(items) / to.Sub(from).Seconds()
	if n > 0 {
		w.mean = total / time.Duration(n)
	}
	return w
}

// stable reports whether ws agree within margin on throughput and mean
// latency.
func stable(ws []window, margin float64) bool {
	spread := func(vals []float64) bool {
		lo, hi := slices.Min(vals), slices.Max(vals)
		avg := (lo + hi) / 2
		return avg > 0 && (hi-lo)/2 <= margin*avg
	}
	var tput, lat []float64
	for _, w := range ws {
		tput = append(tput, w.tput)
		lat = append(lat, float64(w.mean))
	}
	return spread(tput) && spread(lat)
}

// measure runs load (started by start, stopped by the returned func)
// through warm-up and windows, and summarizes the last three. between
// windows, onWindow (may be nil) is called with each window's bounds so
// callers can read server-side counters.
func measure(ctx context.Context, o Options, start func(rec *recorder) (stop func())) (Result, []window, error) {
	o.setDefaults()
	rec := &recorder{}
	stop := start(rec)
	defer stop()
	if err := sleep(ctx, o.Warmup); err != nil {
		return Result{}, nil, err
	}
	var ws []window
	for len(ws) < o.MaxWindows {
		from, cpu0 := time.Now(), processCPU()
		if err := sleep(ctx, o.Window); err != nil {
			return Result{}, nil, err
		}
		to, cpu1 := time.Now(), processCPU()
		w := summarize(from, to, rec.between(from, to))
		w.cpu = cpu1 - cpu0
		ws = append(ws, w)
		if len(ws) >= 3 && stable(ws[len(ws)-3:], o.Stability) {
			break
		}
	}
	last := ws[max(0, len(ws)-3):]
	res := combine(last)
	res.Windows = len(ws)
	res.Stable = len(ws) >= 3 && stable(last, o.Stability)
	return res, last, nil
}

// combine merges windows into one result with percentiles over all their
// successful samples.
func combine(ws []window) Result {
	var (
		lats  []time.Duration
		items int
		res   Result
		span  time.Duration
		total time.Duration
		cpu   time.Duration
	)
	for _, w := range ws {
		span += w.to.Sub(w.from)
		cpu += w.cpu
		for _, s := range w.samples {
			res.Requests++
			if !s.ok {
				res.Errors++
				continue
			}
			items += s.items
			lats = append(lats, s.latency)
			total += s.latency
		}
	}
	if span > 0 {
		res.Throughput = float64(items) / span.Seconds()
		res.CPUSeconds = cpu.Seconds() / span.Seconds()
	}
	if cpu > 0 {
		res.ItemsPerCPUSecond = float64(items) / cpu.Seconds()
	}
	if len(lats) == 0 {
		return res
	}
	slices.Sort(lats)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	res.MeanMs = ms(total / time.Duration(len(lats)))
	res.P50Ms = ms(percentile(lats, 50))
	res.P90Ms = ms(percentile(lats, 90))
	res.P95Ms = ms(percentile(lats, 95))
	res.P99Ms = ms(percentile(lats, 99))
	return res
}

// percentile is the nearest-rank percentile of sorted values.
func percentile(sorted []time.Duration, p float64) time.Duration {
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	return sorted[max(0, min(rank, len(sorted))-1)]
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Corpus returns n distinct English sentences of 8 to 20 words, so that no
// cache in front of or inside the engine can answer a repeat.
func Corpus(n int) []string {
	subjects := []string{"The new billing service", "Our support team", "A customer in Berlin", "The mobile app", "The quarterly report",
		"My landlord", "The search engine", "A junior developer", "The train to Lyon", "The weather forecast"}
	verbs := []string{"explains", "changes", "delays", "summarises", "questions", "improves", "breaks", "describes"}
	objects := []string{"the refund policy for annual plans", "how to reset a forgotten password", "the cost of shipping to Canada",
		"why the invoice shows two charges", "the steps to export all my data", "the difference between the free and pro tiers",
		"what happens when a payment fails twice", "the opening hours during public holidays"}
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s %s %s, ticket %d.", subjects[i%len(subjects)], verbs[(i/len(subjects))%len(verbs)], objects[(i/7)%len(objects)], i)
	}
	return out
}
