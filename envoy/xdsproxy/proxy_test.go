package xdsproxy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/infergate/infergate/config"
	"github.com/infergate/infergate/envoy/xdsproxy"
	"github.com/infergate/infergate/extproc"
	"github.com/infergate/infergate/xds"
)

// quiet keeps the components' logs out of the test output.
var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// upstream is an engine stand-in that says who served the request.
func upstream(t *testing.T, name string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"served_by":%q,"path":%q}`, name, r.URL.Path)
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// stack is a real ext_proc server and a real control plane on loopback,
// and the proxy following the control plane as node "edge-1".
type stack struct {
	front    string // the proxy's listener address
	xdsAdmin string
	proxy    *xdsproxy.Proxy
	// cfg is the config the control plane serves (with the ext_proc
	// server's real address); stopControlPlane stops it.
	cfg              config.Config
	stopControlPlane func()
}

// serveUntil runs s.Serve until the returned stop is called (at the
// latest when the test ends) and checks that it returns cleanly.
func serveUntil(t *testing.T, s interface{ Serve(context.Context) error }) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Serve: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// startStack serves routing (the xds section's listeners, policies and
// pools, as YAML) with every address on a free loopback port.
func startStack(t *testing.T, routing string) *stack {
	t.Helper()
	yaml := fmt.Sprintf("extproc:\n  listen: 127.0.0.1:0\n  admin: 127.0.0.1:0\nxds:\n  listen: 127.0.0.1:0\n  admin: 127.0.0.1:0\n%s", routing)
	path := filepath.Join(t.TempDir(), "infergate.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	ep, err := extproc.New(cfg.ExtProc, quiet)
	if err != nil {
		t.Fatal(err)
	}
	if err := ep.Listen(); err != nil {
		t.Fatal(err)
	}
	serveUntil(t, ep)
	// The control plane points Envoy at the ext_proc server's real port.
	cfg.ExtProc.Listen = ep.Addr()
	s := &stack{}
	ads := s.startControlPlane(t, cfg)
	p, err := xdsproxy.New(xdsproxy.Config{ADS: ads, NodeID: "edge-1", Cluster: "edge", Log: quiet})
	if err != nil {
		t.Fatal(err)
	}
	// Registered after the control plane's, so it stops first.
	serveUntil(t, p)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if s.front, err = p.WaitServing(ctx, "ingress"); err != nil {
		t.Fatal(err)
	}
	s.proxy = p
	return s
}

// startControlPlane serves cfg and returns its ADS address.
func (s *stack) startControlPlane(t *testing.T, cfg config.Config) string {
	t.Helper()
	cp, err := xds.New(cfg, "", quiet)
	if err != nil {
		t.Fatal(err)
	}
	if err := cp.Listen(); err != nil {
		t.Fatal(err)
	}
	s.stopControlPlane = serveUntil(t, cp)
	s.cfg, s.xdsAdmin = cfg, cp.AdminAddr()
	s.cfg.XDS.Listen = cp.ADSAddr()
	return cp.ADSAddr()
}

type reply struct {
	status   int
	header   http.Header
	servedBy string
	body     string
}

func (s *stack) send(t *testing.T, method, path, body string, header ...string) reply {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+s.front+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var v struct {
		ServedBy string `json:"served_by"`
	}
	_ = json.Unmarshal(data, &v)
	return reply{status: resp.StatusCode, header: resp.Header, servedBy: v.ServedBy, body: string(data)}
}

// admin calls the control plane's admin API and wants a 2xx.
func (s *stack) admin(t *testing.T, method, path, body string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+s.xdsAdmin+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, data)
	}
}

// eventually polls until cond holds; a slow machine only makes it wait
// longer.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after a minute: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// nodeStatus is the control plane's record of edge-1, by resource type.
func (s *stack) nodeStatus(t *testing.T) map[string]xds.TypeStatus {
	t.Helper()
	return s.node(t).Types
}

// holding reports that the control plane still holds its first
// configuration back (xds.registration_grace).
func (s *stack) holding(t *testing.T) bool {
	t.Helper()
	resp, err := http.Get("http://" + s.xdsAdmin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return strings.Contains(string(body), "\ninfergate_xds_registration_hold 1\n")
}

// connected reports that edge-1 has a stream open to the control plane.
func (s *stack) connected(t *testing.T) bool {
	t.Helper()
	return s.node(t).Streams > 0
}

type nodeRecord struct {
	Streams int                       `json:"streams"`
	Types   map[string]xds.TypeStatus `json:"types"`
}

func (s *stack) node(t *testing.T) nodeRecord {
	t.Helper()
	resp, err := http.Get("http://" + s.xdsAdmin + "/v1/nodes")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var v struct {
		Nodes map[string]nodeRecord `json:"nodes"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		t.Fatal(err)
	}
	return v.Nodes["envoy/edge-1"]
}

// allACKed reports that edge-1 accepted the last version of every type.
func (s *stack) allACKed(t *testing.T) bool {
	types := s.nodeStatus(t)
	for _, typ := range []string{"listener", "route", "cluster", "endpoint"} {
		ts, ok := types[typ]
		if !ok || ts.NackedVersion != "" || ts.AckedVersion == "" || ts.AckedVersion != ts.SentVersion {
			return false
		}
	}
	return true
}

func twoPools(a, b string) string {
	return fmt.Sprintf(`  pools:
    - name: a
      endpoints: [%s]
    - name: b
      endpoints: [%s]
`, a, b)
}

// latePool routes everything to pool late, which starts empty and only
// registering engines fill; no registration grace, as the tests register
// after start.
const latePool = "  registration_grace: 0s\n" + ingress + `            - name: main
              match: {prefix: /}
              pool: late
  pools:
    - name: late
`

// ingress starts the routing every test uses; its responses are not
// cached, so that each request shows where it was routed.
const ingress = `  policies:
    default: {cache: off}
  listeners:
    - name: ingress
      address: 127.0.0.1:0
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
`

func TestRouteChangeFromAdminAPIIsFollowedWithoutRestart(t *testing.T) {
	a, b := upstream(t, "a"), upstream(t, "b")
	s := startStack(t, ingress+`            - name: main
              match: {prefix: /}
              pool: a
`+twoPools(a, b))
	if r := s.send(t, "GET", "/v2/health/ready", ""); r.status != 200 || r.servedBy != "a" {
		t.Fatalf("before the change: %d from %q: %s", r.status, r.servedBy, r.body)
	}
	eventually(t, "edge-1 ACKs every type", func() bool { return s.allACKed(t) })
	before := s.nodeStatus(t)["route"].AckedVersion

	s.admin(t, "PUT", "/v1/listeners/ingress/routes/main", `{"match": {"prefix": "/"}, "pool": "b"}`)
	eventually(t, "requests reach pool b", func() bool { return s.send(t, "GET", "/v2/health/ready", "").servedBy == "b" })
	eventually(t, "edge-1 ACKs the new route version", func() bool {
		return s.allACKed(t) && s.nodeStatus(t)["route"].AckedVersion != before
	})
	if got := s.proxy.Addr("ingress"); got != s.front {
		t.Fatalf("listener moved from %s to %s: the change should not rebind it", s.front, got)
	}
}

// The ext_proc server copies the body's model into x-infergate-model and
// clears the route cache; the proxy (through the harness) then routes on
// it, while a request naming another model stays on the path's route.
func TestModelRouteChosenAfterClearRouteCache(t *testing.T) {
	a, b := upstream(t, "a"), upstream(t, "b")
	s := startStack(t, ingress+`            - name: big-model
              match: {prefix: /v1/, model: big}
              pool: b
            - name: main
              match: {prefix: /}
              pool: a
`+twoPools(a, b))
	for _, c := range []struct{ model, want string }{{"big", "b"}, {"small", "a"}} {
		r := s.send(t, "POST", "/v1/embeddings", fmt.Sprintf(`{"model":%q,"input":"hello"}`, c.model), "Content-Type", "application/json")
		if r.status != 200 || r.servedBy != c.want {
			t.Errorf("model %s: %d from %q, want pool %s: %s", c.model, r.status, r.servedBy, c.want, r.body)
		}
	}
}

func TestHeaderMatchAndWeightedDestinations(t *testing.T) {
	a, b := upstream(t, "a"), upstream(t, "b")
	s := startStack(t, ingress+`            - name: canary-opt-in
              match: {prefix: /, headers: [{name: x-canary, exact: "yes"}]}
              pool: b
            - name: split
              match: {prefix: /}
              destinations: [{pool: a, weight: 50}, {pool: b, weight: 50}]
`+twoPools(a, b))
	for range 5 {
		if r := s.send(t, "GET", "/v2/health/ready", "", "X-Canary", "yes"); r.servedBy != "b" {
			t.Fatalf("x-canary: yes went to %q, want b", r.servedBy)
		}
	}
	// With even weights, 60 requests all landing in one pool has odds of
	// 2^-59: seeing both proves the split without timing or tight counts.
	seen := map[string]int{}
	for range 60 {
		seen[s.send(t, "GET", "/v2/health/ready", "").servedBy]++
	}
	if seen["a"] == 0 || seen["b"] == 0 || seen["a"]+seen["b"] != 60 {
		t.Fatalf("weighted 50/50 split served %v", seen)
	}
}

// A pool with no endpoints answers 503 "no healthy upstream"; an engine
// registering over the admin API arrives through EDS and is used, and
// leaves again when it deregisters.
func TestEndpointsFollowEDS(t *testing.T) {
	a := upstream(t, "a")
	s := startStack(t, latePool)
	// Envoy's router answers after the request phase, and the reply goes
	// through ext_proc's response phase, as its Cache-Status shows.
	if r := s.send(t, "GET", "/v2/health/ready", ""); r.status != 503 || r.body != "no healthy upstream" || r.header.Get("Cache-Status") == "" {
		t.Fatalf("empty pool: %d %q, Cache-Status %q", r.status, r.body, r.header.Get("Cache-Status"))
	}
	s.admin(t, "POST", "/v1/pools/late/endpoints", fmt.Sprintf(`{"address": %q}`, a))
	eventually(t, "the registered engine serves", func() bool { return s.send(t, "GET", "/v2/health/ready", "").servedBy == "a" })
	s.admin(t, "DELETE", "/v1/pools/late/endpoints/"+a, "")
	eventually(t, "the deregistered engine is gone", func() bool { return s.send(t, "GET", "/v2/health/ready", "").status == 503 })
}

// A restarted control plane has forgotten the engines that registered.
// It holds its first configuration back until they register again, so the
// proxy keeps serving them meanwhile instead of answering 503.
func TestRegisteredEnginesSurviveAControlPlaneRestart(t *testing.T) {
	a := upstream(t, "a")
	s := startStack(t, latePool)
	register := fmt.Sprintf(`{"address": %q}`, a)
	s.admin(t, "POST", "/v1/pools/late/endpoints", register)
	eventually(t, "the registered engine serves", func() bool { return s.send(t, "GET", "/", "").servedBy == "a" })

	s.stopControlPlane()
	cfg := s.cfg
	cfg.XDS.Admin = "127.0.0.1:0"
	grace := 5 * time.Second
	cfg.XDS.RegistrationGrace = &grace
	restarted := time.Now()
	s.startControlPlane(t, cfg)
	eventually(t, "edge-1 asks the restarted control plane", func() bool { return s.connected(t) })
	// A reply that came back while the control plane still reports the
	// hold was served during it; the hold only ever ends, so on a machine
	// slow enough to reach here after the grace the loop just stops early.
	during := 0
	for range 10 {
		r := s.send(t, "GET", "/", "")
		if !s.holding(t) {
			break
		}
		during++
		if r.servedBy != "a" {
			t.Fatalf("during the registration grace: %d from %q: %s", r.status, r.servedBy, r.body)
		}
	}
	if during == 0 && time.Since(restarted) < grace {
		t.Fatalf("the control plane held nothing back, %s into a %s grace", time.Since(restarted), grace)
	}
	t.Logf("%d requests answered during the registration grace", during)
	s.admin(t, "POST", "/v1/pools/late/endpoints", register) // the engine's next heartbeat
	eventually(t, "edge-1 ACKs the restarted control plane's configuration", func() bool { return s.allACKed(t) })
	if r := s.send(t, "GET", "/", ""); r.servedBy != "a" {
		t.Fatalf("after the grace: %d from %q: %s", r.status, r.servedBy, r.body)
	}
}

// A listener moved onto a port another process holds cannot be bound: the
// proxy NACKs the update with the reason, the control plane records it,
// and the listener keeps serving where it was.
func TestUnbindableListenerIsNACKedAndTheOldOneServes(t *testing.T) {
	a, b := upstream(t, "a"), upstream(t, "b")
	s := startStack(t, ingress+`            - name: main
              match: {prefix: /}
              pool: a
`+twoPools(a, b))
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	eventually(t, "edge-1 ACKs every type", func() bool { return s.allACKed(t) })

	s.admin(t, "PUT", "/v1/config", fmt.Sprintf(`{
		"listeners": [{"name": "ingress", "address": %q, "virtual_hosts": [{"name": "all", "domains": ["*"],
			"routes": [{"name": "main", "match": {"prefix": "/"}, "pool": "b"}]}]}],
		"policies": {"default": {"cache": "off"}},
		"pools": [{"name": "a", "endpoints": [%q]}, {"name": "b", "endpoints": [%q]}]}`, busy.Addr(), a, b))
	var nack xds.TypeStatus
	eventually(t, "edge-1 NACKs the listener", func() bool {
		nack = s.nodeStatus(t)["listener"]
		return nack.NackedVersion != ""
	})
	if !strings.Contains(nack.Error, "cannot bind "+busy.Addr().String()) {
		t.Errorf("NACK error %q does not say which address could not be bound", nack.Error)
	}
	// The route config carried no problem and was applied: the old socket
	// now routes to b, as Envoy keeps a listener whose update it refused.
	eventually(t, "the old listener serves the new route", func() bool { return s.send(t, "GET", "/", "").servedBy == "b" })
}

func TestNewRejectsMissingSettings(t *testing.T) {
	if _, err := xdsproxy.New(xdsproxy.Config{NodeID: "n"}); err == nil {
		t.Error("no ADS address accepted")
	}
	if _, err := xdsproxy.New(xdsproxy.Config{ADS: "127.0.0.1:1"}); err == nil {
		t.Error("no node id accepted")
	}
}

// A listener the control plane no longer sends stops accepting
// connections; one it adds starts serving, with no restart.
func TestListenersComeAndGoWithLDS(t *testing.T) {
	a, b := upstream(t, "a"), upstream(t, "b")
	s := startStack(t, ingress+`            - name: main
              match: {prefix: /}
              pool: a
`+twoPools(a, b))
	s.admin(t, "PUT", "/v1/config", fmt.Sprintf(`{
		"policies": {"default": {"cache": "off"}},
		"listeners": [{"name": "edge", "address": "127.0.0.1:0", "virtual_hosts": [{"name": "all", "domains": ["*"],
			"routes": [{"name": "main", "match": {"prefix": "/"}, "pool": "b"}]}]}],
		"pools": [{"name": "a", "endpoints": [%q]}, {"name": "b", "endpoints": [%q]}]}`, a, b))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	edge, err := s.proxy.WaitServing(ctx, "edge")
	if err != nil {
		t.Fatal(err)
	}
	old := s.front
	s.front = edge
	if r := s.send(t, "GET", "/", ""); r.servedBy != "b" {
		t.Fatalf("new listener: %d from %q", r.status, r.servedBy)
	}
	eventually(t, "the removed listener refuses connections", func() bool {
		conn, err := net.Dial("tcp", old)
		if err == nil {
			conn.Close()
		}
		return err != nil
	})
	if s.proxy.Addr("ingress") != "" {
		t.Fatal("the removed listener still reports an address")
	}
}

// While the control plane is away the proxy serves what it last applied;
// a control plane back on the same address is followed again.
func TestKeepsServingThroughAControlPlaneRestart(t *testing.T) {
	a, b := upstream(t, "a"), upstream(t, "b")
	s := startStack(t, ingress+`            - name: main
              match: {prefix: /}
              pool: a
`+twoPools(a, b))
	s.stopControlPlane()
	if r := s.send(t, "GET", "/", ""); r.status != 200 || r.servedBy != "a" {
		t.Fatalf("control plane down: %d from %q: %s", r.status, r.servedBy, r.body)
	}
	cfg := s.cfg
	cfg.XDS.Admin = "127.0.0.1:0"
	cfg.XDS.Listeners[0].VirtualHosts[0].Routes[0].Pool = "b"
	s.startControlPlane(t, cfg)
	eventually(t, "the restarted control plane's route is followed", func() bool { return s.send(t, "GET", "/", "").servedBy == "b" })
}

// A client cannot pick its tenant: Envoy removes the tenant header as the
// request arrives, so rotating it does not escape the API key's rate
// limit. A listener that trusts a proxy in front keeps the header.
func TestClientTenantHeaderIgnoredUnlessTrusted(t *testing.T) {
	a := upstream(t, "a")
	routing := func(trusted bool) string {
		return fmt.Sprintf(`  policies:
    default: {cache: off, requests_per_second: 0.01, burst: 1}
  listeners:
    - name: ingress
      address: 127.0.0.1:0
      trust_tenant_header: %t
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
            - name: main
              match: {prefix: /}
              pool: a
  pools:
    - name: a
      endpoints: [%s]
`, trusted, a)
	}
	for _, tc := range []struct {
		trusted    bool
		wantSecond int
	}{
		{trusted: false, wantSecond: http.StatusTooManyRequests},
		{trusted: true, wantSecond: http.StatusOK},
	} {
		s := startStack(t, routing(tc.trusted))
		first := s.send(t, "GET", "/v2/health/ready", "", "Authorization", "Bearer k1", "X-Tenant-Id", "t1")
		second := s.send(t, "GET", "/v2/health/ready", "", "Authorization", "Bearer k1", "X-Tenant-Id", "t2")
		if first.status != http.StatusOK || second.status != tc.wantSecond {
			t.Errorf("trust_tenant_header %t: the same key claiming tenants t1 then t2 got %d then %d, want 200 then %d",
				tc.trusted, first.status, second.status, tc.wantSecond)
		}
	}
}

// A route that matches on the model keeps its own policy for clients that
// name the model only in the body, as OpenAI clients do: ext_proc applies
// the policy of the route Envoy takes once the body is read, and of no
// model route whose path does not fit.
func TestModelRoutePolicyAppliesToUnchangedClients(t *testing.T) {
	a, b := upstream(t, "a"), upstream(t, "b")
	s := startStack(t, `  policies:
    default: {cache: off}
    big: {cache: off, requests_per_second: 0.01, burst: 1}
  listeners:
    - name: ingress
      address: 127.0.0.1:0
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
            - name: big-model
              match: {prefix: /v2/, model: big, headers: [{name: ":method", exact: POST}]}
              pool: b
              policy: big
            - name: main
              match: {prefix: /}
              pool: a
`+twoPools(a, b))
	send := func(path, model string) reply {
		return s.send(t, "POST", path, fmt.Sprintf(`{"model":%q,"input":"hello"}`, model), "Content-Type", "application/json", "Authorization", "Bearer k")
	}
	if r := send("/v2/embeddings", "big"); r.status != http.StatusOK || r.servedBy != "b" {
		t.Fatalf("first big request: %d from %q, want 200 from b: %s", r.status, r.servedBy, r.body)
	}
	if r := send("/v2/embeddings", "big"); r.status != http.StatusTooManyRequests {
		t.Fatalf("second big request: %d from %q, want 429 from route big-model's burst of 1", r.status, r.servedBy)
	}
	for i := range 3 {
		// The model route matches POST only (a pseudo-header, as Envoy
		// allows).
		if r := s.send(t, "PUT", "/v2/embeddings", `{"model":"big","input":"hello"}`, "Authorization", "Bearer k"); r.status != http.StatusOK || r.servedBy != "a" {
			t.Fatalf("big by PUT (request %d): %d from %q, want 200 from a", i, r.status, r.servedBy)
		}
		if r := send("/v1/embeddings", "big"); r.status != http.StatusOK || r.servedBy != "a" {
			t.Fatalf("big on /v1/ (request %d): %d from %q, want 200 from a: the model route is /v2/ only", i, r.status, r.servedBy)
		}
		if r := send("/v2/embeddings", "small"); r.status != http.StatusOK || r.servedBy != "a" {
			t.Fatalf("small (request %d): %d from %q, want 200 from a, unlimited", i, r.status, r.servedBy)
		}
	}
}

// Envoy normalizes the path before routing, so spelling it another way (an
// escaped letter, a doubled slash, a dot segment) cannot take a request
// past its route, and that route's limits, to the engine that serves it.
func TestPathSpellingsTakeTheRouteTheEngineServes(t *testing.T) {
	a := upstream(t, "a")
	s := startStack(t, fmt.Sprintf(`  policies:
    limited: {cache: off, requests_per_second: 0.01, burst: 1}
  listeners:
    - name: ingress
      address: 127.0.0.1:0
      virtual_hosts:
        - name: all
          routes:
            - {name: embeddings, match: {prefix: /v1/embeddings}, pool: a, policy: limited}
            - {name: other, match: {prefix: /}, pool: a}
  pools:
    - name: a
      endpoints: [%s]
`, a))
	if r := s.send(t, "POST", "/v1/%65mbeddings", "{}", "Authorization", "Bearer k1"); r.status != http.StatusOK || !strings.Contains(r.body, `"path":"/v1/embeddings"`) {
		t.Fatalf("first request: %d %s, want 200 from the engine at /v1/embeddings", r.status, r.body)
	}
	for _, p := range []string{"/v1/embeddings", "/v1//embeddings", "/v1/x/../embeddings", "/v1/./embeddings", "/v1/%65mbeddings"} {
		if r := s.send(t, "POST", p, "{}", "Authorization", "Bearer k1"); r.status != http.StatusTooManyRequests {
			t.Errorf("POST %s after the burst: %d %s, want 429 under the embeddings route's limit", p, r.status, r.body)
		}
	}
	if r := s.send(t, "POST", "/v1%2Fembeddings", "{}", "Authorization", "Bearer k2"); r.status != http.StatusBadRequest {
		t.Errorf("POST /v1%%2Fembeddings: %d, want 400 (escaped slashes are refused)", r.status)
	}
}

// The listener buffers bodies up to buffer_limit_bytes (default 16 MiB),
// not Envoy's 1 MiB default: the engine's answer for a few hundred
// embeddings is larger than that.
func TestBodiesOverEnvoysDefaultBufferPass(t *testing.T) {
	big := `{"data":"` + strings.Repeat("x", 3<<20) + `"}`
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		in, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Request-Bytes", strconv.Itoa(len(in)))
		_, _ = io.WriteString(w, big)
	}))
	t.Cleanup(srv.Close)
	s := startStack(t, fmt.Sprintf("  pools:\n    - name: default\n      endpoints: [%s]\n", srv.Listener.Addr()))
	r := s.send(t, "POST", "/v1/embeddings", big, "Authorization", "Bearer k")
	if r.status != http.StatusOK || len(r.body) != len(big) || r.header.Get("X-Request-Bytes") != strconv.Itoa(len(big)) {
		t.Errorf("3 MiB each way: %d, %d response bytes, engine read %s request bytes; want 200 and %d both ways",
			r.status, len(r.body), r.header.Get("X-Request-Bytes"), len(big))
	}
}
