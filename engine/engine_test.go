package engine

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"math"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/infergate/infergate/config"
	"github.com/infergate/infergate/engine/model"
	"github.com/infergate/infergate/internal/apierror"
)

// wordEncoder is a small deterministic encoder for the serving tests: a
// token per whitespace-separated word, 4-dimensional vectors derived from
// the ids. Texts containing "\x00" are untokenizable. While gate is set,
// Embed waits for it, so tests control when batches finish.
type wordEncoder struct {
	gate  atomic.Pointer[chan struct{}]
	calls atomic.Int32 // Embed calls
	items atomic.Int32 // sequences embedded
}

func (e *wordEncoder) Tokenize(text string) ([]int32, error) {
	if strings.ContainsRune(text, 0) {
		return nil, fmt.Errorf("NUL byte: %w", model.ErrUntokenizable)
	}
	words := strings.Fields(text)
	if len(words) == 0 {
		return nil, fmt.Errorf("no words: %w", model.ErrUntokenizable)
	}
	ids := make([]int32, len(words))
	for i, w := range words {
		h := fnv.New32a()
		h.Write([]byte(w))
		ids[i] = int32(h.Sum32()%1000) + 1
	}
	return ids, nil
}

func (e *wordEncoder) Embed(ctx context.Context, batch [][]int32) ([][]float32, error) {
	e.calls.Add(1)
	e.items.Add(int32(len(batch)))
	if gate := e.gate.Load(); gate != nil {
		select {
		case <-*gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	out := make([][]float32, len(batch))
	for i, s := range batch {
		out[i] = []float32{float32(len(s)), float32(s[0]), float32(s[len(s)-1]), 0.5}
	}
	return out, nil
}

func (e *wordEncoder) Dim() int       { return 4 }
func (e *wordEncoder) MaxTokens() int { return 8 }
func (e *wordEncoder) Close() error   { return nil }

func engineConfig(t testing.TB, modelYAML string) config.Engine {
	t.Helper()
	y := "engine:\n  listen: 127.0.0.1:0\n  max_body_bytes: 4096\n  models:\n  - name: words\n    path: unused\n"
	for _, line := range strings.Split(strings.TrimSpace(modelYAML), "\n") {
		if line != "" {
			y += "    " + line + "\n"
		}
	}
	c, err := config.Parse("test.yaml", []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	return c.Engine
}

type testEngine struct {
	*Server
	url     string
	stop    context.CancelFunc
	stopped chan error
}

// start serves cfg with load and returns once the listener is bound.
func start(t testing.TB, cfg config.Engine, load loadFunc) *testEngine {
	t.Helper()
	s, err := newServer(cfg, slog.New(slog.DiscardHandler), load)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	te := &testEngine{Server: s, url: "http://" + s.Addr(), stop: cancel, stopped: make(chan error, 1)}
	go func() { te.stopped <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-te.stopped:
		case <-time.After(20 * time.Second):
			t.Error("engine did not stop")
		}
	})
	return te
}

func startReady(t testing.TB, cfg config.Engine, enc model.Encoder) *testEngine {
	t.Helper()
	te := start(t, cfg, func(config.EngineModel) (model.Encoder, error) { return enc, nil })
	te.waitReady(t)
	return te
}

func (te *testEngine) waitReady(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		status, _, _ := te.get(t, "/readyz")
		if status == http.StatusOK {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("engine never became ready")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (te *testEngine) get(t testing.TB, path string) (int, http.Header, []byte) {
	t.Helper()
	resp, err := http.Get(te.url + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, body
}

func (te *testEngine) post(t testing.TB, path, body string, header ...string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, te.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, out
}

type embeddingsReply struct {
	Object string `json:"object"`
	Model  string `json:"model"`
	Data   []struct {
		Object    string          `json:"object"`
		Index     int             `json:"index"`
		Embedding json.RawMessage `json:"embedding"`
	} `json:"data"`
	Usage struct {
		PromptTokens int `json:"prompt_tokens"`
		TotalTokens  int `json:"total_tokens"`
	} `json:"usage"`
}

func decodeEmbeddings(t *testing.T, body []byte) embeddingsReply {
	t.Helper()
	var r embeddingsReply
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	return r
}

func floats(t *testing.T, raw json.RawMessage) []float32 {
	t.Helper()
	var v []float32
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatalf("embedding %s: %v", raw, err)
	}
	return v
}

func TestEmbeddingsOpenAIShape(t *testing.T) {
	te := startReady(t, engineConfig(t, ""), &wordEncoder{})

	status, _, body := te.post(t, "/v1/embeddings", `{"model":"words","input":["one two three","four","a b c d e f g h i j"],"user":"u1"}`)
	if status != http.StatusOK {
		t.Fatalf("status %d: %s", status, body)
	}
	r := decodeEmbeddings(t, body)
	if r.Object != "list" || r.Model != "words" || len(r.Data) != 3 {
		t.Fatalf("reply %+v", r)
	}
	for i, d := range r.Data {
		if d.Object != "embedding" || d.Index != i {
			t.Fatalf("data[%d] = %+v", i, d)
		}
	}
	// The third input has 10 words, truncated to the model's 8 tokens.
	if got := floats(t, r.Data[2].Embedding); len(got) != 4 || got[0] != 8 {
		t.Fatalf("third embedding %v, want 4 floats starting with 8 (truncated length)", got)
	}
	if r.Usage.PromptTokens != 3+1+8 || r.Usage.TotalTokens != r.Usage.PromptTokens {
		t.Fatalf("usage %+v, want 12 prompt tokens", r.Usage)
	}

	// A plain string is one input; model may be left out with one model.
	status, _, body = te.post(t, "/v1/embeddings", `{"input":"one two three"}`)
	if status != http.StatusOK {
		t.Fatalf("status %d: %s", status, body)
	}
	single := decodeEmbeddings(t, body)
	if len(single.Data) != 1 || !bytes.Equal(single.Data[0].Embedding, r.Data[0].Embedding) {
		t.Fatalf("string input gave %s, want %s", single.Data[0].Embedding, r.Data[0].Embedding)
	}
}

func TestEmbeddingsBase64IsLittleEndianFloat32(t *testing.T) {
	te := startReady(t, engineConfig(t, ""), &wordEncoder{})
	_, _, fbody := te.post(t, "/v1/embeddings", `{"model":"words","input":"alpha beta","encoding_format":"float"}`)
	status, _, bbody := te.post(t, "/v1/embeddings", `{"model":"words","input":"alpha beta","encoding_format":"base64"}`)
	if status != http.StatusOK {
		t.Fatalf("status %d: %s", status, bbody)
	}
	want := floats(t, decodeEmbeddings(t, fbody).Data[0].Embedding)
	var b64 string
	if err := json.Unmarshal(decodeEmbeddings(t, bbody).Data[0].Embedding, &b64); err != nil {
		t.Fatal(err)
	}
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(raw) != 4*len(want) {
		t.Fatalf("base64 %q: %v", b64, err)
	}
	for i, w := range want {
		if got := math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:])); got != w {
			t.Fatalf("element %d: %v, want %v", i, got, w)
		}
	}
}

func TestModelsEndpoints(t *testing.T) {
	te := startReady(t, engineConfig(t, ""), &wordEncoder{})
	status, _, body := te.get(t, "/v1/models")
	var list struct {
		Object string `json:"object"`
		Data   []struct {
			ID     string `json:"id"`
			Object string `json:"object"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &list); err != nil || status != 200 || list.Object != "list" || len(list.Data) != 1 || list.Data[0].ID != "words" || list.Data[0].Object != "model" {
		t.Fatalf("GET /v1/models %d: %s", status, body)
	}
	if status, _, body := te.get(t, "/v2/models/words"); status != 200 || !strings.Contains(string(body), `"shape":[-1,4]`) || !strings.Contains(string(body), `"datatype":"BYTES"`) {
		t.Fatalf("model metadata %d: %s", status, body)
	}
	for _, path := range []string{"/v2/health/live", "/v2/health/ready", "/v2/models/words/ready", "/v2/models/words/versions/1/ready", "/v2", "/healthz", "/readyz"} {
		if status, _, body := te.get(t, path); status != 200 {
			t.Errorf("GET %s: %d %s", path, status, body)
		}
	}
	for _, path := range []string{"/v2/models/nope", "/v2/models/nope/ready", "/v2/models/words/versions/2/ready", "/v1/models/nope", "/v3/whatever"} {
		if status, _, body := te.get(t, path); status != 404 || !strings.Contains(string(body), `"error"`) {
			t.Errorf("GET %s: %d %s, want a JSON 404", path, status, body)
		}
	}
	// A known endpoint called with the wrong method is 405 with Allow, not
	// "no such endpoint".
	for path, allow := range map[string]string{"/v1/embeddings": "POST", "/v2/models/words/infer": "POST"} {
		if status, header, body := te.get(t, path); status != http.StatusMethodNotAllowed || header.Get("Allow") != allow || !strings.Contains(string(body), `"error"`) {
			t.Errorf("GET %s: %d Allow=%q %s, want a JSON 405 with Allow %s", path, status, header.Get("Allow"), body, allow)
		}
	}
	if status, header, _ := te.post(t, "/v1/models", "{}"); status != http.StatusMethodNotAllowed || header.Get("Allow") != "GET" {
		t.Errorf("POST /v1/models: %d Allow=%q, want 405 with Allow GET", status, header.Get("Allow"))
	}
}

func TestKServeInfer(t *testing.T) {
	te := startReady(t, engineConfig(t, ""), &wordEncoder{})
	_, _, ob := te.post(t, "/v1/embeddings", `{"model":"words","input":["red fox","blue whale jumps"]}`)
	r := decodeEmbeddings(t, ob)
	var want []float32
	for _, d := range r.Data {
		want = append(want, floats(t, d.Embedding)...)
	}
	for _, body := range []string{
		`{"id":"q1","inputs":[{"name":"text","shape":[2],"datatype":"BYTES","data":["red fox","blue whale jumps"]}]}`,
		`{"id":"q1","inputs":[{"name":"text","shape":[2,1],"datatype":"BYTES","data":[["red fox"],["blue whale jumps"]]}],"outputs":[{"name":"embedding"}]}`,
	} {
		status, _, out := te.post(t, "/v2/models/words/infer", body)
		if status != http.StatusOK {
			t.Fatalf("status %d: %s", status, out)
		}
		var resp struct {
			ModelName string `json:"model_name"`
			ID        string `json:"id"`
			Outputs   []struct {
				Name     string    `json:"name"`
				Datatype string    `json:"datatype"`
				Shape    []int     `json:"shape"`
				Data     []float32 `json:"data"`
			} `json:"outputs"`
		}
		if err := json.Unmarshal(out, &resp); err != nil {
			t.Fatal(err)
		}
		o := resp.Outputs[0]
		if resp.ModelName != "words" || resp.ID != "q1" || o.Name != "embedding" || o.Datatype != "FP32" || fmt.Sprint(o.Shape) != "[2 4]" {
			t.Fatalf("response %s", out)
		}
		if fmt.Sprint(o.Data) != fmt.Sprint(want) {
			t.Fatalf("row-major data %v, want the OpenAI vectors %v", o.Data, want)
		}
	}
}

// Inputs embedded before are not computed again; the response, usage
// included, is the same as when they were.
func TestEmbeddingReuse(t *testing.T) {
	enc := &wordEncoder{}
	te := startReady(t, engineConfig(t, ""), enc)
	items := enc.items.Load()
	status, _, first := te.post(t, "/v1/embeddings", `{"input":["red fox","blue whale"]}`)
	if status != http.StatusOK || enc.items.Load() != items+2 {
		t.Fatalf("first request: %d, %d items computed", status, enc.items.Load()-items)
	}
	status, _, second := te.post(t, "/v1/embeddings", `{"input":["blue whale","green frog","red fox","green frog"]}`)
	if status != http.StatusOK {
		t.Fatalf("status %d: %s", status, second)
	}
	if got := enc.items.Load() - items; got != 3 {
		t.Fatalf("%d items computed in all, want 3 (green frog once)", got)
	}
	a, b := decodeEmbeddings(t, first), decodeEmbeddings(t, second)
	if string(a.Data[1].Embedding) != string(b.Data[0].Embedding) || string(a.Data[0].Embedding) != string(b.Data[2].Embedding) ||
		string(b.Data[1].Embedding) != string(b.Data[3].Embedding) {
		t.Fatalf("reused vectors differ:\n%s\n%s", first, second)
	}
	if b.Usage.PromptTokens != 8 {
		t.Fatalf("usage %+v, want all 8 tokens counted", b.Usage)
	}
	// A request answered entirely from the cache.
	status, _, third := te.post(t, "/v1/embeddings", `{"input":"red fox"}`)
	if status != http.StatusOK || enc.items.Load()-items != 3 || string(decodeEmbeddings(t, third).Data[0].Embedding) != string(a.Data[0].Embedding) {
		t.Fatalf("cached request: %d %s", status, third)
	}
	_, _, metrics := te.get(t, "/metrics")
	if metricValue(string(metrics), "infergate_engine_embedcache_hits_total") != 3 {
		t.Fatalf("embedcache hits not 3:\n%s", metrics)
	}
}

// Every client error gets its status and a JSON error body: OpenAI's
// error object on /v1/, KServe's {"error": "..."} on /v2/.
func TestErrorStatuses(t *testing.T) {
	te := startReady(t, engineConfig(t, "max_inputs: 3\nmax_input_chars: 20"), &wordEncoder{})
	cases := []struct {
		name, path, body string
		header           []string
		status           int
		msg              string
	}{
		{"malformed JSON", "/v1/embeddings", `{"input":`, nil, 400, "invalid JSON"},
		{"not an object", "/v1/embeddings", `["x"]`, nil, 400, "must be a JSON object, not array"},
		{"infer not an object", "/v2/models/words/infer", `"x"`, nil, 400, "must be a JSON object, not string"},
		{"input wrong type", "/v1/embeddings", `{"input":42}`, nil, 400, "string or an array"},
		{"model wrong type", "/v1/embeddings", `{"input":"x","model":7}`, nil, 400, `"model"`},
		{"no input", "/v1/embeddings", `{"model":"words"}`, nil, 400, "required"},
		{"empty array", "/v1/embeddings", `{"input":[]}`, nil, 400, "empty"},
		{"token arrays", "/v1/embeddings", `{"input":[[1,2,3]]}`, nil, 400, "token arrays"},
		{"bad encoding", "/v1/embeddings", `{"input":"x","encoding_format":"hex"}`, nil, 400, "encoding_format"},
		{"dimensions", "/v1/embeddings", `{"input":"x","dimensions":2}`, nil, 400, "4-dimensional"},
		{"bad priority", "/v1/embeddings", `{"input":"x"}`, []string{PriorityHeader, "-1"}, 400, "from 0 to 9"},
		{"unknown model", "/v1/embeddings", `{"input":"x","model":"gpt-9"}`, nil, 404, "gpt-9"},
		{"body too large", "/v1/embeddings", `{"input":"` + strings.Repeat("a", 5000) + `"}`, nil, 413, "max_body_bytes"},
		{"too many inputs", "/v1/embeddings", `{"input":["a","b","c","d"]}`, nil, 413, "max_inputs"},
		{"input too long", "/v1/embeddings", `{"input":"` + strings.Repeat("é", 21) + `"}`, nil, 413, "max_input_chars"},
		{"too many tokens, not truncated", "/v1/embeddings", `{"input":["a","a b c d e f g h i"],"truncate":false}`, nil, 413, "input 1 has 9 tokens, over the model's limit of 8"},
		{"untokenizable", "/v1/embeddings", `{"input":["fine","bad\u0000"]}`, nil, 422, "input 1"},
		{"blank input", "/v1/embeddings", `{"input":"   "}`, nil, 422, "input 0"},
		{"infer wrong datatype", "/v2/models/words/infer", `{"inputs":[{"name":"text","shape":[1],"datatype":"FP32","data":[1.0]}]}`, nil, 400, "BYTES"},
		{"infer shape mismatch", "/v2/models/words/infer", `{"inputs":[{"name":"text","shape":[3],"datatype":"BYTES","data":["a"]}]}`, nil, 400, "shape"},
		{"infer null text", "/v2/models/words/infer", `{"inputs":[{"name":"text","shape":[1],"datatype":"BYTES","data":[null]}]}`, nil, 400, "must be strings"},
		{"infer null in row", "/v2/models/words/infer", `{"inputs":[{"name":"text","shape":[1,1],"datatype":"BYTES","data":[[null]]}]}`, nil, 400, "must be strings"},
		{"infer rows against shape", "/v2/models/words/infer", `{"inputs":[{"name":"text","shape":[2,1],"datatype":"BYTES","data":[["a","b"]]}]}`, nil, 400, "[N,1]"},
		{"infer rows for 1-D shape", "/v2/models/words/infer", `{"inputs":[{"name":"text","shape":[1],"datatype":"BYTES","data":[["a"]]}]}`, nil, 400, "[N,1]"},
		{"infer wrong input", "/v2/models/words/infer", `{"inputs":[{"name":"prompt","shape":[1],"datatype":"BYTES","data":["a"]}]}`, nil, 400, `"text"`},
		{"infer wrong output", "/v2/models/words/infer", `{"inputs":[{"name":"text","shape":[1],"datatype":"BYTES","data":["a"]}],"outputs":[{"name":"logits"}]}`, nil, 400, "logits"},
		{"infer unknown model", "/v2/models/nope/infer", `{"inputs":[]}`, nil, 404, "nope"},
		{"infer too many", "/v2/models/words/infer", `{"inputs":[{"name":"text","shape":[4],"datatype":"BYTES","data":["a","b","c","d"]}]}`, nil, 413, "max_inputs"},
		{"infer untokenizable", "/v2/models/words/infer", `{"inputs":[{"name":"text","shape":[1],"datatype":"BYTES","data":["\u0000"]}]}`, nil, 422, "input 0"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			status, _, body := te.post(t, c.path, c.body, c.header...)
			msg, ok := apierror.Message(body)
			if status != c.status || !ok || !strings.Contains(msg, c.msg) {
				t.Fatalf("got %d %s, want %d with an error mentioning %q", status, body, c.status, c.msg)
			}
			// OpenAI's SDKs read an error object there, KServe's a string.
			var shape struct{ Error any }
			_ = json.Unmarshal(body, &shape)
			if _, object := shape.Error.(map[string]any); object != strings.HasPrefix(c.path, "/v1/") {
				t.Errorf("%s answered %s: wrong error shape for its API", c.path, body)
			}
		})
	}
	_, _, metrics := te.get(t, "/metrics")
	for _, model := range []string{"words", ""} { // "": refused before the model was known
		if !strings.Contains(string(metrics), `infergate_engine_requests_total{model="`+model+`",outcome="invalid"}`) {
			t.Fatalf("invalid requests of model %q not counted:\n%s", model, metrics)
		}
	}
}

// A full queue answers 429 with Retry-After; a request that waits past
// its deadline answers 504 and is never computed.
func TestQueueFullAndDeadline(t *testing.T) {
	enc := &wordEncoder{}
	te := startReady(t, engineConfig(t, "queue_size: 1\nworkers: 1\nmax_batch_size: 1\ntimeout: 1s"), enc)
	gate := make(chan struct{})
	enc.gate.Store(&gate)
	defer close(gate)

	type reply struct {
		status int
		header http.Header
	}
	send := func() chan reply {
		ch := make(chan reply, 1)
		go func() {
			s, h, _ := te.post(t, "/v1/embeddings", `{"input":"x"}`)
			ch <- reply{s, h}
		}()
		return ch
	}
	callsBefore := enc.calls.Load()
	running := send()
	waitUntil(t, func() bool { return enc.calls.Load() == callsBefore+1 })
	queued := send()
	waitUntil(t, func() bool { return te.models["words"].batch.Depth() == 1 })

	status, header, body := te.post(t, "/v1/embeddings", `{"input":"y"}`)
	if status != http.StatusTooManyRequests || header.Get("Retry-After") == "" {
		t.Fatalf("full queue: %d %v %s, want 429 with Retry-After", status, header, body)
	}
	for _, ch := range []chan reply{running, queued} {
		if r := <-ch; r.status != http.StatusGatewayTimeout {
			t.Fatalf("status %d, want 504", r.status)
		}
	}
	if got := enc.calls.Load(); got != callsBefore+1 {
		t.Fatalf("%d batches ran, want only the first: the expired request was computed", got-callsBefore)
	}
	_, _, metrics := te.get(t, "/metrics")
	for _, want := range []string{`outcome="rejected"} 1`, `outcome="timeout"} 2`, `infergate_engine_queue_depth{model="words"} 0`} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// The listener answers /healthz while the model loads; readiness and
// inference wait for the load and the warm-up batch.
func TestNotReadyUntilLoadedAndWarmedUp(t *testing.T) {
	release := make(chan struct{})
	enc := &wordEncoder{}
	te := start(t, engineConfig(t, ""), func(config.EngineModel) (model.Encoder, error) {
		<-release
		return enc, nil
	})
	if status, _, _ := te.get(t, "/healthz"); status != 200 {
		t.Fatalf("/healthz during load: %d", status)
	}
	for _, path := range []string{"/readyz", "/v2/health/ready", "/v2/models/words/ready"} {
		if status, _, body := te.get(t, path); status != http.StatusServiceUnavailable {
			t.Fatalf("%s during load: %d %s", path, status, body)
		}
	}
	status, header, body := te.post(t, "/v1/embeddings", `{"input":"x"}`)
	if status != http.StatusServiceUnavailable || header.Get("Retry-After") == "" || !strings.Contains(string(body), "loading") {
		t.Fatalf("inference during load: %d %v %s", status, header, body)
	}
	close(release)
	te.waitReady(t)
	if got := enc.calls.Load(); got != 1 {
		t.Fatalf("%d batches before any request, want the one warm-up batch", got)
	}
}

// The warm-up batch runs at load but is no request: /metrics scraped
// right after start shows none, and one request shows as exactly one.
func TestWarmUpIsNotCountedAsRequest(t *testing.T) {
	enc := &wordEncoder{}
	te := startReady(t, engineConfig(t, ""), enc)
	if got := enc.calls.Load(); got != 1 {
		t.Fatalf("%d batches at load, want the one warm-up batch", got)
	}
	series := []string{
		`infergate_engine_requests_total{model="words",outcome="success"}`,
		`infergate_engine_queue_duration_seconds_count{model="words"}`,
		`infergate_engine_batch_size_count{model="words"}`,
		`infergate_engine_tokens_total{model="words"}`,
	}
	_, _, metrics := te.get(t, "/metrics")
	for _, s := range series {
		if got := metricValue(string(metrics), s); got != 0 {
			t.Errorf("before any request %s = %v, want 0", s, got)
		}
	}
	if status, _, body := te.post(t, "/v1/embeddings", `{"input":"one two three"}`); status != http.StatusOK {
		t.Fatalf("status %d: %s", status, body)
	}
	_, _, metrics = te.get(t, "/metrics")
	for i, want := range []float64{1, 1, 1, 3} {
		if got := metricValue(string(metrics), series[i]); got != want {
			t.Errorf("after one 3-token request %s = %v, want %v", series[i], got, want)
		}
	}
}

func TestLoadFailureStopsEngine(t *testing.T) {
	te := start(t, engineConfig(t, ""), func(config.EngineModel) (model.Encoder, error) {
		return nil, errors.New("model folder is empty: run make deps")
	})
	select {
	case err := <-te.stopped:
		te.stopped <- err // for the cleanup
		if err == nil || !strings.Contains(err.Error(), "make deps") {
			t.Fatalf("Serve returned %v, want the load error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("engine kept running without its model")
	}
}

// On shutdown, requests already accepted are computed and answered.
func TestGracefulShutdownFinishesAcceptedRequests(t *testing.T) {
	enc := &wordEncoder{}
	te := startReady(t, engineConfig(t, "workers: 1\nmax_batch_size: 1"), enc)
	gate := make(chan struct{})
	enc.gate.Store(&gate)
	calls := enc.calls.Load()
	results := make(chan int, 2)
	for range 2 {
		go func() {
			s, _, _ := te.post(t, "/v1/embeddings", `{"input":"x"}`)
			results <- s
		}()
	}
	waitUntil(t, func() bool {
		return enc.calls.Load() == calls+1 && te.models["words"].batch.Depth() == 1
	})
	te.stop()
	waitUntil(t, func() bool { return te.stopping.Load() })
	close(gate)
	for range 2 {
		if s := <-results; s != http.StatusOK {
			t.Fatalf("accepted request got %d during shutdown, want 200", s)
		}
	}
	select {
	case err := <-te.stopped:
		te.stopped <- err
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after draining")
	}
}

// Under overload a request that needs the model is refused before any
// work; one served wholly from the reuse cache needs no queue and is not.
func TestFullQueueRefusesOnlyWhatNeedsTheModel(t *testing.T) {
	enc := &wordEncoder{}
	te := startReady(t, engineConfig(t, "workers: 1\nmax_batch_size: 1\nqueue_size: 1"), enc)
	if status, _, body := te.post(t, "/v1/embeddings", `{"input":"seen before"}`); status != http.StatusOK {
		t.Fatalf("first request: %d %s", status, body)
	}
	gate := make(chan struct{})
	defer close(gate)
	enc.gate.Store(&gate)
	calls := enc.calls.Load()
	for _, text := range []string{"running", "queued"} {
		go func() {
			if resp, err := http.Post(te.url+"/v1/embeddings", "application/json", strings.NewReader(`{"input":"`+text+`"}`)); err == nil {
				resp.Body.Close()
			}
		}()
	}
	waitUntil(t, func() bool { return enc.calls.Load() == calls+1 && te.models["words"].batch.Full() })
	if status, _, body := te.post(t, "/v1/embeddings", `{"input":"seen before"}`); status != http.StatusOK {
		t.Errorf("a request the reuse cache answers: %d %s, want 200", status, body)
	}
	_, _, before := te.get(t, "/metrics")
	if status, _, _ := te.post(t, "/v1/embeddings", `{"input":"new text"}`); status != http.StatusTooManyRequests {
		t.Errorf("a request for the model: %d, want 429", status)
	}
	// A refused request is no reuse-cache miss on the dashboards.
	_, _, after := te.get(t, "/metrics")
	const misses = "infergate_engine_embedcache_misses_total"
	if metricValue(string(after), misses) != metricValue(string(before), misses) {
		t.Errorf("the 429 counted as a reuse-cache miss")
	}
}

// Route policies send priorities up to 9 whatever a model's levels; a
// model with fewer levels serves them at its highest, it does not refuse
// every request Envoy forwards.
func TestPriorityAboveTheModelsLevelsIsItsHighest(t *testing.T) {
	te := startReady(t, engineConfig(t, "priority_levels: 3"), &wordEncoder{})
	if status, _, body := te.post(t, "/v1/embeddings", `{"input":"x"}`, PriorityHeader, "5"); status != http.StatusOK {
		t.Fatalf("priority 5 on a 3-level model: %d %s, want 200", status, body)
	}
}

// nanEncoder is a model whose output overflowed.
type nanEncoder struct{ wordEncoder }

func (e *nanEncoder) Embed(ctx context.Context, batch [][]int32) ([][]float32, error) {
	out, err := e.wordEncoder.Embed(ctx, batch)
	for _, v := range out {
		v[0] = float32(math.NaN())
	}
	return out, err
}

// A vector JSON cannot carry is a 500 with an error body, never a 200
// with an empty one, and it is not kept for reuse.
func TestNonFiniteVectorsAreAServerError(t *testing.T) {
	enc := &nanEncoder{}
	te := startReady(t, engineConfig(t, ""), enc)
	for _, path := range []string{"/v1/embeddings", "/v1/embeddings", "/v2/models/words/infer"} {
		body := `{"input":"same text"}`
		if strings.HasPrefix(path, "/v2/") {
			body = `{"inputs":[{"name":"text","shape":[1],"datatype":"BYTES","data":["same text"]}]}`
		}
		status, _, out := te.post(t, path, body)
		if msg, ok := apierror.Message(out); status != http.StatusInternalServerError || !ok || !strings.Contains(msg, "NaN") {
			t.Errorf("%s: %d %s, want 500 naming the NaN", path, status, out)
		}
	}
	if calls := enc.calls.Load(); calls < 4 { // warm-up, then each request
		t.Errorf("the model ran %d times: a NaN vector was reused", calls)
	}
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached")
		}
		time.Sleep(time.Millisecond)
	}
}

// A KServe body over max_body_bytes is counted as an invalid request of
// its model, as every other refused body is.
func TestKServeOversizedBodyIsCounted(t *testing.T) {
	te := startReady(t, engineConfig(t, ""), &wordEncoder{})
	body := `{"inputs":[{"name":"text","shape":[1],"datatype":"BYTES","data":["` + strings.Repeat("a", 5000) + `"]}]}`
	if status, _, out := te.post(t, "/v2/models/words/infer", body); status != http.StatusRequestEntityTooLarge {
		t.Fatalf("status %d %s, want 413", status, out)
	}
	_, _, metrics := te.get(t, "/metrics")
	if got := metricValue(string(metrics), `infergate_engine_requests_total{model="words",outcome="invalid"}`); got != 1 {
		t.Fatalf("invalid requests of model words = %v, want 1", got)
	}
}
