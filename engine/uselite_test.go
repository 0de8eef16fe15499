package engine

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/infergate/infergate/config"
	"github.com/infergate/infergate/internal/testmodel"
)

// The serving path end to end with the real USE-Lite model on the default
// backend: what a user of the engine sees.

var (
	useLiteOnce   sync.Once
	useLiteEngine *testEngine
)

// startUseLite serves the real model through New, as `infergate engine`
// does, without embedding reuse so that every request reaches the model.
// One engine serves all tests of this file: loading and compiling the
// shape buckets is the slow part.
func startUseLite(t *testing.T) *testEngine {
	t.Helper()
	dir := testmodel.USELiteDir(t)
	useLiteOnce.Do(func() {
		c, err := config.Parse("test.yaml", []byte(fmt.Sprintf(`
engine:
  listen: 127.0.0.1:0
  embedding_cache_bytes: 0
  models:
  - name: use-lite
    path: %s
    max_batch_size: 16
    timeout: 10m
`, dir)))
		if err != nil {
			t.Fatal(err)
		}
		s, err := New(c.Engine, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Listen(); err != nil {
			t.Fatal(err)
		}
		te := &testEngine{Server: s, url: "http://" + s.Addr(), stopped: make(chan error, 1)}
		// It serves until the test binary exits.
		go func() { te.stopped <- s.Serve(context.Background()) }()
		useLiteEngine = te
	})
	if useLiteEngine == nil {
		t.Fatal("USE-Lite engine failed to start")
	}
	useLiteEngine.waitReady(t)
	return useLiteEngine
}

func cosine(a, b []float32) float64 {
	var dot, na, nb float64
	for i := range a {
		dot += float64(a[i]) * float64(b[i])
		na += float64(a[i]) * float64(a[i])
		nb += float64(b[i]) * float64(b[i])
	}
	return dot / math.Sqrt(na*nb)
}

func TestUseLiteEmbeddings(t *testing.T) {
	te := startUseLite(t)
	texts := []string{
		"How do I reset my password?",
		"I forgot my password, how can I change it?",
		"The weather in Paris is sunny today.",
	}
	body, _ := json.Marshal(map[string]any{"model": "use-lite", "input": texts})
	status, _, out := te.post(t, "/v1/embeddings", string(body))
	if status != http.StatusOK {
		t.Fatalf("status %d: %s", status, out)
	}
	r := decodeEmbeddings(t, out)
	vecs := make([][]float32, len(r.Data))
	for i, d := range r.Data {
		vecs[i] = floats(t, d.Embedding)
		if len(vecs[i]) != 512 {
			t.Fatalf("embedding %d has %d dimensions, want 512", i, len(vecs[i]))
		}
	}
	para, unrelated := cosine(vecs[0], vecs[1]), cosine(vecs[0], vecs[2])
	if para < unrelated+0.2 {
		t.Fatalf("paraphrase cosine %.3f is not clearly above unrelated %.3f", para, unrelated)
	}
	if r.Usage.PromptTokens < len(texts) || r.Usage.PromptTokens != r.Usage.TotalTokens {
		t.Fatalf("usage %+v", r.Usage)
	}

	// base64 carries the same floats.
	status, _, out = te.post(t, "/v1/embeddings", `{"model":"use-lite","input":"How do I reset my password?","encoding_format":"base64"}`)
	if status != http.StatusOK {
		t.Fatalf("status %d: %s", status, out)
	}
	var b64 string
	if err := json.Unmarshal(decodeEmbeddings(t, out).Data[0].Embedding, &b64); err != nil {
		t.Fatal(err)
	}
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(raw) != 4*512 {
		t.Fatalf("base64 embedding: %d bytes, %v", len(raw), err)
	}
	for i := range 512 {
		if got := math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:])); math.Abs(float64(got-vecs[0][i])) > 1e-5 {
			t.Fatalf("base64 element %d = %v, float reply had %v", i, got, vecs[0][i])
		}
	}

	// KServe v2 returns the same vectors, row-major.
	body, _ = json.Marshal(map[string]any{"inputs": []any{map[string]any{"name": "text", "datatype": "BYTES", "shape": []int{3}, "data": texts}}})
	status, _, out = te.post(t, "/v2/models/use-lite/infer", string(body))
	if status != http.StatusOK {
		t.Fatalf("infer status %d: %s", status, out)
	}
	var inf struct {
		Outputs []struct {
			Shape []int     `json:"shape"`
			Data  []float32 `json:"data"`
		} `json:"outputs"`
	}
	if err := json.Unmarshal(out, &inf); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(inf.Outputs[0].Shape) != "[3 512]" {
		t.Fatalf("infer shape %v", inf.Outputs[0].Shape)
	}
	for i := range texts {
		row := inf.Outputs[0].Data[i*512 : (i+1)*512]
		if c := cosine(row, vecs[i]); c < 0.99999 {
			t.Fatalf("infer row %d differs from /v1/embeddings (cosine %v)", i, c)
		}
	}
}

// Concurrent requests are batched together and each gets the vector it
// would get alone.
func TestUseLiteConcurrentRequestsAreBatched(t *testing.T) {
	te := startUseLite(t)
	texts := make([]string, 12)
	for i := range texts {
		texts[i] = fmt.Sprintf("Request number %d asks about topic %d.", i, i%5)
	}
	alone := make([][]float32, len(texts))
	body, _ := json.Marshal(map[string]any{"input": texts})
	_, _, out := te.post(t, "/v1/embeddings", string(body))
	for i, d := range decodeEmbeddings(t, out).Data {
		alone[i] = floats(t, d.Embedding)
	}

	var wg sync.WaitGroup
	got := make([][]float32, len(texts))
	errs := make(chan string, len(texts))
	for i, text := range texts {
		wg.Go(func() {
			b, _ := json.Marshal(map[string]any{"input": text})
			status, _, out := te.post(t, "/v1/embeddings", string(b))
			if status != http.StatusOK {
				errs <- fmt.Sprintf("request %d: %d %s", i, status, out)
				return
			}
			var r embeddingsReply
			if err := json.Unmarshal(out, &r); err != nil || len(r.Data) != 1 {
				errs <- fmt.Sprintf("request %d: %s", i, out)
				return
			}
			var v []float32
			_ = json.Unmarshal(r.Data[0].Embedding, &v)
			got[i] = v
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
	for i := range texts {
		if c := cosine(got[i], alone[i]); c < 0.99999 {
			t.Fatalf("request %d: cosine %v to its vector in one batch", i, c)
		}
	}
	_, _, metrics := te.get(t, "/metrics")
	sum, count := metricValue(string(metrics), `infergate_engine_batch_size_sum{model="use-lite"}`), metricValue(string(metrics), `infergate_engine_batch_size_count{model="use-lite"}`)
	if count == 0 || sum <= count {
		t.Fatalf("%v items in %v batches: concurrent requests were not batched", sum, count)
	}
}

func TestUseLiteUntokenizableInput(t *testing.T) {
	te := startUseLite(t)
	status, _, out := te.post(t, "/v1/embeddings", `{"input":["fine text",""]}`)
	if status != http.StatusUnprocessableEntity || !strings.Contains(string(out), "input 1") {
		t.Fatalf("empty input: %d %s, want 422 naming input 1", status, out)
	}
}

// metricValue reads one sample from the text exposition.
func metricValue(text, series string) float64 {
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			var f float64
			fmt.Sscan(v, &f)
			return f
		}
	}
	return 0
}

// /metrics carries the NVML gauges exactly when NVML is there: on a GPU
// host with a driver they have values; here (no driver, or a CGO_ENABLED=0
// build) they are absent and the engine serves as usual.
func TestGPUGaugesFollowNVML(t *testing.T) {
	te := startUseLite(t)
	_, _, metrics := te.get(t, "/metrics")
	has := strings.Contains(string(metrics), "infergate_gpu_utilization{")
	if te.gpu.Available() != has {
		t.Fatalf("NVML available: %v (%s), gpu gauges on /metrics: %v", te.gpu.Available(), te.gpu.Reason(), has)
	}
}
