package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/infergate/infergate/config"
	"github.com/infergate/infergate/envoy/xdsproxy"
	"github.com/infergate/infergate/extproc"
	"github.com/infergate/infergate/internal/apierror"
	"github.com/infergate/infergate/internal/testmodel"
)

// TestEndToEnd runs `infergate up` and talks plain HTTP to the front door,
// as a user does: a real Envoy that up starts itself when `envoy` is on
// PATH, otherwise envoy/xdsproxy following the same control plane as the
// same node. The assertions are the same for both.
//
//	go test -run TestEndToEnd ./cmd/infergate/
func TestEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("-short given: this test starts the whole stack (infergate up: xDS, ext_proc, engine with the real model); make test runs it")
	}
	root := testmodel.RepoRoot(t)
	testmodel.USELiteDir(t)
	engineAddr, xdsADS, xdsAdmin := freeAddr(t), freeAddr(t), freeAddr(t)
	extprocAddr, extprocAdmin, front, envoyAdmin := freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)
	path := writeConfig(t, fmt.Sprintf(`
log: {level: warn}
envoy:
  node_id: e2e-edge
  cluster: e2e
  admin: %s
xds:
  listen: %s
  admin: %s
  ext_proc:
    # A race-instrumented build on a busy machine can take longer than the
    # default 500ms to answer; failing open would hide what is tested.
    message_timeout: 10s
    max_message_timeout: 20s
  listeners:
    - name: ingress
      address: %s
      virtual_hosts:
        - name: default
          domains: ["*"]
          routes:
            - name: free-tier
              match: {prefix: /v1/embeddings, headers: [{name: x-plan, exact: free}]}
              pool: default
              policy: free
            - name: embeddings
              match: {prefix: /v1/embeddings}
              pool: default
              policy: embeddings
            - name: default
              match: {prefix: /}
              pool: default
  policies:
    default: {cache: exact, ttl: 5m}
    embeddings: {cache: exact, ttl: 10m}
    free: {cache: exact, ttl: 10m, requests_per_second: 0.01, burst: 2}
  pools:
    - name: default
extproc:
  listen: %s
  admin: %s
engine:
  listen: %s
`, envoyAdmin, xdsADS, xdsAdmin, front, extprocAddr, extprocAdmin, engineAddr))
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	_, lookErr := exec.LookPath(cfg.Envoy.Binary)
	realEnvoy := lookErr == nil

	stderr := &lockedBuffer{}
	cmd := infergate("up", "-c", path)
	cmd.Dir = root // the default model path is relative to it, as for `make run`
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("up exited with %v after SIGTERM", err)
			}
		case <-time.After(time.Minute):
			_ = cmd.Process.Kill()
			t.Error("up did not stop within a minute of SIGTERM")
		}
		if t.Failed() {
			t.Logf("up's stderr:\n%s", stderr.String())
		}
	})

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// The engine is ready once its model loaded and a warm-up batch ran.
	for _, addr := range []string{xdsAdmin, extprocAdmin, engineAddr} {
		if err := waitOK(ctx, exited, "http://"+addr+"/readyz"); err != nil {
			t.Fatal(err)
		}
	}
	if realEnvoy {
		t.Log("envoy is on PATH: up started it; testing through the real Envoy")
	} else {
		t.Log("no envoy on PATH: testing through envoy/xdsproxy as node", cfg.Envoy.NodeID)
		startProxy(ctx, t, cfg, front)
	}
	// The front serves once Envoy (or the proxy) got its config over ADS.
	if err := waitOK(ctx, exited, "http://"+front+"/v2/health/ready"); err != nil {
		t.Fatal(err)
	}
	fd := &frontDoor{url: "http://" + front, engineMetrics: "http://" + engineAddr + "/metrics"}

	t.Run("embeddings miss then hit", func(t *testing.T) {
		body := `{"model":"use-lite","input":"the quick brown fox"}`
		before := fd.engineRequests(t)
		miss := fd.post(t, "/v1/embeddings", body, "Authorization", "Bearer acme-key")
		miss.wantOK(t)
		if cs := miss.cacheStatus(); !strings.Contains(cs, "fwd=miss") || !strings.Contains(cs, "stored") {
			t.Fatalf("first request: Cache-Status %q, want a stored miss", cs)
		}
		hit := fd.post(t, "/v1/embeddings", body, "Authorization", "Bearer acme-key")
		hit.wantOK(t)
		if !hit.isHit() {
			t.Fatalf("second request: Cache-Status %q, want a hit", hit.cacheStatus())
		}
		if !bytes.Equal(hit.body, miss.body) {
			t.Fatalf("the hit's body differs from the stored response:\n%s\n%s", hit.body, miss.body)
		}
		if age, err := strconv.Atoi(hit.header.Get("Age")); err != nil || age < 0 {
			t.Fatalf("hit: Age %q, want delta-seconds", hit.header.Get("Age"))
		}
		if got := fd.engineRequests(t) - before; got != 1 {
			t.Fatalf("the engine answered %v requests, want 1 (the hit never reaches it)", got)
		}
	})

	t.Run("another tenant misses", func(t *testing.T) {
		body := `{"model":"use-lite","input":"tenants do not share entries"}`
		fd.post(t, "/v1/embeddings", body, "Authorization", "Bearer acme-key").wantOK(t)
		other := fd.post(t, "/v1/embeddings", body, "Authorization", "Bearer globex-key")
		other.wantOK(t)
		if other.isHit() || !strings.Contains(other.cacheStatus(), "fwd=miss") {
			t.Fatalf("globex: Cache-Status %q, want a miss: acme's entry is acme's", other.cacheStatus())
		}
		// Claiming acme's tenant name does not reach acme's entries: the
		// front door removes a client's tenant header.
		claim := fd.post(t, "/v1/embeddings", body, "Authorization", "Bearer initech-key", "X-Tenant-Id", extproc.APIKeyTenant("acme-key"))
		claim.wantOK(t)
		if claim.isHit() {
			t.Fatalf("initech claiming acme's tenant: Cache-Status %q, want a miss", claim.cacheStatus())
		}
	})

	t.Run("kserve infer miss then hit", func(t *testing.T) {
		body := `{"inputs":[{"name":"text","shape":[1],"datatype":"BYTES","data":["a KServe request"]}]}`
		miss := fd.post(t, "/v2/models/use-lite/infer", body, "Authorization", "Bearer acme-key")
		miss.wantOK(t)
		if cs := miss.cacheStatus(); !strings.Contains(cs, "fwd=miss") || !strings.Contains(cs, "stored") {
			t.Fatalf("first request: Cache-Status %q, want a stored miss", cs)
		}
		var out struct {
			Outputs []struct {
				Shape []int `json:"shape"`
			} `json:"outputs"`
		}
		if err := json.Unmarshal(miss.body, &out); err != nil || len(out.Outputs) != 1 || len(out.Outputs[0].Shape) != 2 || out.Outputs[0].Shape[0] != 1 {
			t.Fatalf("infer response is not one [1, dim] output (%v): %s", err, miss.body)
		}
		hit := fd.post(t, "/v2/models/use-lite/infer", body, "Authorization", "Bearer acme-key")
		if !hit.isHit() || !bytes.Equal(hit.body, miss.body) {
			t.Fatalf("second request: Cache-Status %q, same body %v", hit.cacheStatus(), bytes.Equal(hit.body, miss.body))
		}
	})

	t.Run("rate limited route answers 429", func(t *testing.T) {
		for i := range 2 {
			fd.post(t, "/v1/embeddings", fmt.Sprintf(`{"model":"use-lite","input":"free tier %d"}`, i),
				"Authorization", "Bearer smallco-key", "X-Plan", "free").wantOK(t)
		}
		over := fd.post(t, "/v1/embeddings", `{"model":"use-lite","input":"free tier 2"}`, "Authorization", "Bearer smallco-key", "X-Plan", "free")
		if over.status != http.StatusTooManyRequests {
			t.Fatalf("third request in the burst of 2: %d %s, want 429", over.status, over.body)
		}
		for _, h := range []string{"RateLimit-Policy", "RateLimit"} {
			if over.header.Get(h) == "" {
				t.Errorf("429 without %s", h)
			}
		}
		if s, err := strconv.Atoi(over.header.Get("Retry-After")); err != nil || s < 1 {
			t.Errorf("429 Retry-After %q, want whole seconds to wait", over.header.Get("Retry-After"))
		}
		over.wantJSONError(t)
		// Naming another tenant does not escape the key's limit.
		if r := fd.post(t, "/v1/embeddings", `{"model":"use-lite","input":"free tier 3"}`, "Authorization", "Bearer smallco-key",
			"X-Plan", "free", "X-Tenant-Id", "someone-else"); r.status != http.StatusTooManyRequests {
			t.Fatalf("over the limit with another X-Tenant-Id: %d, want 429", r.status)
		}
		// The limit is the route's: the same tenant elsewhere is served.
		fd.post(t, "/v1/embeddings", `{"model":"use-lite","input":"free tier 2"}`, "Authorization", "Bearer smallco-key").wantOK(t)
	})

	t.Run("malformed JSON is a 400 and not cached", func(t *testing.T) {
		for i := range 2 {
			bad := fd.post(t, "/v1/embeddings", `{"model":"use-lite","input":`, "Authorization", "Bearer acme-key")
			if bad.status != http.StatusBadRequest {
				t.Fatalf("request %d: %d %s, want 400", i, bad.status, bad.body)
			}
			bad.wantJSONError(t)
			// Both go to the engine (fwd=miss) and neither is kept.
			if cs := bad.cacheStatus(); !strings.Contains(cs, "fwd=miss") || strings.Contains(cs, "stored") {
				t.Fatalf("request %d: Cache-Status %q, want an unstored miss", i, cs)
			}
		}
	})

	t.Run("no-store request is not stored", func(t *testing.T) {
		body := `{"model":"use-lite","input":"please do not keep this"}`
		first := fd.post(t, "/v1/embeddings", body, "Authorization", "Bearer acme-key", "Cache-Control", "no-store")
		first.wantOK(t)
		if cs := first.header.Get("Cache-Status"); strings.Contains(cs, "stored") {
			t.Fatalf("no-store request: Cache-Status %q says stored", cs)
		}
		again := fd.post(t, "/v1/embeddings", body, "Authorization", "Bearer acme-key")
		again.wantOK(t)
		if again.isHit() || !strings.Contains(again.cacheStatus(), "fwd=miss") {
			t.Fatalf("after a no-store request: Cache-Status %q, want a miss", again.cacheStatus())
		}
	})
}

// startProxy runs envoy/xdsproxy as the Envoy node of cfg and checks that
// it serves the listener where the config puts it.
func startProxy(ctx context.Context, t *testing.T, cfg config.Config, front string) {
	t.Helper()
	p, err := xdsproxy.New(xdsproxy.Config{
		ADS: cfg.XDS.Listen, NodeID: cfg.Envoy.NodeID, Cluster: cfg.Envoy.Cluster,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	pctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Serve(pctx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("xdsproxy: %v", err)
		}
	})
	addr, err := p.WaitServing(ctx, "ingress")
	if err != nil {
		t.Fatal(err)
	}
	if addr != front {
		t.Fatalf("xdsproxy serves ingress on %s, the config says %s", addr, front)
	}
}

// frontDoor is the client's side: plain HTTP to the listener.
type frontDoor struct {
	url           string
	engineMetrics string
}

// client has no timeout of its own: a slow machine makes requests slow,
// not wrong; the test's own deadline bounds a hang.
var client = &http.Client{}

type answer struct {
	status int
	header http.Header
	body   []byte
}

// post sends a JSON body with header name/value pairs.
func (f *frontDoor) post(t *testing.T, path, body string, header ...string) answer {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, f.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return answer{status: resp.StatusCode, header: resp.Header, body: data}
}

// engineRequests is the engine's own count of the inference requests it
// answered (every model and outcome), read from its /metrics.
func (f *frontDoor) engineRequests(t *testing.T) float64 {
	t.Helper()
	resp, err := http.Get(f.engineMetrics)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "infergate_engine_requests_total{") {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			t.Fatalf("engine metrics line %q: %v", line, err)
		}
		sum += v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return sum
}

func (a answer) cacheStatus() string { return a.header.Get("Cache-Status") }
func (a answer) isHit() bool         { return strings.HasPrefix(a.cacheStatus(), "infergate; hit") }

func (a answer) wantOK(t *testing.T) {
	t.Helper()
	if a.status != http.StatusOK {
		t.Fatalf("status %d, want 200: %s", a.status, a.body)
	}
}

// wantJSONError checks that an error has a JSON body in its API's shape.
func (a answer) wantJSONError(t *testing.T) {
	t.Helper()
	if ct := a.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("%d error with Content-Type %q, want application/json", a.status, ct)
	}
	if _, ok := apierror.Message(a.body); !ok {
		t.Errorf("%d error body %q has no error message", a.status, a.body)
	}
}

// lockedBuffer collects a child's stderr while the test may read it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
