package extproc_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/infergate/infergate/config"
	"github.com/infergate/infergate/envoy/harness"
	"github.com/infergate/infergate/extproc"
	"github.com/infergate/infergate/internal/apierror"
	"github.com/infergate/infergate/policy"
)

// upstream is a real HTTP server standing where the engine stands, for
// the server's own tests; it counts requests and answers like the OpenAI
// embeddings API unless a test gives it another handler.
type upstream struct {
	*httptest.Server
	requests atomic.Int64
	mu       sync.Mutex
	last     *http.Request
	handler  func(w http.ResponseWriter, r *http.Request, body []byte)
}

func newUpstream(t testing.TB) *upstream {
	u := &upstream{handler: embeddingsAnswer(3)}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.requests.Add(1)
		body, _ := io.ReadAll(r.Body)
		u.mu.Lock()
		u.last = r
		h := u.handler
		u.mu.Unlock()
		h(w, r, body)
	}))
	t.Cleanup(u.Close)
	return u
}

func (u *upstream) set(h func(w http.ResponseWriter, r *http.Request, body []byte)) {
	u.mu.Lock()
	u.handler = h
	u.mu.Unlock()
}

func (u *upstream) lastHeader(name string) string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.last.Header.Get(name)
}

// embeddingsAnswer answers with a body that depends on the request (so a
// replay can be told from another request's answer) and the given usage.
func embeddingsAnswer(tokens int) func(http.ResponseWriter, *http.Request, []byte) {
	return func(w http.ResponseWriter, r *http.Request, body []byte) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Served-At", time.Now().Format(time.RFC3339Nano))
		fmt.Fprintf(w, `{"object":"list","data":[{"object":"embedding","index":0,"embedding":[%d]}],"usage":{"prompt_tokens":%d,"total_tokens":%d}}`, len(body), tokens, tokens)
	}
}

const embedBody = `{"model":"use-lite","input":"the cat sat on the mat"}`

func TestMissThenHit(t *testing.T) {
	up := newUpstream(t)
	srv := startExtProc(t, nil)
	h := newHarness(t, srv, up.URL, policy.Policy{Route: "embed", Priority: 7}, nil)

	miss := call(t, h, "POST", "/v1/embeddings", []byte(embedBody))
	if miss.Status != 200 || up.requests.Load() != 1 {
		t.Fatalf("miss: status %d, %d upstream requests", miss.Status, up.requests.Load())
	}
	status := cacheStatus(t, miss)
	if !strings.HasPrefix(status, "infergate; fwd=miss; fwd-status=200; stored; key=") {
		t.Fatalf("miss Cache-Status = %q", status)
	}
	if got := up.lastHeader(policy.ModelHeader); got != "use-lite" {
		t.Errorf("upstream saw %s = %q, want the body's model", policy.ModelHeader, got)
	}
	if got := up.lastHeader("X-Infergate-Priority"); got != "7" {
		t.Errorf("upstream saw priority %q, want 7", got)
	}
	if !miss.RouteCacheCleared {
		t.Error("model header set without clearing the route cache")
	}

	// Same request, other spelling and another caller's "user": a hit.
	same := []byte("{\n \"input\" : \"the cat sat on the mat\", \"user\": \"bob\",\n \"model\":\"use-lite\"}")
	hit := call(t, h, "POST", "/v1/embeddings", same)
	if up.requests.Load() != 1 {
		t.Fatalf("hit went upstream (%d requests)", up.requests.Load())
	}
	hs := cacheStatus(t, hit)
	if !regexp.MustCompile(`^infergate; hit; ttl=\d+; key="[^"]+"$`).MatchString(hs) {
		t.Fatalf("hit Cache-Status = %q", hs)
	}
	if hit.Status != 200 || !bytes.Equal(hit.Body, miss.Body) {
		t.Fatalf("hit: %d %q, want the stored %q", hit.Status, hit.Body, miss.Body)
	}
	if hit.Header.Get("Content-Type") != "application/json" || hit.Header.Get("X-Served-At") != miss.Header.Get("X-Served-At") {
		t.Errorf("hit headers %v do not replay the stored ones %v", hit.Header, miss.Header)
	}
	if hit.Header.Get("Age") == "" {
		t.Error("hit has no Age")
	}
	if hit.LocalReply != "infergate_cache_hit" {
		t.Errorf("hit answered by %q, want an ImmediateResponse", hit.LocalReply)
	}
	other := call(t, h, "POST", "/v1/embeddings", []byte(`{"model":"use-lite","input":"a dog"}`))
	if isHit(cacheStatus(t, other)) || up.requests.Load() != 2 {
		t.Fatal("a different input was served from cache")
	}
	reg := srv.Registry()
	if metric(t, reg, "infergate_extproc_cache_lookups_total", "route", "embed", "result", "hit") != 1 ||
		metric(t, reg, "infergate_extproc_cache_lookups_total", "route", "embed", "result", "miss") != 2 ||
		metric(t, reg, "infergate_extproc_cache_entries") != 2 {
		t.Error("lookup and entry metrics do not show 1 hit, 2 misses, 2 entries")
	}
}

func TestCacheControlAndStorability(t *testing.T) {
	up := newUpstream(t)
	srv := startExtProc(t, nil)
	h := newHarness(t, srv, up.URL, policy.Policy{Route: "embed"}, func(c *harness.Config) { c.BufferLimit = 4 << 20 })
	body := []byte(embedBody)

	// Request no-store: neither looked up nor stored.
	res := call(t, h, "POST", "/v1/embeddings", body, "Cache-Control", "no-store")
	if cs := cacheStatus(t, res); !strings.Contains(cs, "fwd=bypass") || strings.Contains(cs, "stored") {
		t.Fatalf("no-store: %q", cs)
	}
	res = call(t, h, "POST", "/v1/embeddings", body)
	if isHit(cacheStatus(t, res)) {
		t.Fatal("a no-store request's response was stored")
	}
	// Now stored; no-cache skips the lookup but stores the fresh answer.
	res = call(t, h, "POST", "/v1/embeddings", body, "Cache-Control", "no-cache")
	if cs := cacheStatus(t, res); !strings.HasPrefix(cs, "infergate; fwd=request; fwd-status=200; stored") {
		t.Fatalf("no-cache: %q", cs)
	}
	if up.requests.Load() != 3 {
		t.Fatalf("%d upstream requests, want 3", up.requests.Load())
	}
	if res := call(t, h, "POST", "/v1/embeddings", body); !isHit(cacheStatus(t, res)) {
		t.Fatal("entry stored by a no-cache request not served")
	}

	// Responses that must not be stored.
	for _, c := range []struct {
		name, detail string
		answer       func(http.ResponseWriter, *http.Request, []byte)
	}{
		{"no-store", "no-store", func(w http.ResponseWriter, _ *http.Request, _ []byte) {
			w.Header().Set("Cache-Control", "no-store")
			io.WriteString(w, `{"x":1}`)
		}},
		{"private", "private", func(w http.ResponseWriter, _ *http.Request, _ []byte) {
			w.Header().Set("Cache-Control", "private, max-age=60")
			io.WriteString(w, `{"x":1}`)
		}},
		{"private on a second line", "private", func(w http.ResponseWriter, _ *http.Request, _ []byte) {
			w.Header().Add("Cache-Control", "max-age=60")
			w.Header().Add("Cache-Control", "private")
			io.WriteString(w, `{"x":1}`)
		}},
		{"s-maxage=0", "stale", func(w http.ResponseWriter, _ *http.Request, _ []byte) {
			w.Header().Set("Cache-Control", "max-age=600, s-maxage=0")
			io.WriteString(w, `{"x":1}`)
		}},
		{"503", "status", func(w http.ResponseWriter, _ *http.Request, _ []byte) {
			w.WriteHeader(503)
			io.WriteString(w, `{"error":"busy"}`)
		}},
		{"too large", "too-large", func(w http.ResponseWriter, _ *http.Request, _ []byte) {
			w.Write(bytes.Repeat([]byte("x"), 2<<20))
		}},
	} {
		up.set(c.answer)
		b := []byte(`{"input":"` + c.name + `"}`)
		before := up.requests.Load()
		first := call(t, h, "POST", "/v1/embeddings", b)
		second := call(t, h, "POST", "/v1/embeddings", b)
		if up.requests.Load()-before != 2 || isHit(cacheStatus(t, second)) {
			t.Errorf("%s: response was stored", c.name)
		}
		if cs := cacheStatus(t, first); !strings.Contains(cs, `detail="`+c.detail+`"`) {
			t.Errorf("%s: Cache-Status %q lacks detail=%q", c.name, cs, c.detail)
		}
		if first.Status != second.Status || first.Status == 0 {
			t.Errorf("%s: client saw %d then %d", c.name, first.Status, second.Status)
		}
	}
}

func TestOriginMaxAgeCapsTheRouteTTL(t *testing.T) {
	up := newUpstream(t)
	up.set(func(w http.ResponseWriter, _ *http.Request, _ []byte) {
		w.Header().Set("Cache-Control", "max-age=30")
		io.WriteString(w, `{"x":1}`)
	})
	srv := startExtProc(t, nil)
	h := newHarness(t, srv, up.URL, policy.Policy{Route: "embed", TTL: time.Hour}, nil)
	call(t, h, "POST", "/v1/embeddings", []byte(embedBody))
	cs := cacheStatus(t, call(t, h, "POST", "/v1/embeddings", []byte(embedBody)))
	m := regexp.MustCompile(`; ttl=(\d+)`).FindStringSubmatch(cs)
	if !isHit(cs) || m == nil {
		t.Fatalf("second request: %q, want a hit with a ttl", cs)
	}
	if ttl, _ := strconv.Atoi(m[1]); ttl > 30 {
		t.Fatalf("hit ttl=%d, but the origin allowed only max-age=30", ttl)
	}
}

// Envoy picks the route, and so the policy, on the client's headers; a
// client that names one model in x-infergate-model and another in the body
// would be limited by the first route's policy and served by the second.
func TestModelHeaderContradictingTheBodyIsRefused(t *testing.T) {
	up := newUpstream(t)
	srv := startExtProc(t, nil)
	h := newHarness(t, srv, up.URL, policy.Policy{Route: "cheap"}, nil)
	res := call(t, h, "POST", "/v1/embeddings", []byte(embedBody), "X-Infergate-Model", "cheap-model")
	if res.Status != http.StatusBadRequest || !strings.Contains(string(res.Body), policy.ModelHeader) {
		t.Fatalf("status %d body %q, want 400 naming %s", res.Status, res.Body, policy.ModelHeader)
	}
	if up.requests.Load() != 0 {
		t.Fatal("the request reached the upstream")
	}
	// The same model in both is what routing by model sends anyway.
	if res := call(t, h, "POST", "/v1/embeddings", []byte(embedBody), "X-Infergate-Model", "use-lite"); res.Status != 200 {
		t.Fatalf("matching header: status %d", res.Status)
	}
}

// A body that JSON parsers read differently (a duplicate key, a field that
// differs from one the server reads only in case) is refused: routing,
// limits and the cache key would follow one reading, the engine (Go's
// encoding/json: last key wins, any case) another.
func TestAmbiguousBodiesAreRefused(t *testing.T) {
	up := newUpstream(t)
	srv := startExtProc(t, nil)
	h := newHarness(t, srv, up.URL, policy.Policy{Route: "cheap"}, nil)
	for _, body := range []string{
		`{"model":"cheap","model":"expensive","input":"x"}`,
		`{"model":"cheap","input":{"a":1,"a":2}}`,
		`{"Model":"expensive","input":"x"}`,
		`{"model":"cheap","MODEL":"expensive","input":"x"}`,
		`{"model":"cheap","temperature":0,"Temperature":1,"messages":[]}`,
		`{"model":"cheap","\u017ftream":true,"input":"x"}`, // ſ folds to s
	} {
		res := call(t, h, "POST", "/v1/embeddings", []byte(body), "X-Infergate-Model", "cheap")
		msg, _ := apierror.Message(res.Body)
		if res.Status != http.StatusBadRequest || !strings.Contains(msg, "ambiguous JSON body") {
			t.Errorf("%s: %d %q, want 400 saying the body is ambiguous", body, res.Status, res.Body)
		}
	}
	if up.requests.Load() != 0 {
		t.Errorf("%d ambiguous requests reached the upstream", up.requests.Load())
	}
	if res := call(t, h, "POST", "/v1/embeddings", []byte(`{"model":"cheap","input":"x","Input2":1}`)); res.Status != http.StatusOK {
		t.Errorf("a body with other mixed-case fields: %d, want 200", res.Status)
	}
}

// Envoy normalizes a path in one pass, so "/v1/embedding%7%33" reaches
// routing, and ext_proc, as "/v1/embedding%73": it missed the embeddings
// route, and the engine would decode it and serve /v1/embeddings.
func TestPathWithAnEscapeAServerWouldDecodeIsRefused(t *testing.T) {
	up := newUpstream(t)
	h := newHarness(t, startExtProc(t, nil), up.URL, policy.Policy{Route: "catch-all"}, nil)
	res := call(t, h, "POST", "/v1/embedding%73", []byte(embedBody))
	if msg, _ := apierror.Message(res.Body); res.Status != http.StatusBadRequest || !strings.Contains(msg, "escape") {
		t.Errorf("%d %s, want 400 naming the escape", res.Status, res.Body)
	}
	if res := call(t, h, "POST", "/v2/models/a%20b/infer", []byte(`{"inputs":[]}`)); res.Status != http.StatusOK {
		t.Errorf("an escaped space: %d, want it served", res.Status)
	}
	if up.requests.Load() != 1 {
		t.Errorf("upstream saw %d requests, want only the second", up.requests.Load())
	}
}

// The body's model travels on as a header, which cannot carry control
// characters; the client is told, instead of Envoy answering 500.
func TestModelNameAHeaderCannotCarryIsRefused(t *testing.T) {
	up := newUpstream(t)
	h := newHarness(t, startExtProc(t, nil), up.URL, policy.Policy{Route: "embed"}, nil)
	res := call(t, h, "POST", "/v1/embeddings", []byte(`{"model":"a\u0001b","input":"x"}`))
	if msg, _ := apierror.Message(res.Body); res.Status != http.StatusBadRequest || !strings.Contains(msg, "control characters") {
		t.Errorf("%d %s, want 400 naming the control characters", res.Status, res.Body)
	}
	if up.requests.Load() != 0 {
		t.Error("the request reached the upstream")
	}
}

func TestNonDeterministicRequestsAreNotCached(t *testing.T) {
	up := newUpstream(t)
	srv := startExtProc(t, nil)
	h := newHarness(t, srv, up.URL, policy.Policy{Route: "chat"}, nil)
	sampled := []byte(`{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0.8}`)
	for range 2 {
		if cs := cacheStatus(t, call(t, h, "POST", "/v1/chat/completions", sampled)); !strings.Contains(cs, `detail="non-deterministic"`) {
			t.Fatalf("sampled request: %q", cs)
		}
	}
	greedy := []byte(`{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0}`)
	call(t, h, "POST", "/v1/chat/completions", greedy)
	if !isHit(cacheStatus(t, call(t, h, "POST", "/v1/chat/completions", greedy))) {
		t.Fatal("temperature 0 request not cached")
	}

	// A route may opt in: the sampled request is then cached like any other.
	optIn := newHarness(t, srv, up.URL, policy.Policy{Route: "chat-any", CacheNonDeterministic: true}, nil)
	call(t, optIn, "POST", "/v1/chat/completions", sampled)
	if cs := cacheStatus(t, call(t, optIn, "POST", "/v1/chat/completions", sampled)); !isHit(cs) {
		t.Fatalf("route with cache_nondeterministic: second sampled request %q, want a hit", cs)
	}
}

func TestTenantIsolation(t *testing.T) {
	up := newUpstream(t)
	srv := startExtProc(t, nil)
	private := newHarness(t, srv, up.URL, policy.Policy{Route: "private"}, nil)
	body := []byte(embedBody)

	call(t, private, "POST", "/v1/embeddings", body, "X-Tenant-Id", "acme")
	if isHit(cacheStatus(t, call(t, private, "POST", "/v1/embeddings", body, "X-Tenant-Id", "globex"))) {
		t.Fatal("tenant globex was served tenant acme's entry")
	}
	if isHit(cacheStatus(t, call(t, private, "POST", "/v1/embeddings", body))) {
		t.Fatal("a request without tenant was served acme's entry")
	}
	if !isHit(cacheStatus(t, call(t, private, "POST", "/v1/embeddings", body, "X-Tenant-Id", "acme"))) {
		t.Fatal("acme missed its own entry")
	}
	// Callers known by API key are kept apart by the key's hash.
	call(t, private, "POST", "/v1/embeddings", body, "Authorization", "Bearer key-one")
	if isHit(cacheStatus(t, call(t, private, "POST", "/v1/embeddings", body, "Authorization", "Bearer key-two"))) {
		t.Fatal("API key two was served key one's entry")
	}
	if !isHit(cacheStatus(t, call(t, private, "POST", "/v1/embeddings", body, "Authorization", "Bearer key-one"))) {
		t.Fatal("API key one missed its own entry")
	}

	shared := newHarness(t, srv, up.URL, policy.Policy{Route: "shared", SharedCache: true}, nil)
	call(t, shared, "POST", "/v1/embeddings", body, "X-Tenant-Id", "acme")
	if !isHit(cacheStatus(t, call(t, shared, "POST", "/v1/embeddings", body, "X-Tenant-Id", "globex"))) {
		t.Fatal("shared route did not share its entry across tenants")
	}
}

func TestCollapsedRequestsReachUpstreamOnce(t *testing.T) {
	up := newUpstream(t)
	release := make(chan struct{})
	up.set(func(w http.ResponseWriter, r *http.Request, body []byte) {
		<-release
		embeddingsAnswer(3)(w, r, body)
	})
	srv := startExtProc(t, longCollapse)
	h := newHarness(t, srv, up.URL, policy.Policy{Route: "embed"}, nil)

	const n = 6
	results := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res := call(t, h, "POST", "/v1/embeddings", []byte(embedBody))
			if res.Status == 200 {
				results[i] = res.Header.Get("Cache-Status")
			}
		}()
	}
	// Release the leader once every follower waits behind it.
	eventually(t, "followers to queue", func() bool {
		return metric(t, srv.Registry(), "infergate_extproc_collapse_waiting") == n-1
	})
	close(release)
	wg.Wait()
	if got := up.requests.Load(); got != 1 {
		t.Fatalf("%d identical concurrent requests reached upstream %d times, want 1", n, got)
	}
	collapsed := 0
	for _, cs := range results {
		if strings.Contains(cs, "collapsed") {
			collapsed++
		}
	}
	if collapsed != n-1 {
		t.Fatalf("Cache-Status values %q: want %d collapsed", results, n-1)
	}
}

func TestCollapsedFollowersGoUpstreamWhenTheLeaderFails(t *testing.T) {
	up := newUpstream(t)
	release := make(chan struct{})
	var first atomic.Bool
	up.set(func(w http.ResponseWriter, r *http.Request, body []byte) {
		if first.CompareAndSwap(false, true) {
			<-release
			w.WriteHeader(http.StatusBadGateway)
			io.WriteString(w, `{"error":"model crashed"}`)
			return
		}
		embeddingsAnswer(3)(w, r, body)
	})
	srv := startExtProc(t, longCollapse)
	h := newHarness(t, srv, up.URL, policy.Policy{Route: "embed"}, nil)
	const n = 4
	statuses := make([]int, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			statuses[i] = call(t, h, "POST", "/v1/embeddings", []byte(embedBody)).Status
		}()
	}
	eventually(t, "followers to queue", func() bool {
		return metric(t, srv.Registry(), "infergate_extproc_collapse_waiting") == n-1
	})
	close(release)
	wg.Wait()
	if got := up.requests.Load(); got != n {
		t.Fatalf("upstream saw %d requests, want %d (leader failed, followers go themselves)", got, n)
	}
	bad := 0
	for _, s := range statuses {
		if s == http.StatusBadGateway {
			bad++
		}
	}
	if bad != 1 {
		t.Fatalf("statuses %v: want exactly the leader's 502", statuses)
	}
}

// longCollapse lets followers wait as long as a slow test machine needs.
func longCollapse(c *config.ExtProc) { c.Cache.CollapseWait = 5 * time.Minute }

// rateLimitFields parses the two structured fields for assertions.
var (
	policyField = regexp.MustCompile(`^"(\w+)";q=(\d+);w=(\d+)$`)
	stateField  = regexp.MustCompile(`^"(\w+)";r=(\d+);t=(\d+)$`)
)

func TestRequestRateLimit429(t *testing.T) {
	up := newUpstream(t)
	srv := startExtProc(t, nil)
	// 3 at once, then one per 100 s.
	h := newHarness(t, srv, up.URL, policy.Policy{Route: "embed", Cache: policy.CacheOff, RequestsPerSecond: 0.01, Burst: 3}, nil)
	for i := range 3 {
		res := call(t, h, "POST", "/v1/embeddings", []byte(embedBody), "X-Tenant-Id", "acme")
		if res.Status != 200 {
			t.Fatalf("request %d within burst: %d", i, res.Status)
		}
		if got, want := res.Header.Get("RateLimit"), fmt.Sprintf(`"requests";r=%d;t=%d`, 2-i, 100*(i+1)); got != want {
			t.Errorf("request %d RateLimit = %q, want %q", i, got, want)
		}
	}
	res := call(t, h, "POST", "/v1/embeddings", []byte(embedBody), "X-Tenant-Id", "acme")
	if res.Status != http.StatusTooManyRequests {
		t.Fatalf("over the limit: %d", res.Status)
	}
	if got := res.Header.Get("RateLimit-Policy"); got != `"requests";q=3;w=300` {
		t.Errorf("RateLimit-Policy = %q", got)
	}
	m := stateField.FindStringSubmatch(res.Header.Get("RateLimit"))
	if m == nil || m[2] != "0" {
		t.Fatalf("RateLimit = %q, want r=0", res.Header.Get("RateLimit"))
	}
	if ra := res.Header.Get("Retry-After"); ra != m[3] || ra == "0" {
		t.Errorf("Retry-After %q, RateLimit t=%s: want the same positive delay", ra, m[3])
	}
	var body struct {
		Error struct{ Message, Type, Code string }
	}
	if json.Unmarshal(res.Body, &body) != nil || body.Error.Message == "" || body.Error.Code != "rate_limit_exceeded" {
		t.Errorf("429 body %q is not OpenAI's rate-limit error object", res.Body)
	}
	if up.requests.Load() != 3 {
		t.Errorf("upstream saw %d requests, want 3", up.requests.Load())
	}
	if res := call(t, h, "POST", "/v1/embeddings", []byte(embedBody), "X-Tenant-Id", "globex"); res.Status != 200 {
		t.Errorf("another tenant was limited too: %d", res.Status)
	}
	if metric(t, srv.Registry(), "infergate_extproc_ratelimit_decisions_total", "decision", "denied") != 1 {
		t.Error("denial not counted")
	}
}

func TestTokenBudgetOverdrawBlocksNextRequests(t *testing.T) {
	up := newUpstream(t)
	up.set(embeddingsAnswer(500))
	srv := startExtProc(t, nil)
	h := newHarness(t, srv, up.URL, policy.Policy{Route: "embed", Cache: policy.CacheOff, TokenBudget: 100, TokenWindow: time.Hour}, nil)
	first := call(t, h, "POST", "/v1/embeddings", []byte(embedBody), "X-Tenant-Id", "acme")
	if first.Status != 200 {
		t.Fatalf("first request: %d", first.Status)
	}
	res := call(t, h, "POST", "/v1/embeddings", []byte(embedBody), "X-Tenant-Id", "acme")
	if res.Status != http.StatusTooManyRequests {
		t.Fatalf("after a 500-token response on a 100-token budget: %d", res.Status)
	}
	if got := res.Header.Get("RateLimit-Policy"); got != `"tokens";q=100;w=3600` {
		t.Errorf("RateLimit-Policy = %q", got)
	}
	// 400 tokens over budget at 100 per hour: about 4 hours to recover.
	ra := res.Header.Get("Retry-After")
	var secs int
	fmt.Sscan(ra, &secs)
	if secs < 4*3600-60 || secs > 4*3600+1 {
		t.Errorf("Retry-After = %q, want about 4 hours", ra)
	}
	if up.requests.Load() != 1 {
		t.Errorf("upstream saw %d requests, want 1", up.requests.Load())
	}
}

// An answer that reports no usage still costs tokens: an event stream
// without stream_options.include_usage (OpenAI's default) is charged a
// token per event, plus the prompt's estimate.
func TestTokenBudgetChargesStreamsWithoutUsage(t *testing.T) {
	up := newUpstream(t)
	up.set(func(w http.ResponseWriter, r *http.Request, body []byte) {
		w.Header().Set("Content-Type", "text/event-stream")
		for range 20 {
			io.WriteString(w, "data: {\"choices\":[{\"delta\":{\"content\":\"word\"}}]}\n\n")
			w.(http.Flusher).Flush()
		}
		io.WriteString(w, "data: [DONE]\n\n")
	})
	srv := startExtProc(t, nil)
	h := newHarness(t, srv, up.URL, policy.Policy{Route: "chat", Cache: policy.CacheOff, TokenBudget: 10, TokenWindow: time.Hour}, nil)
	req := []byte(`{"model":"m","stream":true,"messages":[{"role":"user","content":"tell me a story"}]}`)
	if first := call(t, h, "POST", "/v1/chat/completions", req, "X-Tenant-Id", "acme"); first.Status != http.StatusOK {
		t.Fatalf("first stream: %d", first.Status)
	}
	if second := call(t, h, "POST", "/v1/chat/completions", req, "X-Tenant-Id", "acme"); second.Status != http.StatusTooManyRequests {
		t.Errorf("after a 21-event stream on a 10-token budget: %d, want 429", second.Status)
	}
}

func TestEventStreamIsStoredOnlyWhenComplete(t *testing.T) {
	up := newUpstream(t)
	complete := "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"total_tokens\":5}}\n\ndata: [DONE]\n\n"
	up.set(func(w http.ResponseWriter, r *http.Request, body []byte) {
		w.Header().Set("Content-Type", "text/event-stream")
		text := complete
		if bytes.Contains(body, []byte("cut")) {
			text = strings.TrimSuffix(text, "data: [DONE]\n\n")
		}
		for _, ev := range strings.SplitAfter(text, "\n\n") {
			io.WriteString(w, ev)
			w.(http.Flusher).Flush()
		}
	})
	srv := startExtProc(t, nil)
	h := newHarness(t, srv, up.URL, policy.Policy{Route: "chat"}, nil)
	req := []byte(`{"model":"m","stream":true,"messages":[{"role":"user","content":"x"}],"temperature":0}`)
	miss := call(t, h, "POST", "/v1/chat/completions", req)
	if string(miss.Body) != complete {
		t.Fatalf("stream through ext_proc: body %q", miss.Body)
	}
	if !switchedToStreamed(miss) {
		t.Fatal("event stream not switched to STREAMED")
	}
	hit := call(t, h, "POST", "/v1/chat/completions", req)
	if !isHit(cacheStatus(t, hit)) || string(hit.Body) != complete || hit.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("replay: %q %q %q", hit.Header.Get("Cache-Status"), hit.Header.Get("Content-Type"), hit.Body)
	}
	cut := []byte(`{"model":"m","stream":true,"messages":[{"role":"user","content":"cut"}],"temperature":0}`)
	call(t, h, "POST", "/v1/chat/completions", cut)
	if isHit(cacheStatus(t, call(t, h, "POST", "/v1/chat/completions", cut))) {
		t.Fatal("a stream without [DONE] was stored")
	}
	if metric(t, srv.Registry(), "infergate_extproc_cache_store_decisions_total", "decision", "incomplete-stream") != 2 {
		t.Error("incomplete streams not counted")
	}
}

func TestBadInputIsServedAndNeverStored(t *testing.T) {
	up := newUpstream(t)
	up.set(func(w http.ResponseWriter, r *http.Request, body []byte) {
		if r.Method == http.MethodPost && !json.Valid(body) {
			w.WriteHeader(http.StatusBadRequest)
			io.WriteString(w, `{"error":"body is not JSON"}`)
			return
		}
		embeddingsAnswer(3)(w, r, body)
	})
	srv := startExtProc(t, func(c *config.ExtProc) { c.MaxBodyBytes = 16 << 20 })
	h := newHarness(t, srv, up.URL, policy.Policy{Route: "embed"}, func(c *harness.Config) { c.BufferLimit = 32 << 20 })

	for name, body := range map[string][]byte{
		"malformed JSON": []byte(`{"model":"use-lite","input":`),
		"binary":         {0x89, 'P', 'N', 'G', 0, 0xff, 0xfe, '\n'},
	} {
		for i := range 2 {
			res := call(t, h, "POST", "/v1/embeddings", body)
			if res.Status != http.StatusBadRequest {
				t.Errorf("%s, try %d: status %d, want the engine's 400", name, i, res.Status)
			}
			if isHit(cacheStatus(t, res)) {
				t.Errorf("%s: served from cache", name)
			}
		}
	}
	// A 10 MB JSON body is processed (Envoy's limit allows it here), goes
	// upstream and is answered; the key is a hash, nothing large is kept.
	big := []byte(`{"model":"use-lite","input":"` + strings.Repeat("a", 10<<20) + `"}`)
	if res := call(t, h, "POST", "/v1/embeddings", big); res.Status != 200 {
		t.Fatalf("10 MB body: %d", res.Status)
	}
	// Headers-only request with no tenant, no content type.
	if res := call(t, h, "GET", "/v1/models", nil); res.Status != 200 {
		t.Fatalf("GET without body: %d", res.Status)
	}
}

func TestBodyOverEnvoysBufferLimit(t *testing.T) {
	up := newUpstream(t)
	srv := startExtProc(t, nil)
	h := newHarness(t, srv, up.URL, policy.Policy{Route: "embed"}, nil) // Envoy's default 1 MiB
	big := []byte(`{"input":"` + strings.Repeat("a", 2<<20) + `"}`)
	res := call(t, h, "POST", "/v1/embeddings", big)
	if res.Status != http.StatusRequestEntityTooLarge || up.requests.Load() != 0 {
		t.Fatalf("2 MiB body over a 1 MiB buffer: status %d, %d upstream", res.Status, up.requests.Load())
	}
	if metric(t, srv.Registry(), "infergate_extproc_cache_entries") != 0 {
		t.Fatal("something was stored")
	}
}

func TestBodyOverServerLimitFailsOpen(t *testing.T) {
	up := newUpstream(t)
	srv := startExtProc(t, func(c *config.ExtProc) { c.MaxBodyBytes = 64 << 10 })
	h := newHarness(t, srv, up.URL, policy.Policy{Route: "embed"}, nil)
	big := []byte(`{"input":"` + strings.Repeat("a", 512<<10) + `"}`)
	res := call(t, h, "POST", "/v1/embeddings", big)
	// gRPC refuses the oversized message; failure_mode_allow lets the
	// request through unprocessed, and nothing is stored.
	if res.Status != 200 || up.requests.Load() != 1 {
		t.Fatalf("status %d, %d upstream requests", res.Status, up.requests.Load())
	}
	if metric(t, srv.Registry(), "infergate_extproc_cache_entries") != 0 {
		t.Fatal("something was stored")
	}
}

// switchedToStreamed reports whether the server asked Envoy to stream the
// response body.
func switchedToStreamed(res *harness.Result) bool {
	for _, r := range res.Received() {
		if r.GetResponseHeaders() != nil {
			return r.GetModeOverride().GetResponseBodyMode() == extproc.StreamedResponseMode.GetResponseBodyMode()
		}
	}
	return false
}
