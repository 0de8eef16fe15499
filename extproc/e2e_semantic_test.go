package extproc_test

// End to end for the semantic cache as `infergate extproc` builds it from
// the config's semantic section: embeddings from the real engine (USE-Lite),
// chat answers from chatUpstream (infergate serves no chat model), through
// the Envoy harness.

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/infergate/infergate/config"
	"github.com/infergate/infergate/envoy/harness"
	"github.com/infergate/infergate/extproc"
	"github.com/infergate/infergate/extproc/internal/redistest"
	"github.com/infergate/infergate/policy"
)

// chatUpstream answers /v1/chat/completions with the last user message
// echoed back, so a response served for the wrong question shows, and
// counts the requests that reach it.
type chatUpstream struct {
	*httptest.Server
	calls atomic.Int64
}

func newChatUpstream(t testing.TB) *chatUpstream {
	u := &chatUpstream{}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.calls.Add(1)
		var req struct {
			Messages []struct{ Role, Content string } `json:"messages"`
		}
		if r.URL.Path != "/v1/chat/completions" || json.NewDecoder(r.Body).Decode(&req) != nil || len(req.Messages) == 0 {
			http.Error(w, `{"error":"not a chat completion"}`, http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		answer, _ := json.Marshal("Answer to: " + req.Messages[len(req.Messages)-1].Content)
		fmt.Fprintf(w, `{"object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":%s}}],"usage":{"total_tokens":12}}`, answer)
	}))
	t.Cleanup(u.Close)
	return u
}

// semanticRoute is a chat route with the semantic cache; the threshold is
// set here rather than taken from policy.DefaultSemanticThreshold, which is
// tuned on the evaluation set and may move.
var semanticRoute = policy.Policy{Route: "chat", Cache: policy.CacheSemantic, SemanticThreshold: 0.85, TTL: 10 * time.Minute}

// withEngine points the semantic cache at engineURL. The embedding budget
// is a latency bound in production; under the race detector on a shared
// machine the engine may take seconds, so it is lifted here.
func withEngine(engineURL string) func(*config.ExtProc) {
	return func(c *config.ExtProc) {
		c.Semantic.EngineURL = engineURL
		c.Semantic.EmbedTimeout = 5 * time.Minute
	}
}

func both(fs ...func(*config.ExtProc)) func(*config.ExtProc) {
	return func(c *config.ExtProc) {
		for _, f := range fs {
			f(c)
		}
	}
}

func chatBody(system, question string) []byte {
	return fmt.Appendf(nil, `{"model":"m","temperature":0,"messages":[{"role":"system","content":%q},{"role":"user","content":%q}]}`, system, question)
}

// ask sends one chat request for tenant and fails the test unless the
// client got the upstream's (or a cached) 200.
func ask(t *testing.T, h *harness.Harness, tenant, system, question string) *harness.Result {
	t.Helper()
	res := call(t, h, "POST", "/v1/chat/completions", chatBody(system, question), "X-Tenant-Id", tenant)
	if res.Status != http.StatusOK {
		t.Fatalf("%q for %s: %d %s", question, tenant, res.Status, res.Body)
	}
	return res
}

func isSemanticHit(res *harness.Result) bool {
	return res.Header.Get("Cache-Status") == "infergate; hit; detail=semantic" && res.Header.Get("X-Infergate-Similarity") != ""
}

// waitStored waits until srv's semantic cache holds n entries: an answer
// is embedded and indexed after it went back to the client.
func waitStored(t *testing.T, srv *extproc.Server, n float64) {
	t.Helper()
	eventually(t, fmt.Sprintf("%v semantic entries", n), func() bool {
		return metric(t, srv.Registry(), "infergate_extproc_semantic_entries") >= n
	})
}

const supportBot = "You are a support bot."

func TestE2ESemanticHitsOnlyTheSameQuestionInTheSameScope(t *testing.T) {
	eng := startEngine(t)
	srv := startExtProc(t, withEngine(eng.url))
	up := newChatUpstream(t)
	h := newHarness(t, srv, up.URL, semanticRoute, nil)

	first := ask(t, h, "acme", supportBot, "How do I reset my password?")
	refund := ask(t, h, "acme", supportBot, "Can I get a refund within 30 days of purchase?")
	waitStored(t, srv, 2)

	para := ask(t, h, "acme", supportBot, "How can I reset my password?")
	if !isSemanticHit(para) || string(para.Body) != string(first.Body) {
		t.Fatalf("paraphrase: Cache-Status %q, body %s", para.Header.Get("Cache-Status"), para.Body)
	}
	// RFC 9111 §5.1: a response from cache carries its Age.
	if age, err := strconv.Atoi(para.Header.Get("Age")); err != nil || age < 0 {
		t.Errorf("semantic hit Age = %q", para.Header.Get("Age"))
	}
	if n := up.calls.Load(); n != 2 {
		t.Fatalf("upstream answered %d requests, want 2 (the paraphrase from cache)", n)
	}

	for _, c := range []struct{ name, tenant, system, question string }{
		{"another number", "acme", supportBot, "Can I get a refund within 60 days of purchase?"},
		{"another system prompt", "acme", "You are a pirate. Answer in pirate speak.", "How can I reset my password?"},
		{"another tenant", "globex", supportBot, "How can I reset my password?"},
	} {
		before := up.calls.Load()
		res := ask(t, h, c.tenant, c.system, c.question)
		if isHit(res.Header.Get("Cache-Status")) {
			t.Errorf("%s: served from cache (%q, similarity %s): %s", c.name, res.Header.Get("Cache-Status"), res.Header.Get("X-Infergate-Similarity"), res.Body)
		}
		if up.calls.Load() != before+1 || !strings.Contains(string(res.Body), c.question) {
			t.Errorf("%s: not answered by the upstream for its own question: %s", c.name, res.Body)
		}
		if string(res.Body) == string(refund.Body) || string(res.Body) == string(first.Body) {
			t.Errorf("%s: got the stored answer of another question", c.name)
		}
	}
	// The number case is the guard's: the similarity alone is above the
	// route's threshold.
	if n := metric(t, srv.Registry(), "infergate_extproc_semantic_guard_refusals_total"); n < 1 {
		t.Errorf("guard refusals = %v, want the 30/60 days question refused by the guard", n)
	}
}

func TestE2ESemanticEngineDownIsAMissAndServed(t *testing.T) {
	// An address where nothing listens: every embedding call fails.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := "http://" + ln.Addr().String()
	ln.Close()
	srv := startExtProc(t, func(c *config.ExtProc) { c.Semantic.EngineURL = down })
	up := newChatUpstream(t)
	h := newHarness(t, srv, up.URL, semanticRoute, nil)

	questions := []string{"How do I reset my password?", "How can I reset my password?", "How do I change my password?", "How can I reset my password please?"}
	for _, q := range questions {
		res := ask(t, h, "acme", supportBot, q)
		if isHit(res.Header.Get("Cache-Status")) || !strings.Contains(string(res.Body), q) {
			t.Fatalf("%q with the engine down: %q %s", q, res.Header.Get("Cache-Status"), res.Body)
		}
	}
	if n := up.calls.Load(); n != int64(len(questions)) {
		t.Fatalf("upstream answered %d of %d requests", n, len(questions))
	}
	// the exact cache still answers a repeat
	if res := ask(t, h, "acme", supportBot, questions[0]); !isHit(cacheStatus(t, res)) || up.calls.Load() != int64(len(questions)) {
		t.Fatalf("exact repeat with the engine down: %q", res.Header.Get("Cache-Status"))
	}
	// Nothing could be embedded, so nothing was indexed: each answer's
	// background embedding failed and was counted.
	eventually(t, "failed embeddings counted", func() bool {
		return metric(t, srv.Registry(), "infergate_extproc_semantic_stores_total", "outcome", "embed_failed") >= float64(len(questions))
	})
	if n := metric(t, srv.Registry(), "infergate_extproc_semantic_entries"); n != 0 {
		t.Errorf("%v semantic entries with the engine down", n)
	}
}

func TestE2ESemanticReplicasShareHitsThroughRedis(t *testing.T) {
	eng := startEngine(t)
	rds := redistest.Start(t)
	a := startExtProc(t, both(withEngine(eng.url), withRedis(rds.Addr)))
	b := startExtProc(t, both(withEngine(eng.url), withRedis(rds.Addr)))
	up := newChatUpstream(t)
	ha := newHarness(t, a, up.URL, semanticRoute, nil)
	hb := newHarness(t, b, up.URL, semanticRoute, nil)

	first := ask(t, ha, "acme", supportBot, "How do I update my billing address?")
	eventually(t, "replica b applying replica a's entry", func() bool {
		return metric(t, b.Registry(), "infergate_extproc_semantic_shared_total", "op", "applied") >= 1
	})
	para := ask(t, hb, "acme", supportBot, "How can I update my billing address?")
	if !isSemanticHit(para) || string(para.Body) != string(first.Body) {
		t.Fatalf("replica b on a paraphrase of replica a's question: %q %s", para.Header.Get("Cache-Status"), para.Body)
	}
	if n := up.calls.Load(); n != 1 {
		t.Fatalf("upstream answered %d requests, want 1", n)
	}
	// shared between replicas, still scoped to the tenant
	if res := ask(t, hb, "globex", supportBot, "How can I update my billing address?"); isHit(res.Header.Get("Cache-Status")) {
		t.Fatalf("replica b served acme's entry to globex: %q", res.Header.Get("Cache-Status"))
	}
}

func TestExactRoutesStayOutOfTheSemanticCache(t *testing.T) {
	srv := startExtProc(t, nil)
	up := newChatUpstream(t)
	h := newHarness(t, srv, up.URL, policy.Policy{Route: "chat", Cache: policy.CacheExact, TTL: time.Minute}, nil)
	ask(t, h, "acme", supportBot, "How do I reset my password?")
	if res := ask(t, h, "acme", supportBot, "How do I reset my password?"); !isHit(cacheStatus(t, res)) || isSemanticHit(res) {
		t.Fatalf("exact repeat: %q", res.Header.Get("Cache-Status"))
	}
	if n := metric(t, srv.Registry(), "infergate_extproc_semantic_lookups_total") + metric(t, srv.Registry(), "infergate_extproc_semantic_stores_total"); n != 0 {
		t.Fatalf("an exact-cache route made %v semantic lookups and stores", n)
	}
}

// An operator purges an answer because it is wrong: the semantic cache
// must drop it too, on every replica, or the same question still gets it.
func TestE2EPurgeReachesTheSemanticCacheOnEveryReplica(t *testing.T) {
	eng := startEngine(t)
	rds := redistest.Start(t)
	a := startExtProc(t, both(withEngine(eng.url), withRedis(rds.Addr)))
	b := startExtProc(t, both(withEngine(eng.url), withRedis(rds.Addr)))
	up := newChatUpstream(t)
	ha := newHarness(t, a, up.URL, semanticRoute, nil)
	hb := newHarness(t, b, up.URL, semanticRoute, nil)

	purged := ask(t, ha, "acme", supportBot, "How do I update my billing address?")
	eventually(t, "replica b applying replica a's entry", func() bool {
		return metric(t, b.Registry(), "infergate_extproc_semantic_entries") == 1
	})
	resp, err := http.Post("http://"+a.AdminAddr()+"/v1/cache/purge", "application/json", strings.NewReader(`{"tenant":"acme"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("purge: %d", resp.StatusCode)
	}
	eventually(t, "replica b dropping the purged entry", func() bool {
		return metric(t, b.Registry(), "infergate_extproc_semantic_entries") == 0
	})
	// Each replica's answer may be stored and shared again; what must not
	// come back is the purged one.
	for name, h := range map[string]*harness.Harness{"a": ha, "b": hb} {
		if res := ask(t, h, "acme", supportBot, "How can I update my billing address?"); string(res.Body) == string(purged.Body) {
			t.Errorf("replica %s served the purged answer: %q", name, res.Header.Get("Cache-Status"))
		}
	}
}

// A purge by key (the key from Cache-Status) on a semantic route removes
// the semantic copy too: the identical question would match it at
// similarity 1.
func TestE2EPurgeByKeyReachesTheSemanticCache(t *testing.T) {
	eng := startEngine(t)
	srv := startExtProc(t, withEngine(eng.url))
	up := newChatUpstream(t)
	h := newHarness(t, srv, up.URL, semanticRoute, nil)

	first := ask(t, h, "acme", supportBot, "How do I update my billing address?")
	waitStored(t, srv, 1)
	key := regexp.MustCompile(`key="([^"]+)"`).FindStringSubmatch(cacheStatus(t, first))
	if key == nil {
		t.Fatalf("no key in %q", cacheStatus(t, first))
	}
	resp, err := http.Post("http://"+srv.AdminAddr()+"/v1/cache/purge", "application/json", strings.NewReader(`{"key":"`+key[1]+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if res := ask(t, h, "acme", supportBot, "How do I update my billing address?"); isHit(res.Header.Get("Cache-Status")) {
		t.Fatalf("the purged answer was served: %q", res.Header.Get("Cache-Status"))
	}
}
