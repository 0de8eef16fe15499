package extproc_test

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"

	"github.com/infergate/infergate/extproc"
	"github.com/infergate/infergate/extproc/cache"
	"github.com/infergate/infergate/policy"
)

// caseFoldStage is a second lookup stage for the seam's test: it answers a
// request whose input matches a stored one ignoring case, within a scope.
type caseFoldStage struct {
	mu     sync.Mutex
	stored map[string]*cache.Entry
}

func (s *caseFoldStage) index(q *extproc.Query) string {
	var body struct{ Input string }
	_ = json.Unmarshal(q.Body, &body)
	return q.Scope + "|" + strings.ToLower(body.Input)
}

func (s *caseFoldStage) Lookup(_ context.Context, q *extproc.Query) (extproc.StageHit, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.stored[s.index(q)]
	return extproc.StageHit{Entry: e, Header: []cache.Header{{Name: "cache-status", Value: `infergate; hit; detail="case-fold"`}}}, ok
}

func (s *caseFoldStage) Store(_ context.Context, q *extproc.Query, e *cache.Entry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stored[s.index(q)] = e
}

func TestStageRunsAfterExactMissOnSemanticRoutes(t *testing.T) {
	up := newUpstream(t)
	stage := &caseFoldStage{stored: map[string]*cache.Entry{}}
	srv := startExtProcWith(t, nil, extproc.WithStage(stage))
	h := newHarness(t, srv, up.URL, policy.Policy{Route: "sem", Cache: policy.CacheSemantic}, nil)

	first := call(t, h, "POST", "/v1/embeddings", []byte(`{"input":"Hello World"}`), "X-Tenant-Id", "a")
	res := call(t, h, "POST", "/v1/embeddings", []byte(`{"input":"hello world"}`), "X-Tenant-Id", "a")
	if res.Header.Get("Cache-Status") != `infergate; hit; detail="case-fold"` || string(res.Body) != string(first.Body) {
		t.Fatalf("stage hit: %q %q", res.Header.Get("Cache-Status"), res.Body)
	}
	if up.requests.Load() != 1 {
		t.Fatalf("%d upstream requests, want 1", up.requests.Load())
	}
	if isHit(cacheStatus(t, call(t, h, "POST", "/v1/embeddings", []byte(`{"input":"hello world"}`), "X-Tenant-Id", "b"))) {
		t.Fatal("stage answered across tenants")
	}
	exactOnly := newHarness(t, srv, up.URL, policy.Policy{Route: "exact"}, nil)
	call(t, exactOnly, "POST", "/v1/embeddings", []byte(`{"input":"Only Exact"}`))
	if isHit(cacheStatus(t, call(t, exactOnly, "POST", "/v1/embeddings", []byte(`{"input":"only exact"}`)))) {
		t.Fatal("stage ran on a route with cache mode exact")
	}
}
