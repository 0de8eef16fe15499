package extproc_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/infergate/infergate/policy"
)

// A request with trailers (HTTP/2, gRPC-web) reaches the server as a whole
// body with end_of_stream false, then the trailers. Its body's model must
// still pick the model route, and that route's limits, as without trailers.
func TestRequestWithTrailersIsRoutedByItsModel(t *testing.T) {
	up := newUpstream(t)
	srv := startExtProc(t, nil)
	limited := policy.Policy{Route: "use-lite-route", Cache: policy.CacheOff, RequestsPerSecond: 0.001, Burst: 1}
	generic := policy.Policy{Route: "generic", Cache: policy.CacheOff,
		ModelRoutes: []policy.ModelRoute{{Model: "use-lite", Match: json.RawMessage(`{"prefix":"/"}`), Policy: limited}}}
	h := newHarness(t, srv, up.URL, generic, nil)
	send := func() int {
		req, err := http.NewRequest("POST", "http://infergate.local/v1/embeddings", bytes.NewReader([]byte(embedBody)))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("X-Tenant-Id", "acme")
		req.Trailer = http.Header{"X-Checksum": {"abc"}}
		res, err := h.Do(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		return res.Status
	}
	if got := send(); got != http.StatusOK || up.lastHeader(policy.ModelHeader) != "use-lite" {
		t.Fatalf("first request: %d, upstream saw %s %q; want 200 with the body's model", got, policy.ModelHeader, up.lastHeader(policy.ModelHeader))
	}
	if got := send(); got != http.StatusTooManyRequests {
		t.Errorf("second request: %d, want 429 from the model route's limit of 1", got)
	}
}

// A response with trailers is charged to the token budget, but not stored:
// a cached answer would be replayed without them.
func TestResponseWithTrailersIsChargedAndNotStored(t *testing.T) {
	up := newUpstream(t)
	up.set(func(w http.ResponseWriter, r *http.Request, body []byte) {
		w.Header().Set("Trailer", "X-Checksum")
		embeddingsAnswer(500)(w, r, body)
		w.Header().Set("X-Checksum", "abc")
	})
	srv := startExtProc(t, nil)
	h := newHarness(t, srv, up.URL, policy.Policy{Route: "embed", TokenBudget: 600, TokenWindow: time.Hour}, nil)
	for i := range 2 {
		res := call(t, h, "POST", "/v1/embeddings", []byte(embedBody), "X-Tenant-Id", "acme")
		// The trailers come after Envoy sent the headers: such an answer
		// has no Cache-Status.
		if res.Status != http.StatusOK || res.Trailer.Get("X-Checksum") != "abc" || up.requests.Load() != int64(i+1) {
			t.Fatalf("request %d: %d, trailer %q, upstream requests %d; want 200 from upstream with its trailer",
				i, res.Status, res.Trailer.Get("X-Checksum"), up.requests.Load())
		}
	}
	if res := call(t, h, "POST", "/v1/embeddings", []byte(embedBody), "X-Tenant-Id", "acme"); res.Status != http.StatusTooManyRequests {
		t.Errorf("after two 500-token answers on a 600-token budget: %d, want 429", res.Status)
	}
}
