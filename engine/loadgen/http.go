package loadgen

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Target is an engine's /v1/embeddings endpoint.
type Target struct {
	// URL is the engine's base URL, e.g. http://127.0.0.1:8080.
	URL   string
	Model string
	// Texts are cycled through, InputsPerRequest at a time (default 1),
	// marked with the round after the first so that none repeats.
	Texts            []string
	InputsPerRequest int
	// EncodingFormat is sent as OpenAI's encoding_format when set:
	// "base64" is what the official OpenAI clients ask for.
	EncodingFormat string
	// Client defaults to one with enough idle connections for the load.
	Client *http.Client

	next atomic.Uint64

	mu       sync.Mutex
	own      *http.Client // the default client, for up to ownConns
	ownConns int
}

// client is Client, or one that keeps an idle connection for each of
// conns concurrent requests. It grows with the load: a sweep goes from few
// clients to many, and connections it cannot keep are closed after every
// request and dialed again, which would measure TCP set-up, not the engine.
func (t *Target) client(conns int) *http.Client {
	if t.Client != nil {
		return t.Client
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.own == nil || t.ownConns < conns {
		if t.own != nil {
			t.own.CloseIdleConnections()
		}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConns = conns + 16
		tr.MaxIdleConnsPerHost = conns + 16
		t.own, t.ownConns = &http.Client{Transport: tr, Timeout: 2 * time.Minute}, conns
	}
	return t.own
}

func (t *Target) body() ([]byte, int) {
	n := max(1, t.InputsPerRequest)
	in := make([]string, n)
	for i := range in {
		k := int(t.next.Add(1) - 1)
		in[i] = t.Texts[k%len(t.Texts)]
		if round := k / len(t.Texts); round > 0 {
			// Never repeat a text, so no cache can answer it.
			in[i] += " (" + strconv.Itoa(round) + ")"
		}
	}
	req := map[string]any{"model": t.Model, "input": in}
	if t.EncodingFormat != "" {
		req["encoding_format"] = t.EncodingFormat
	}
	b, _ := json.Marshal(req)
	return b, n
}

// send posts one request and reports whether it got a 200.
func (t *Target) send(ctx context.Context, c *http.Client) (items int, ok bool) {
	body, n := t.body()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.URL+"/v1/embeddings", bytes.NewReader(body))
	if err != nil {
		return n, false
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return n, false
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return n, resp.StatusCode == http.StatusOK
}

// Concurrency measures closed-loop load: c clients, each sending its next
// request as soon as the last one answered.
func (t *Target) Concurrency(ctx context.Context, o Options, c int) (Result, error) {
	client := t.client(c)
	res, err := t.run(ctx, o, func(rec *recorder) func() {
		lctx, cancel := context.WithCancel(ctx)
		var wg sync.WaitGroup
		for range c {
			wg.Go(func() {
				for lctx.Err() == nil {
					start := time.Now()
					items, ok := t.send(lctx, client)
					if lctx.Err() != nil {
						return
					}
					end := time.Now()
					rec.add(sample{end: end, latency: end.Sub(start), items: items, ok: ok})
				}
			})
		}
		return func() { cancel(); wg.Wait() }
	})
	res.Load, res.Concurrency = "concurrency", c
	return res, err
}

// maxOutstanding bounds an open-loop run's requests in flight, so that an
// overloaded engine does not exhaust the generator's memory; arrivals
// beyond it count as errors.
const maxOutstanding = 4096

// Rate measures open-loop load: Poisson arrivals at rate requests per
// second, each latency measured from its scheduled send time.
func (t *Target) Rate(ctx context.Context, o Options, rate float64) (Result, error) {
	if rate <= 0 {
		return Result{}, fmt.Errorf("loadgen: rate %v must be positive", rate)
	}
	client := t.client(256)
	res, err := t.run(ctx, o, func(rec *recorder) func() {
		lctx, cancel := context.WithCancel(ctx)
		var (
			wg       sync.WaitGroup
			inFlight atomic.Int64
		)
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(1, 2))
			next := time.Now()
			for {
				next = next.Add(time.Duration(rng.ExpFloat64() / rate * float64(time.Second)))
				if sleep(lctx, time.Until(next)) != nil {
					return
				}
				scheduled := next
				if inFlight.Load() >= maxOutstanding {
					rec.add(sample{end: time.Now(), items: 1})
					continue
				}
				inFlight.Add(1)
				wg.Go(func() {
					defer inFlight.Add(-1)
					items, ok := t.send(lctx, client)
					if lctx.Err() != nil {
						return
					}
					end := time.Now()
					rec.add(sample{end: end, latency: end.Sub(scheduled), items: items, ok: ok})
				})
			}
		})
		return func() { cancel(); wg.Wait() }
	})
	res.Load, res.Rate = "rate", rate
	return res, err
}

// run measures and adds, from the engine's /metrics over the reported
// windows, its mean batch size, queue wait and batch run time.
func (t *Target) run(ctx context.Context, o Options, start func(*recorder) func()) (Result, error) {
	var (
		mu     sync.Mutex
		scrape []engineCounters
	)
	// Scrape the batch counters at each window edge in the background;
	// the windows are known only afterwards.
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			if b, err := t.engineCounters(sctx); err == nil {
				mu.Lock()
				scrape = append(scrape, b)
				mu.Unlock()
			}
			select {
			case <-tick.C:
			case <-sctx.Done():
				return
			}
		}
	}()
	res, ws, err := measure(ctx, o, start)
	if err != nil || len(ws) == 0 {
		return res, err
	}
	cancel()
	mu.Lock()
	defer mu.Unlock()
	first, last := nearest(scrape, ws[0].from), nearest(scrape, ws[len(ws)-1].to)
	mean := func(name string, scale float64) float64 {
		if n := last.v[name+"_count"] - first.v[name+"_count"]; n > 0 {
			return scale * (last.v[name+"_sum"] - first.v[name+"_sum"]) / n
		}
		return 0
	}
	res.MeanBatch = mean("infergate_engine_batch_size", 1)
	res.QueueMs = mean("infergate_engine_queue_duration_seconds", 1000)
	res.BatchMs = mean("infergate_engine_compute_duration_seconds", 1000)
	return res, nil
}

// engineCounters are the sums and counts of the engine's batch size,
// queue and compute histograms for the target's model, by series name.
type engineCounters struct {
	at time.Time
	v  map[string]float64
}

var engineSeries = []string{
	"infergate_engine_batch_size_sum", "infergate_engine_batch_size_count",
	"infergate_engine_queue_duration_seconds_sum", "infergate_engine_queue_duration_seconds_count",
	"infergate_engine_compute_duration_seconds_sum", "infergate_engine_compute_duration_seconds_count",
}

func nearest(bs []engineCounters, at time.Time) engineCounters {
	var best engineCounters
	bestGap := time.Duration(1<<63 - 1)
	for _, b := range bs {
		gap := b.at.Sub(at)
		if gap < 0 {
			gap = -gap
		}
		if gap < bestGap {
			best, bestGap = b, gap
		}
	}
	return best
}

func (t *Target) engineCounters(ctx context.Context) (engineCounters, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, t.URL+"/metrics", nil)
	if err != nil {
		return engineCounters{}, err
	}
	resp, err := t.client(1).Do(req)
	if err != nil {
		return engineCounters{}, err
	}
	defer resp.Body.Close()
	b := engineCounters{at: time.Now(), v: map[string]float64{}}
	label := fmt.Sprintf(`{model=%q}`, t.Model)
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		for _, name := range engineSeries {
			if v, ok := strings.CutPrefix(line, name+label+" "); ok {
				b.v[name], _ = strconv.ParseFloat(v, 64)
			}
		}
	}
	return b, sc.Err()
}
