package extproc_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/infergate/infergate/config"
	"github.com/infergate/infergate/extproc/internal/redistest"
	"github.com/infergate/infergate/policy"
)

func withRedis(addr string) func(*config.ExtProc) {
	return func(c *config.ExtProc) {
		c.Redis.Addr = addr
		c.Redis.Timeout = 10 * time.Second // a loaded test machine, not a hint of production values
	}
}

func TestReplicasShareCacheAndLimitsThroughRedis(t *testing.T) {
	rds := redistest.Start(t)
	up := newUpstream(t)
	a := startExtProc(t, withRedis(rds.Addr))
	b := startExtProc(t, withRedis(rds.Addr))
	p := policy.Policy{Route: "embed", RequestsPerSecond: 0.001, Burst: 4}
	ha := newHarness(t, a, up.URL, p, nil)
	hb := newHarness(t, b, up.URL, p, nil)

	call(t, ha, "POST", "/v1/embeddings", []byte(embedBody), "X-Tenant-Id", "acme")
	hit := call(t, hb, "POST", "/v1/embeddings", []byte(embedBody), "X-Tenant-Id", "acme")
	if !isHit(cacheStatus(t, hit)) || up.requests.Load() != 1 {
		t.Fatalf("replica b: %q after %d upstream requests; want a hit on a's entry", hit.Header.Get("Cache-Status"), up.requests.Load())
	}
	// Two requests used, two left in the shared burst of four.
	call(t, ha, "POST", "/v1/embeddings", []byte(`{"input":"x"}`), "X-Tenant-Id", "acme")
	call(t, hb, "POST", "/v1/embeddings", []byte(`{"input":"y"}`), "X-Tenant-Id", "acme")
	if res := call(t, ha, "POST", "/v1/embeddings", []byte(embedBody), "X-Tenant-Id", "acme"); res.Status != http.StatusTooManyRequests {
		t.Fatalf("fifth request across both replicas: %d, want 429", res.Status)
	}
	if res := call(t, hb, "POST", "/v1/embeddings", []byte(embedBody), "X-Tenant-Id", "acme"); res.Status != http.StatusTooManyRequests {
		t.Fatalf("sixth request on the other replica: %d, want 429", res.Status)
	}

	// A purge on a reaches b's in-process copy through Redis.
	resp, err := http.Post("http://"+a.AdminAddr()+"/v1/cache/purge", "application/json", strings.NewReader(`{"tenant":"acme"}`))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("purge: %v %v", resp, err)
	}
	resp.Body.Close()
	eventually(t, "replica b to drop the purged entry", func() bool {
		return metric(t, b.Registry(), "infergate_extproc_cache_entries") == 0
	})
}

func TestRedisKilledMidTestRequestsStillServed(t *testing.T) {
	rds := redistest.Start(t)
	up := newUpstream(t)
	srv := startExtProc(t, withRedis(rds.Addr))
	h := newHarness(t, srv, up.URL, policy.Policy{Route: "embed", RequestsPerSecond: 100, Burst: 100}, nil)
	call(t, h, "POST", "/v1/embeddings", []byte(embedBody))
	if !isHit(cacheStatus(t, call(t, h, "POST", "/v1/embeddings", []byte(embedBody)))) {
		t.Fatal("no hit before the outage")
	}
	rds.Kill()
	// The in-process level still has the entry; new requests go upstream,
	// limits fall back to in-process, nothing fails.
	if res := call(t, h, "POST", "/v1/embeddings", []byte(embedBody)); res.Status != 200 || !isHit(cacheStatus(t, res)) {
		t.Fatalf("cached request during the outage: %d %q", res.Status, res.Header.Get("Cache-Status"))
	}
	other := []byte(`{"model":"use-lite","input":"during the outage"}`)
	if res := call(t, h, "POST", "/v1/embeddings", other); res.Status != 200 {
		t.Fatalf("new request during the outage: %d", res.Status)
	}
	if !isHit(cacheStatus(t, call(t, h, "POST", "/v1/embeddings", other))) {
		t.Fatal("a response stored during the outage is not served from the in-process cache")
	}
	if metric(t, srv.Registry(), "infergate_extproc_redis_errors_total") == 0 {
		t.Fatal("redis errors not counted")
	}
}

func TestRedisDownFailClosedAnswers503(t *testing.T) {
	rds := redistest.Start(t)
	up := newUpstream(t)
	srv := startExtProc(t, func(c *config.ExtProc) {
		withRedis(rds.Addr)(c)
		c.Redis.FailureMode = "closed"
	})
	h := newHarness(t, srv, up.URL, policy.Policy{Route: "embed", RequestsPerSecond: 100}, nil)
	if res := call(t, h, "POST", "/v1/embeddings", []byte(embedBody)); res.Status != 200 {
		t.Fatalf("with redis up: %d", res.Status)
	}
	rds.Kill()
	res := call(t, h, "POST", "/v1/embeddings", []byte(`{"input":"new"}`))
	if res.Status != http.StatusServiceUnavailable || res.Header.Get("Retry-After") == "" {
		t.Fatalf("fail-closed with redis down: %d %v", res.Status, res.Header)
	}
}
