package semantic

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/infergate/infergate/policy"
)

func semanticPolicy(route string) policy.Policy {
	p := policy.Policy{Route: route, Cache: policy.CacheSemantic, SemanticThreshold: 0.85, TTL: time.Minute}
	p.Normalize()
	return p
}

func chat(system, question string) []byte {
	return fmt.Appendf(nil, `{"model":"gpt-test","temperature":0,"messages":[{"role":"system","content":%q},{"role":"user","content":%q}]}`, system, question)
}

func req(scope, system, question string) Request {
	return Request{Policy: semanticPolicy("chat"), Scope: scope, Path: "/v1/chat/completions", Body: chat(system, question)}
}

func newTestCache(t *testing.T, cfg Config, emb Embedder) *Cache {
	t.Helper()
	if cfg.EmbedTimeout == 0 {
		// The budget has its own test; elsewhere an embedding slowed down
		// by -race on a busy machine must not turn an expected hit into a
		// miss.
		cfg.EmbedTimeout = time.Minute
	}
	c, err := New(cfg, emb, prometheus.NewRegistry(), nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func answer(s string) StoredResponse {
	return StoredResponse{Status: 200, Headers: [][2]string{{"content-type", "application/json"}}, Body: []byte(s)}
}

func mustStore(t *testing.T, c *Cache, r Request, resp StoredResponse) {
	t.Helper()
	if err := c.Store(context.Background(), r, resp); err != nil {
		t.Fatalf("Store: %v", err)
	}
	c.Wait()
}

func TestParaphraseIsAHitWithHeaders(t *testing.T) {
	c := newTestCache(t, Config{}, useLite(t))
	mustStore(t, c, req("acme", "You are a support bot.", "How do I reset my password?"), answer(`{"answer":"reset"}`))
	hit, ok := c.Lookup(context.Background(), req("acme", "You are a support bot.", "How can I reset my password?"))
	if !ok {
		t.Fatal("paraphrase missed")
	}
	if string(hit.Response.Body) != `{"answer":"reset"}` || hit.Response.Headers[0][1] != "application/json" {
		t.Fatalf("hit response = %+v", hit.Response)
	}
	h := hit.Headers()
	if h[0] != [2]string{"cache-status", "infergate; hit; detail=semantic"} {
		t.Errorf("cache-status header = %v", h[0])
	}
	if h[1][0] != "x-infergate-similarity" || !strings.HasPrefix(h[1][1], "0.9") {
		t.Errorf("similarity header = %v (similarity %v)", h[1], hit.Similarity)
	}
	if got := counterValue(c.met.lookups.WithLabelValues(outcomeHit)); got != 1 {
		t.Errorf("hit counter = %v", got)
	}
}

func TestNearDuplicateWithAnotherNumberMisses(t *testing.T) {
	stored := req("acme", "You are a support bot.", "Can I get a refund within 30 days of purchase?")
	query := req("acme", "You are a support bot.", "Can I get a refund within 60 days of purchase?")
	guarded := newTestCache(t, Config{}, useLite(t))
	mustStore(t, guarded, stored, answer("yes, 30"))
	if hit, ok := guarded.Lookup(context.Background(), query); ok {
		t.Fatalf("served %q for a question about another number", hit.Response.Body)
	}
	if got := counterValue(guarded.met.refusals.WithLabelValues(refuseNumber)); got != 1 {
		t.Errorf("number refusals = %v, want 1", got)
	}
	// the embedding alone would have served it: that is what the guard is for
	unguarded := newTestCache(t, Config{GuardOff: true}, useLite(t))
	mustStore(t, unguarded, stored, answer("yes, 30"))
	if _, ok := unguarded.Lookup(context.Background(), query); !ok {
		t.Error("without the guard the near-duplicate scores below the threshold; the test does not exercise the guard")
	}
}

// An operator's synonyms turn a refused swap into a hit, on that cache only.
func TestConfiguredSynonymsAreAnswered(t *testing.T) {
	stored := req("acme", "You are a cooking assistant.", "How do I thaw frozen chicken?")
	query := req("acme", "You are a cooking assistant.", "How do I defrost frozen chicken?")
	for _, tc := range []struct {
		synonyms [][]string
		hit      bool
	}{{nil, false}, {[][]string{{"thaw", "defrost"}}, true}} {
		c := newTestCache(t, Config{Synonyms: tc.synonyms}, useLite(t))
		mustStore(t, c, stored, answer("thaw it in the fridge"))
		if _, ok := c.Lookup(context.Background(), query); ok != tc.hit {
			t.Errorf("synonyms %v: hit = %v, want %v", tc.synonyms, ok, tc.hit)
		}
	}
}

func TestScopeIsolation(t *testing.T) {
	c := newTestCache(t, Config{}, useLite(t))
	mustStore(t, c, req("acme", "You are a support bot.", "How do I reset my password?"), answer("acme's answer"))
	misses := map[string]Request{
		"another tenant":        req("globex", "You are a support bot.", "How do I reset my password?"),
		"another system prompt": req("acme", "You are a pirate.", "How do I reset my password?"),
		"another route": {Policy: semanticPolicy("other"), Scope: "acme", Path: "/v1/chat/completions",
			Body: chat("You are a support bot.", "How do I reset my password?")},
		"a route without semantic caching": {Policy: policy.Default(), Scope: "acme", Path: "/v1/chat/completions",
			Body: chat("You are a support bot.", "How do I reset my password?")},
	}
	for name, r := range misses {
		if hit, ok := c.Lookup(context.Background(), r); ok {
			t.Errorf("%s: served %q", name, hit.Response.Body)
		}
	}
	if _, ok := c.Lookup(context.Background(), req("acme", "You are a support bot.", "How do I reset my password?")); !ok {
		t.Error("the same request in the same scope missed")
	}
	// Another embedding model's vectors (a replica mid-way through a model
	// change, say) are never compared with these.
	other := newTestCache(t, Config{EmbeddingModel: "other-model"}, useLite(t))
	r := req("acme", "You are a support bot.", "How do I reset my password?")
	if mustPrepare(t, c, r).scope == mustPrepare(t, other, r).scope {
		t.Error("two embedding models share a scope")
	}
}

func TestEngineDownIsAMiss(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there any more
	c := newTestCache(t, Config{}, NewEngineEmbedder("http://"+addr, "use-lite", nil))
	// an entry from a time the engine was up
	up := newTestCache(t, Config{}, useLite(t))
	mustStore(t, up, req("acme", "s", "How do I reset my password?"), answer("a"))
	for _, e := range up.entries {
		c.insert(&entry{key: e.key, scope: e.scope, question: e.question, vec: e.vec, resp: e.resp, expires: e.expires})
	}
	if _, ok := c.Lookup(context.Background(), req("acme", "s", "How can I reset my password?")); ok {
		t.Fatal("hit without an embedding")
	}
	if got := counterValue(c.met.lookups.WithLabelValues(outcomeEmbedFailed)); got != 1 {
		t.Errorf("embed_failed lookups = %v, want 1", got)
	}
	if err := c.Store(context.Background(), req("acme", "s", "Another question"), answer("b")); err != nil {
		t.Errorf("Store: %v", err)
	}
	c.Wait()
	if got := counterValue(c.met.stores.WithLabelValues(outcomeEmbedFailed)); got != 1 || c.Len() != 1 {
		t.Errorf("after a store without embedding: %v embed_failed stores, %d entries; want 1 and 1", got, c.Len())
	}
}

// The model reads 128 tokens: questions that share a long beginning and
// differ after it would embed alike, so they are not cached at all.
func TestQuestionsLongerThanTheModelReadsAreNotCached(t *testing.T) {
	preamble := strings.Repeat("The quarterly report covers revenue, costs, hiring plans and the outlook for the coming year in some detail. ", 6)
	c := newTestCache(t, Config{}, useLite(t))
	mustStore(t, c, req("acme", "s", "How do I reset my password?"), answer("short"))
	mustStore(t, c, req("acme", "s", preamble+"Is this good?"), answer("good"))
	if c.Len() != 1 {
		t.Fatalf("%d entries, want only the short question's", c.Len())
	}
	if hit, ok := c.Lookup(context.Background(), req("acme", "s", preamble+"Is this bad?")); ok {
		t.Fatalf("a long question was answered with %q", hit.Response.Body)
	}
	if got := counterValue(c.met.lookups.WithLabelValues(outcomeUncacheable)); got != 1 {
		t.Errorf("uncacheable lookups = %v, want 1", got)
	}
}

// The engine says 413 to a text over its model's limit when asked not to
// truncate; the embedder reports ErrTooLong.
func TestEngineEmbedderAsksNotToTruncate(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body struct{ Truncate *bool }
		_ = json.NewDecoder(r.Body).Decode(&body)
		if body.Truncate == nil || *body.Truncate {
			t.Errorf("truncate = %v, want false", body.Truncate)
		}
		http.Error(w, `{"error":"input 0 has 300 tokens"}`, http.StatusRequestEntityTooLarge)
	}))
	defer srv.Close()
	if _, err := NewEngineEmbedder(srv.URL, "use-lite", nil).Embed(context.Background(), []string{"long"}); !errors.Is(err, ErrTooLong) {
		t.Errorf("Embed = %v, want ErrTooLong", err)
	}
}

func TestSaturatedEngineIsLeftAlone(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.Header().Set("Retry-After", "5")
		http.Error(w, `{"error":"queue full"}`, http.StatusTooManyRequests)
	}))
	defer srv.Close()
	emb := NewEngineEmbedder(srv.URL, "use-lite", srv.Client())
	c := newTestCache(t, Config{}, emb)
	c.insert(&entry{key: "k", scope: mustPrepare(t, c, req("acme", "s", "q")).scope, question: "q", vec: unit(512, 1), expires: time.Now().Add(time.Minute)})
	for range 5 {
		if _, ok := c.Lookup(context.Background(), req("acme", "s", "How can I reset my password?")); ok {
			t.Fatal("hit from a saturated engine")
		}
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("engine called %d times during its Retry-After, want 1", n)
	}
	if got := counterValue(c.met.lookups.WithLabelValues(outcomeSaturated)); got != 5 {
		t.Errorf("saturated lookups = %v, want 5", got)
	}
}

func TestSlowEngineIsBoundedByTheBudget(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	c := newTestCache(t, Config{EmbedTimeout: 50 * time.Millisecond}, NewEngineEmbedder(srv.URL, "use-lite", srv.Client()))
	c.insert(&entry{key: "k", scope: mustPrepare(t, c, req("acme", "s", "q")).scope, question: "q", vec: unit(512, 1), expires: time.Now().Add(time.Minute)})
	done := make(chan bool)
	go func() {
		_, ok := c.Lookup(context.Background(), req("acme", "s", "q"))
		done <- ok
	}()
	select {
	case ok := <-done:
		if ok {
			t.Fatal("hit without an embedding")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("lookup waited on a stalled engine past its budget")
	}
}

func TestEntriesExpire(t *testing.T) {
	c := newTestCache(t, Config{}, useLite(t))
	now := time.Now()
	c.now = func() time.Time { return now }
	r := req("acme", "s", "How do I reset my password?")
	r.Policy.TTL = 10 * time.Second
	mustStore(t, c, r, answer("a"))
	if _, ok := c.Lookup(context.Background(), r); !ok {
		t.Fatal("fresh entry missed")
	}
	now = now.Add(11 * time.Second)
	if _, ok := c.Lookup(context.Background(), r); ok {
		t.Fatal("expired entry served")
	}
	c.Sweep()
	if c.Len() != 0 || c.Bytes() != 0 {
		t.Errorf("after the sweep: %d entries, %d bytes", c.Len(), c.Bytes())
	}
}

func TestMemoryBoundEvictsLeastRecentlyUsed(t *testing.T) {
	emb := useLite(t)
	c := newTestCache(t, Config{MemoryBytes: 12 << 10}, emb)
	questions := []string{
		"How do I reset my password?", "Where can I download my invoice?", "How do I delete my account?",
		"What payment methods do you accept?", "How do I change my shipping address?", "Can I pause my subscription?",
		"How do I contact a human agent?", "Why was my card declined?",
	}
	mustStore(t, c, req("acme", "s", questions[0]), answer("first"))
	for _, q := range questions[1:] {
		// keep the first one in use so it is not the least recently used
		if _, ok := c.Lookup(context.Background(), req("acme", "s", questions[0])); !ok {
			t.Fatal("the entry in use was evicted")
		}
		mustStore(t, c, req("acme", "s", q), answer(strings.Repeat("x", 1000)))
		if c.Bytes() > 12<<10 {
			t.Fatalf("%d bytes held, bound is %d", c.Bytes(), 12<<10)
		}
	}
	if c.Len() >= len(questions) {
		t.Fatalf("nothing evicted: %d entries", c.Len())
	}
	if _, ok := c.Lookup(context.Background(), req("acme", "s", questions[1])); ok {
		t.Error("the least recently used entry survived")
	}
	if got := counterValue(c.met.evictions.WithLabelValues("memory")); got == 0 {
		t.Error("no memory evictions counted")
	}
}

func mustPrepare(t *testing.T, c *Cache, r Request) prepared {
	t.Helper()
	p, err := c.prepare(r)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func unit(dim, axis int) []float32 {
	v := make([]float32, dim)
	v[axis] = 1
	return v
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return -1
	}
	return m.GetCounter().GetValue()
}
