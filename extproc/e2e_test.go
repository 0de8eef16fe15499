package extproc_test

// End to end: the Envoy harness in front of the real engine (USE-Lite on
// the CPU backend) with the ext_proc server in the middle and, where the
// test says so, a real redis-server. Requests are counted at the engine by
// its own infergate_engine_requests_total.

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/infergate/infergate/config"
	"github.com/infergate/infergate/engine"
	"github.com/infergate/infergate/envoy/harness"
	"github.com/infergate/infergate/extproc/internal/redistest"
	"github.com/infergate/infergate/internal/testmodel"
	"github.com/infergate/infergate/policy"
)

// realEngine is one in-process engine serving the USE-Lite model.
type realEngine struct {
	srv *engine.Server
	url string
}

var (
	engineOnce sync.Once
	sharedEng  *realEngine
	engineErr  error
)

// startEngine returns the engine shared by the package's end-to-end tests
// (loading the model once keeps the suite fast on a small machine); tests
// count requests as differences of the engine's counter.
func startEngine(t testing.TB) *realEngine {
	t.Helper()
	modelDir := testmodel.USELiteDir(t)
	engineOnce.Do(func() {
		cfg := config.Default().Engine
		cfg.Listen = "127.0.0.1:0"
		cfg.Models[0].Path = modelDir
		// Policy priorities run 1..9; the engine refuses a priority header
		// outside its levels, so give it ten.
		cfg.Models[0].PriorityLevels = 10
		// The model is slow under the race detector on a shared machine;
		// a deadline here would fail tests for slowness.
		cfg.Models[0].Timeout = 10 * time.Minute
		var srv *engine.Server
		srv, engineErr = engine.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
		if engineErr != nil {
			return
		}
		if engineErr = srv.Listen(); engineErr != nil {
			return
		}
		go func() { _ = srv.Serve(context.Background()) }()
		sharedEng = &realEngine{srv: srv, url: "http://" + srv.Addr()}
		deadline := time.Now().Add(3 * time.Minute)
		for {
			resp, err := http.Get(sharedEng.url + "/readyz")
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == 200 {
					return
				}
			}
			if time.Now().After(deadline) {
				engineErr = fmt.Errorf("engine not ready after 3 minutes: %v", err)
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
	if engineErr != nil {
		t.Fatal(engineErr)
	}
	return sharedEng
}

// requests is the engine's count of requests it answered, all outcomes.
func (e *realEngine) requests(t testing.TB) float64 {
	return metric(t, e.srv.Registry(), "infergate_engine_requests_total")
}

// unique makes inputs no other test (or earlier run of this one) sent,
// since the engine is shared.
func unique(t testing.TB, s string) string { return t.Name() + ": " + s }

func embeddings(t testing.TB, input string) []byte {
	return fmt.Appendf(nil, `{"model":"use-lite","input":%q}`, unique(t, input))
}

func kserve(t testing.TB, input string) []byte {
	return fmt.Appendf(nil, `{"inputs":[{"name":"text","shape":[1],"datatype":"BYTES","data":[%q]}]}`, unique(t, input))
}

func TestE2EMissThenHit(t *testing.T) {
	eng := startEngine(t)
	srv := startExtProc(t, nil)
	h := newHarness(t, srv, eng.url, policy.Policy{Route: "embed"}, nil)
	for _, c := range []struct {
		name, path string
		body       []byte
	}{
		{"openai", "/v1/embeddings", embeddings(t, "the cat sat on the mat")},
		{"kserve", "/v2/models/use-lite/infer", kserve(t, "the cat sat on the mat")},
	} {
		before := eng.requests(t)
		miss := call(t, h, "POST", c.path, c.body)
		if miss.Status != 200 || !strings.Contains(cacheStatus(t, miss), "stored") {
			t.Fatalf("%s miss: %d %q %s", c.name, miss.Status, miss.Header.Get("Cache-Status"), miss.Body)
		}
		hit := call(t, h, "POST", c.path, c.body)
		if !isHit(cacheStatus(t, hit)) || string(hit.Body) != string(miss.Body) || hit.Header.Get("Content-Type") != miss.Header.Get("Content-Type") {
			t.Fatalf("%s hit: %q, body equal %v", c.name, hit.Header.Get("Cache-Status"), string(hit.Body) == string(miss.Body))
		}
		if got := eng.requests(t) - before; got != 1 {
			t.Fatalf("%s: engine answered %v requests, want 1", c.name, got)
		}
	}
}

func TestE2ENoStoreAndTenantIsolation(t *testing.T) {
	eng := startEngine(t)
	srv := startExtProc(t, nil)
	h := newHarness(t, srv, eng.url, policy.Policy{Route: "embed"}, nil)
	body := embeddings(t, "isolated")
	before := eng.requests(t)
	call(t, h, "POST", "/v1/embeddings", body, "Cache-Control", "no-store", "X-Tenant-Id", "acme")
	call(t, h, "POST", "/v1/embeddings", body, "Cache-Control", "no-store", "X-Tenant-Id", "acme")
	if got := eng.requests(t) - before; got != 2 {
		t.Fatalf("no-store: engine answered %v, want 2", got)
	}
	call(t, h, "POST", "/v1/embeddings", body, "X-Tenant-Id", "acme")
	globex := call(t, h, "POST", "/v1/embeddings", body, "X-Tenant-Id", "globex")
	if isHit(cacheStatus(t, globex)) {
		t.Fatal("globex served acme's entry")
	}
	if !isHit(cacheStatus(t, call(t, h, "POST", "/v1/embeddings", body, "X-Tenant-Id", "acme"))) {
		t.Fatal("acme missed its own entry")
	}
	if got := eng.requests(t) - before; got != 4 {
		t.Fatalf("engine answered %v, want 4 (2 no-store, acme once, globex once)", got)
	}
}

func TestE2ECollapsingCountedAtTheEngine(t *testing.T) {
	eng := startEngine(t)
	// Followers wait as long as the leader takes, however slow the machine.
	srv := startExtProc(t, longCollapse)
	h := newHarness(t, srv, eng.url, policy.Policy{Route: "embed"}, nil)
	// Whether a request arrives while the first is at the engine
	// (collapsed) or after (a hit), only one may reach the engine.
	body := embeddings(t, "collapse these identical requests")
	before := eng.requests(t)
	const n = 8
	var wg sync.WaitGroup
	statuses := make([]int, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			statuses[i] = call(t, h, "POST", "/v1/embeddings", body).Status
		}()
	}
	wg.Wait()
	for i, s := range statuses {
		if s != 200 {
			t.Fatalf("request %d: %d", i, s)
		}
	}
	if got := eng.requests(t) - before; got != 1 {
		t.Fatalf("%d identical concurrent requests: engine answered %v, want 1", n, got)
	}
	t.Logf("collapsed %v, hits %v",
		metric(t, srv.Registry(), "infergate_extproc_cache_lookups_total", "result", "collapsed"),
		metric(t, srv.Registry(), "infergate_extproc_cache_lookups_total", "result", "hit"))
}

func TestE2ERateLimitAndTokenBudget(t *testing.T) {
	eng := startEngine(t)
	srv := startExtProc(t, nil)
	rate := newHarness(t, srv, eng.url, policy.Policy{Route: "rate", Cache: policy.CacheOff, RequestsPerSecond: 0.01, Burst: 2}, nil)
	for i := range 2 {
		if res := call(t, rate, "POST", "/v1/embeddings", embeddings(t, "rate")); res.Status != 200 {
			t.Fatalf("request %d: %d", i, res.Status)
		}
	}
	res := call(t, rate, "POST", "/v1/embeddings", embeddings(t, "rate"))
	if res.Status != http.StatusTooManyRequests || res.Header.Get("RateLimit-Policy") != `"requests";q=2;w=200` ||
		!stateField.MatchString(res.Header.Get("RateLimit")) || res.Header.Get("Retry-After") == "" {
		t.Fatalf("third request: %d %v", res.Status, res.Header)
	}

	budget := newHarness(t, srv, eng.url, policy.Policy{Route: "budget", Cache: policy.CacheOff, TokenBudget: 20, TokenWindow: time.Hour}, nil)
	long := embeddings(t, strings.Repeat("many words make many tokens ", 20))
	first := call(t, budget, "POST", "/v1/embeddings", long)
	if first.Status != 200 || !strings.Contains(string(first.Body), `"total_tokens"`) {
		t.Fatalf("first request: %d %s", first.Status, first.Body)
	}
	before := eng.requests(t)
	next := call(t, budget, "POST", "/v1/embeddings", embeddings(t, "short"))
	if next.Status != http.StatusTooManyRequests || !strings.HasPrefix(next.Header.Get("RateLimit"), `"tokens";r=0;`) {
		t.Fatalf("after overdrawing the token budget: %d %v", next.Status, next.Header)
	}
	if eng.requests(t) != before {
		t.Fatal("the blocked request reached the engine")
	}
}

func TestE2EReplicasShareCacheAndLimitThroughRedis(t *testing.T) {
	eng := startEngine(t)
	rds := redistest.Start(t)
	a := startExtProc(t, withRedis(rds.Addr))
	b := startExtProc(t, withRedis(rds.Addr))
	p := policy.Policy{Route: "embed", RequestsPerSecond: 0.001, Burst: 3}
	ha := newHarness(t, a, eng.url, p, nil)
	hb := newHarness(t, b, eng.url, p, nil)
	body := embeddings(t, "shared between replicas")
	before := eng.requests(t)
	first := call(t, ha, "POST", "/v1/embeddings", body, "X-Tenant-Id", "acme")
	if res := call(t, hb, "POST", "/v1/embeddings", body, "X-Tenant-Id", "acme"); !isHit(cacheStatus(t, res)) {
		t.Fatalf("replica b missed replica a's entry: a %q, b %q; redis errors a %v, b %v", first.Header.Get("Cache-Status"), res.Header.Get("Cache-Status"),
			metric(t, a.Registry(), "infergate_extproc_redis_errors_total"), metric(t, b.Registry(), "infergate_extproc_redis_errors_total"))
	}
	if got := eng.requests(t) - before; got != 1 {
		t.Fatalf("engine answered %v, want 1", got)
	}
	call(t, ha, "POST", "/v1/embeddings", body, "X-Tenant-Id", "acme")
	if res := call(t, hb, "POST", "/v1/embeddings", body, "X-Tenant-Id", "acme"); res.Status != http.StatusTooManyRequests {
		t.Fatalf("fourth request across replicas with a shared burst of 3: %d", res.Status)
	}

	// Redis dies: both replicas keep serving from their own memory and
	// the engine, with local limits.
	rds.Kill()
	fresh := newHarness(t, a, eng.url, policy.Policy{Route: "embed"}, nil)
	for _, input := range []string{"after the outage", "after the outage"} {
		if res := call(t, fresh, "POST", "/v1/embeddings", embeddings(t, input)); res.Status != 200 {
			t.Fatalf("during the outage: %d %s", res.Status, res.Body)
		}
	}
	if !isHit(cacheStatus(t, call(t, fresh, "POST", "/v1/embeddings", embeddings(t, "after the outage")))) {
		t.Fatal("in-process cache not used during the outage")
	}
}

func TestE2EBadInput(t *testing.T) {
	eng := startEngine(t)
	srv := startExtProc(t, nil)
	h := newHarness(t, srv, eng.url, policy.Policy{Route: "embed"}, func(c *harness.Config) { c.BufferLimit = 16 << 20 })
	cases := []struct {
		name   string
		body   []byte
		header []string
		want   int
	}{
		{"malformed JSON", []byte(`{"model":"use-lite","input":`), nil, http.StatusBadRequest},
		{"binary", []byte{0x89, 'P', 'N', 'G', 0, 0xff}, []string{"Content-Type", "application/octet-stream"}, http.StatusBadRequest},
		{"10 MB", fmt.Appendf(nil, `{"model":"use-lite","input":"%s"}`, strings.Repeat("word ", 2<<20)), nil, http.StatusRequestEntityTooLarge},
		{"no model, no content type", []byte(`{"input":"x"}`), []string{"Content-Type", ""}, http.StatusOK},
	}
	for _, c := range cases {
		for try := range 2 {
			res := call(t, h, "POST", "/v1/embeddings", c.body, c.header...)
			if res.Status != c.want {
				t.Errorf("%s, try %d: %d %s, want %d", c.name, try, res.Status, res.Body, c.want)
			}
			if cs := cacheStatus(t, res); c.want != 200 && (isHit(cs) || strings.Contains(cs, "stored")) {
				t.Errorf("%s, try %d: error response stored or served from cache: %q", c.name, try, cs)
			}
		}
	}
	over := newHarness(t, srv, eng.url, policy.Policy{Route: "embed"}, nil)
	if res := call(t, over, "POST", "/v1/embeddings", fmt.Appendf(nil, `{"input":"%s"}`, strings.Repeat("x", 2<<20))); res.Status != http.StatusRequestEntityTooLarge {
		t.Fatalf("body over the buffer limit: %d", res.Status)
	}
	if n := metric(t, srv.Registry(), "infergate_extproc_cache_store_decisions_total", "decision", "stored"); n > 1 {
		t.Fatalf("%v responses stored, want at most the one valid request's", n)
	}
}

// BenchmarkE2EHitVsMiss sends, per iteration, one request the engine must
// answer (a new input: a miss) and one the cache answers (a hit), through
// the harness and the ext_proc server, and the same new-input request
// straight to the engine; it reports the three latencies and the ratio of
// a miss to a hit.
func BenchmarkE2EHitVsMiss(b *testing.B) {
	eng := startEngine(b)
	srv := startExtProc(b, nil)
	h := newHarness(b, srv, eng.url, policy.Policy{Route: "embed"}, nil)
	hitBody := embeddings(b, "a sentence that is asked again and again")
	call(b, h, "POST", "/v1/embeddings", hitBody)
	var hit, miss, direct time.Duration
	i := 0
	for b.Loop() {
		i++
		start := time.Now()
		if res := call(b, h, "POST", "/v1/embeddings", embeddings(b, fmt.Sprintf("new sentence number %d about the weather", i))); res.Status != 200 {
			b.Fatalf("miss: %d", res.Status)
		}
		miss += time.Since(start)
		start = time.Now()
		if res := call(b, h, "POST", "/v1/embeddings", hitBody); !isHit(res.Header.Get("Cache-Status")) {
			b.Fatalf("hit: %q", res.Header.Get("Cache-Status"))
		}
		hit += time.Since(start)
		start = time.Now()
		resp, err := http.Post(eng.url+"/v1/embeddings", "application/json", strings.NewReader(string(embeddings(b, fmt.Sprintf("direct sentence number %d about the weather", i)))))
		if err != nil || resp.StatusCode != 200 {
			b.Fatalf("direct: %v %v", resp, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		direct += time.Since(start)
	}
	n := float64(i)
	b.ReportMetric(float64(hit.Microseconds())/n, "hit-µs")
	b.ReportMetric(float64(miss.Microseconds())/n, "miss-µs")
	b.ReportMetric(float64(direct.Microseconds())/n, "engine-direct-µs")
	b.ReportMetric(float64(miss)/float64(hit), "miss/hit")
}
