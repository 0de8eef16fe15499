package loadgen

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

var quick = Options{Warmup: 50 * time.Millisecond, Window: 100 * time.Millisecond, MaxWindows: 3, Stability: 10}

// fakeEngine answers /v1/embeddings after a short pause and exposes
// batch counters that say every batch held two items.
func fakeEngine(t *testing.T) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var served atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/embeddings", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Model string   `json:"model"`
			Input []string `json:"input"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Model != "m" || len(req.Input) != 2 {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		time.Sleep(2 * time.Millisecond)
		served.Add(1)
		w.Write([]byte(`{"object":"list","data":[]}`))
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, _ *http.Request) {
		n := served.Load()
		fmt.Fprintf(w, "infergate_engine_batch_size_sum{model=\"m\"} %d\ninfergate_engine_batch_size_count{model=\"m\"} %d\n", 2*n, n)
		// Each request waited 1 ms in the queue; each batch ran 2 ms.
		fmt.Fprintf(w, "infergate_engine_queue_duration_seconds_sum{model=\"m\"} %g\ninfergate_engine_queue_duration_seconds_count{model=\"m\"} %d\n", 0.001*float64(n), n)
		fmt.Fprintf(w, "infergate_engine_compute_duration_seconds_sum{model=\"m\"} %g\ninfergate_engine_compute_duration_seconds_count{model=\"m\"} %d\n", 0.002*float64(n), n)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv, &served
}

func TestConcurrencySweepPoint(t *testing.T) {
	srv, _ := fakeEngine(t)
	target := &Target{URL: srv.URL, Model: "m", Texts: Corpus(10), InputsPerRequest: 2}
	r, err := target.Concurrency(context.Background(), quick, 4)
	if err != nil {
		t.Fatal(err)
	}
	if r.Requests == 0 || r.Errors != 0 || r.Throughput <= 0 || r.Concurrency != 4 || r.Load != "concurrency" {
		t.Fatalf("result %+v", r)
	}
	if !(r.P50Ms <= r.P90Ms && r.P90Ms <= r.P95Ms && r.P95Ms <= r.P99Ms) || r.P50Ms < 2 {
		t.Fatalf("percentiles out of order or below the 2ms service time: %+v", r)
	}
	if r.MeanBatch < 1.9 || r.MeanBatch > 2.1 {
		t.Fatalf("mean batch %v from /metrics, want 2", r.MeanBatch)
	}
	if math.Abs(r.QueueMs-1) > 0.01 || math.Abs(r.BatchMs-2) > 0.01 {
		t.Fatalf("engine queue %v ms and batch %v ms from /metrics, want 1 and 2", r.QueueMs, r.BatchMs)
	}
}

func TestPoissonRatePoint(t *testing.T) {
	srv, _ := fakeEngine(t)
	target := &Target{URL: srv.URL, Model: "m", Texts: Corpus(10), InputsPerRequest: 2}
	r, err := target.Rate(context.Background(), quick, 200)
	if err != nil {
		t.Fatal(err)
	}
	// 200 req/s of two items each, give or take the Poisson noise.
	if r.Errors != 0 || r.Throughput < 100 || r.Throughput > 1600 || r.Load != "rate" {
		t.Fatalf("result %+v", r)
	}
	if _, err := target.Rate(context.Background(), quick, 0); err == nil {
		t.Fatal("rate 0 accepted")
	}
}

func TestErrorsAreCounted(t *testing.T) {
	srv, _ := fakeEngine(t)
	target := &Target{URL: srv.URL, Model: "other", Texts: Corpus(3)}
	r, err := target.Concurrency(context.Background(), quick, 2)
	if err != nil {
		t.Fatal(err)
	}
	if r.Errors == 0 || r.Errors != r.Requests || r.Throughput != 0 {
		t.Fatalf("failed requests not reported as errors: %+v", r)
	}
}

func TestPercentileNearestRank(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(i))
	}
	for p, want := range map[float64]time.Duration{50: 50, 90: 90, 99: 99, 100: 100} {
		if got := percentile(d, p); got != want {
			t.Errorf("p%v = %v, want %v", p, got, want)
		}
	}
	if got := percentile([]time.Duration{7}, 99); got != 7 {
		t.Errorf("p99 of one sample = %v", got)
	}
}

func TestStability(t *testing.T) {
	w := func(tput float64, mean time.Duration) window { return window{tput: tput, mean: mean} }
	if !stable([]window{w(100, 10), w(105, 10), w(95, 11)}, 0.1) {
		t.Error("windows within 10% judged unstable")
	}
	if stable([]window{w(100, 10), w(150, 10), w(95, 10)}, 0.1) {
		t.Error("throughput spread of 50% judged stable")
	}
	if stable([]window{w(100, 10), w(100, 20), w(100, 10)}, 0.1) {
		t.Error("latency spread of 2x judged stable")
	}
}

// countingEncoder takes 1ms per batch.
type countingEncoder struct{ batches atomic.Int64 }

func (e *countingEncoder) Tokenize(text string) ([]int32, error) { return []int32{1, 2, 3}, nil }
func (e *countingEncoder) Embed(_ context.Context, b [][]int32) ([][]float32, error) {
	e.batches.Add(1)
	time.Sleep(time.Millisecond)
	return make([][]float32, len(b)), nil
}
func (e *countingEncoder) Dim() int       { return 1 }
func (e *countingEncoder) MaxTokens() int { return 2 }
func (e *countingEncoder) Close() error   { return nil }

func TestCeilingRunsTheEncoderAtTheBatchSize(t *testing.T) {
	enc := &countingEncoder{}
	seqs, err := Sequences(enc, Corpus(5), 0)
	if err != nil {
		t.Fatal(err)
	}
	r, err := Ceiling(context.Background(), quick, enc, seqs, 8, 2)
	if err != nil {
		t.Fatal(err)
	}
	if r.Mode != "ceiling" || r.BatchSize != 8 || r.Throughput <= 0 || r.ItemsPerCPUSecond <= 0 || enc.batches.Load() == 0 {
		t.Fatalf("result %+v after %d batches", r, enc.batches.Load())
	}
	// Every sample is one batch of 8 items.
	if perItem := 8 * float64(r.Requests) / (3 * quick.Window.Seconds()); r.Throughput < 0.8*perItem || r.Throughput > 1.01*perItem {
		t.Fatalf("throughput %v counts batches, not items (%d batches)", r.Throughput, r.Requests)
	}
}

// wordEncoder's tokens are the words' lengths, one per word.
type wordEncoder struct{}

func (wordEncoder) Tokenize(text string) ([]int32, error) {
	var ids []int32
	for _, w := range strings.Fields(text) {
		ids = append(ids, int32(len(w)))
	}
	return ids, nil
}
func (wordEncoder) Embed(_ context.Context, b [][]int32) ([][]float32, error) {
	return make([][]float32, len(b)), nil
}
func (wordEncoder) Dim() int       { return 1 }
func (wordEncoder) MaxTokens() int { return 16 }
func (wordEncoder) Close() error   { return nil }

func TestSequences(t *testing.T) {
	enc := wordEncoder{}
	texts := []string{"a bb ccc", "dddd", "e ff ggg hhhh iiiii"}
	// Each text its own sequence, cut to the model's limit.
	got, err := Sequences(&countingEncoder{}, texts, 0)
	if err != nil || len(got) != 3 || len(got[0]) != 2 {
		t.Fatalf("per-text sequences %v, %v: want 3 cut to 2 tokens", got, err)
	}
	// Fixed length: the token stream laid end to end, cut every 3.
	got, err = Sequences(enc, texts, 3)
	want := [][]int32{{1, 2, 3}, {4, 1, 2}, {3, 4, 5}}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("3-token sequences %v, %v; want %v", got, err, want)
	}
	if _, err := Sequences(enc, texts, 17); err == nil || !strings.Contains(err.Error(), "at most 16") {
		t.Errorf("longer than the model: error %v", err)
	}
	if _, err := Sequences(enc, texts[:1], 4); err == nil {
		t.Error("too few tokens for one sequence: no error")
	}
}

func TestOutputs(t *testing.T) {
	results := []Result{
		{Mode: "dynamic", Load: "concurrency", Concurrency: 1, Throughput: 10, P99Ms: 100, Requests: 5},
		{Mode: "dynamic", Load: "concurrency", Concurrency: 8, Throughput: 30, P99Ms: 300, Requests: 5},
		{Mode: "unbatched", Load: "concurrency", Concurrency: 1, Throughput: 9, P99Ms: 110, Requests: 5},
		{Mode: "ceiling", Load: "batch", BatchSize: 8, Throughput: 32, P99Ms: 250, Requests: 5},
	}
	var b bytes.Buffer
	if err := WriteCSV(&b, results); err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(&b).ReadAll()
	if err != nil || len(rows) != 5 || rows[0][0] != "mode" || rows[2][2] != "8" {
		t.Fatalf("csv %v %v", rows, err)
	}
	b.Reset()
	if err := WriteJSON(&b, results); err != nil {
		t.Fatal(err)
	}
	var back []Result
	if err := json.Unmarshal(b.Bytes(), &back); err != nil || len(back) != 4 || back[3].BatchSize != 8 {
		t.Fatalf("json round trip: %v %+v", err, back)
	}
	b.Reset()
	if err := WriteTable(&b, results); err != nil || !strings.Contains(b.String(), "c=8") || !strings.Contains(b.String(), "batch=8") {
		t.Fatalf("table:\n%s", b.String())
	}
	path := filepath.Join(t.TempDir(), "plot.png")
	if err := Plot(path, "test", results); err != nil {
		t.Fatal(err)
	}
	png, err := os.ReadFile(path)
	if err != nil || !bytes.HasPrefix(png, []byte("\x89PNG")) {
		t.Fatalf("plot is not a PNG: %v", err)
	}
}

func TestCorpusIsDistinct(t *testing.T) {
	seen := map[string]bool{}
	for _, s := range Corpus(2000) {
		if seen[s] {
			t.Fatalf("repeated text %q", s)
		}
		seen[s] = true
	}
}

// A sweep from one client to many keeps an idle connection per client at
// every point: a batching engine answers in bursts, and a connection the
// pool cannot keep is closed and dialed again, which measures TCP set-up.
func TestClientGrowsWithTheSweep(t *testing.T) {
	target := &Target{URL: "http://127.0.0.1:1", Model: "m"}
	idle := func(c int) int { return target.client(c).Transport.(*http.Transport).MaxIdleConnsPerHost }
	if got := idle(1); got < 1 {
		t.Fatalf("c=1: %d idle connections kept", got)
	}
	if got := idle(256); got < 256 {
		t.Fatalf("c=256 after c=1: %d idle connections kept, want at least 256", got)
	}
	if got := idle(8); got < 256 {
		t.Fatalf("c=8 after c=256: %d idle connections kept; the client should not shrink", got)
	}
}

func TestEncodingFormatIsAskedFor(t *testing.T) {
	formats := make(chan string, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req map[string]any
		_ = json.NewDecoder(r.Body).Decode(&req)
		f, sent := req["encoding_format"].(string)
		if !sent {
			f = "(none)"
		}
		select {
		case formats <- f:
		default:
		}
	}))
	t.Cleanup(srv.Close)
	for _, want := range []string{"", "base64"} {
		target := &Target{URL: srv.URL, Model: "m", Texts: Corpus(3), EncodingFormat: want}
		if _, ok := target.send(context.Background(), srv.Client()); !ok {
			t.Fatal("request failed")
		}
		if got := <-formats; (want == "" && got != "(none)") || (want != "" && got != want) {
			t.Fatalf("EncodingFormat %q: the engine was asked for %q", want, got)
		}
	}
}
