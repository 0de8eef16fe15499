package xds

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/infergate/infergate/config"
)

// Each admin change edits the model being served when it is applied, so
// that concurrent changes (from admins, or the file watcher) never undo
// one another.
func TestConcurrentAdminChangesAreAllKept(t *testing.T) {
	a, b := backend(t), backend(t)
	s := startServer(t, twoPools(a, b, "pool: a"))
	const n = 12
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			if code := adminDo(t, s, "PUT", fmt.Sprintf("/v1/policies/p%d", i), `{"priority": 3}`, nil); code != 200 {
				t.Errorf("PUT policy p%d: %d", i, code)
			}
		})
	}
	wg.Wait()
	var cur struct {
		Version int
		Config  struct{ Policies map[string]any }
	}
	adminDo(t, s, "GET", "/v1/config", "", &cur)
	for i := range n {
		if _, ok := cur.Config.Policies[fmt.Sprintf("p%d", i)]; !ok {
			t.Errorf("policy p%d was accepted but is not in version %d: %v", i, cur.Version, cur.Config.Policies)
		}
	}
}

// A pool may not take the ext_proc cluster's name: its routes would
// silently send inference traffic to the ext_proc server.
func TestPoolNamedLikeTheExtProcClusterIsRefused(t *testing.T) {
	cfg := config.Default()
	cfg.XDS.Pools = []config.XDSPool{{Name: ExtProcCluster, Endpoints: []string{"127.0.0.1:9"}}}
	cfg.XDS.Listeners = []config.XDSListener{{Name: "ingress", VirtualHosts: []config.XDSVirtualHost{{
		Name: "all", Routes: []config.XDSRoute{{Name: "main", Pool: ExtProcCluster}},
	}}}}
	_, err := newServer(cfg, "", slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry(), nil)
	if err == nil || !strings.Contains(err.Error(), `xds.pools[0].name: "infergate-extproc" is reserved`) {
		t.Fatalf("got %v, want the pool name refused", err)
	}
}

// An engine that registers at an address the pool already lists (an
// endpoint in the file that also registers itself) is one endpoint: grpc-go
// NACKs a load assignment that names an address twice.
func TestEngineRegisteredAtAStaticAddressIsListedOnce(t *testing.T) {
	a, b := backend(t), backend(t)
	s := startServer(t, twoPools(a, b, "pool: a"))
	cc := grpcClient(t, s.ADSAddr(), "dup-client", "ingress")
	servedBy(t, cc, a)
	before := s.Nodes()["grpc/dup-client"].Types["endpoint"].SentVersion
	host, port, _ := net.SplitHostPort(a)
	padded := net.JoinHostPort(host, "0"+port) // a, spelt another way
	for _, addr := range []string{a, padded, b} {
		if code := adminDo(t, s, "POST", "/v1/pools/a/endpoints", fmt.Sprintf(`{"address": %q, "ttl": "1h"}`, addr), nil); code != 201 && !(addr == padded && code == 200) {
			t.Fatalf("register %s: %d", addr, code)
		}
	}
	eventually(t, "new endpoints ACKed", func() error {
		ts := s.Nodes()["grpc/dup-client"].Types["endpoint"]
		if ts.NackedVersion != "" {
			t.Fatalf("endpoints NACKed: %s", ts.Error)
		}
		if ts.SentVersion == before || ts.AckedVersion != ts.SentVersion {
			return fmt.Errorf("endpoint status %+v", ts)
		}
		return nil
	})
}

// A registration with a TTL shorter than xds.heartbeat_ttl still leaves
// EDS soon after that TTL, not only at the next heartbeat_ttl/4 sweep
// (3.75s with the default 15s).
func TestShortTTLRegistrationExpiresOnTime(t *testing.T) {
	s := startServer(t, `engine:
  listen: 127.0.0.1:1
xds:
  pools:
    - name: default
    - name: dyn
`)
	if code := adminDo(t, s, "POST", "/v1/pools/dyn/endpoints", `{"address": "127.0.0.1:9", "ttl": "100ms"}`, nil); code != 201 {
		t.Fatalf("register: %d", code)
	}
	deadline := time.Now().Add(3 * time.Second)
	for {
		var list struct{ Endpoints []registration }
		adminDo(t, s, "GET", "/v1/endpoints", "", &list)
		if len(list.Endpoints) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("a 100ms registration is still listed 3s later: %+v", list.Endpoints)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// An engine registered in a pool that is then removed is deregistered
// with it: it is no longer listed, its heartbeats are refused (so its
// registrar registers again), and it does not come back when a pool of
// that name is added again.
func TestRemovingAPoolDeregistersItsEngines(t *testing.T) {
	s := startServer(t, `engine:
  listen: 127.0.0.1:1
xds:
  pools:
    - name: default
    - name: dyn
`)
	if code := adminDo(t, s, "POST", "/v1/pools/dyn/endpoints", `{"address": "127.0.0.1:9", "ttl": "1h"}`, nil); code != 201 {
		t.Fatalf("register: %d", code)
	}
	listed := func() []registration {
		var list struct{ Endpoints []registration }
		adminDo(t, s, "GET", "/v1/endpoints", "", &list)
		return list.Endpoints
	}
	withPools := func(pools string) string {
		return fmt.Sprintf(`{"listeners": [{"name": "ingress", "virtual_hosts": [{"name": "all", "routes": [{"name": "main", "pool": "default"}]}]}], "pools": %s}`, pools)
	}
	if code := adminDo(t, s, "PUT", "/v1/config", withPools(`[{"name": "default"}]`), nil); code != 200 {
		t.Fatalf("removing pool dyn: %d", code)
	}
	if got := listed(); len(got) != 0 {
		t.Fatalf("after pool dyn was removed, endpoints %+v are still listed", got)
	}
	if code := adminDo(t, s, "POST", "/v1/pools/dyn/endpoints/127.0.0.1:9/heartbeat", "", nil); code != 404 {
		t.Fatalf("heartbeat into the removed pool: %d, want 404", code)
	}
	if code := adminDo(t, s, "PUT", "/v1/config", withPools(`[{"name": "default"}, {"name": "dyn"}]`), nil); code != 200 {
		t.Fatalf("adding pool dyn back: %d", code)
	}
	if got := listed(); len(got) != 0 {
		t.Fatalf("pool dyn added back with its old endpoints %+v", got)
	}
}

// With xds.admin_token_file, routing cannot change without the token and
// nothing is changed by a refused call; the probes stay open.
func TestAdminAPIRequiresTheToken(t *testing.T) {
	token := filepath.Join(t.TempDir(), "token")
	writeFile(t, token, "s3cret\n")
	s := startServer(t, fmt.Sprintf(`engine:
  listen: 127.0.0.1:1
xds:
  admin_token_file: %s
`, token))
	do := func(method, path, body, auth string) int {
		req, _ := http.NewRequest(method, "http://"+s.AdminAddr()+path, strings.NewReader(body))
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	before := s.currentVersion()
	route := `{"match": {"prefix": "/"}, "pool": "default"}`
	if got := do("PUT", "/v1/listeners/ingress/routes/extra", route, ""); got != http.StatusUnauthorized {
		t.Fatalf("PUT a route without the token: %d, want 401", got)
	}
	if got := do("GET", "/v1/config", "", "Bearer wrong"); got != http.StatusUnauthorized {
		t.Fatalf("GET config with a wrong token: %d, want 401", got)
	}
	if v := s.currentVersion(); v != before {
		t.Fatalf("a refused call changed the config version from %d to %d", before, v)
	}
	if got := do("PUT", "/v1/listeners/ingress/routes/extra", route, "Bearer s3cret"); got != http.StatusOK {
		t.Fatalf("PUT a route with the token: %d, want 200", got)
	}
	if got := do("GET", "/readyz", "", ""); got != http.StatusOK {
		t.Fatalf("/readyz without the token: %d, want 200", got)
	}
}

// A route moved from the end of one virtual host to the front of the next
// changes where it matches, so connected Envoys must get the new table.
func TestRouteMovedToAnotherVirtualHostIsPushed(t *testing.T) {
	hosts := func(public, internal string) string {
		return "engine:\n  listen: 127.0.0.1:1\nxds:\n  watch_interval: 20ms\n  listeners:\n    - name: ingress\n      virtual_hosts:\n" +
			"        - {name: public, domains: [api.example.com], routes: [" + public + "]}\n" +
			"        - {name: internal, domains: [\"*\"], routes: [" + internal + "]}\n"
	}
	const r1, r2, r3 = "{name: r1, match: {prefix: /a}, pool: default}", "{name: r2, match: {prefix: /}, pool: default}", "{name: r3, match: {prefix: /}, pool: default}"
	s := startServer(t, hosts(r1+", "+r2, r3))
	ads := dialADS(t, s.ADSAddr(), "envoy-1")
	first, _ := ads.fetch(resourcev3.RouteType, "ingress")
	writeFile(t, s.path, hosts(r1, r2+", "+r3))
	next := ads.recv()
	if next.GetVersionInfo() == first.GetVersionInfo() {
		t.Fatalf("pushed version %s again", next.GetVersionInfo())
	}
	rc := unpack(t, next.GetResources())[0].(*routev3.RouteConfiguration)
	if got := len(rc.GetVirtualHosts()[0].GetRoutes()); got != 1 {
		t.Errorf("virtual host public has %d routes after the move, want 1", got)
	}
}

// An updated cluster only finishes warming when Envoy gets a
// ClusterLoadAssignment for it, so a change to a pool's cluster alone
// (here its connect timeout) must come with a new EDS version.
func TestClusterChangeIsFollowedByEndpoints(t *testing.T) {
	s := startServer(t, "engine:\n  listen: 127.0.0.1:1\n")
	ads := dialADS(t, s.ADSAddr(), "envoy-1")
	ads.fetch(resourcev3.ClusterType)
	eds, _ := ads.fetch(resourcev3.EndpointType, "default")
	if code := adminDo(t, s, "PUT", "/v1/config", `{"pools": [{"name": "default", "connect_timeout": "3s"}]}`, nil); code != http.StatusOK {
		t.Fatalf("PUT /v1/config: %d", code)
	}
	cds := ads.recv()
	if cds.GetTypeUrl() != resourcev3.ClusterType {
		t.Fatalf("pushed %s, want the cluster", cds.GetTypeUrl())
	}
	ads.send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, VersionInfo: cds.GetVersionInfo(), ResponseNonce: cds.GetNonce()})
	// Envoy's request for the warming cluster's endpoints.
	ads.send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNames: []string{"default"},
		VersionInfo: eds.GetVersionInfo(), ResponseNonce: eds.GetNonce()})
	if got := ads.recv(); got.GetTypeUrl() != resourcev3.EndpointType || got.GetVersionInfo() == eds.GetVersionInfo() {
		t.Errorf("after the cluster change got %s version %s, want endpoints with a version after %s", got.GetTypeUrl(), got.GetVersionInfo(), eds.GetVersionInfo())
	}
}

// A proxyless gRPC client asks for its own listener by name, and for the
// route and clusters behind it only; it is answered although its node
// gets other listeners too.
func TestProxylessClientOfOneOfTwoListeners(t *testing.T) {
	a, b := backend(t), backend(t)
	s := startServer(t, fmt.Sprintf(`engine:
  listen: 127.0.0.1:1
xds:
  listeners:
    - name: ingress
      address: 127.0.0.1:10000
      virtual_hosts: [{name: all, routes: [{name: main, pool: a}]}]
    - name: other
      address: 127.0.0.1:10001
      virtual_hosts: [{name: all, routes: [{name: rest, pool: b}]}]
  pools:
    - {name: a, endpoints: [%s]}
    - {name: b, endpoints: [%s]}
`, a, b))
	servedBy(t, grpcClient(t, s.ADSAddr(), "two-listener-client", "ingress"), a)
}

// The built-in default pool is the co-located engine (engine.listen) only
// until engines register into it: Envoy must not keep sending a share of
// the traffic to its own localhost.
func TestDefaultPoolDropsEngineListenOnceEnginesRegister(t *testing.T) {
	s := startServer(t, "engine:\n  listen: 127.0.0.1:1\n")
	if code := adminDo(t, s, "POST", "/v1/pools/default/endpoints", `{"address": "10.0.0.7:8080", "ttl": "1h"}`, nil); code != http.StatusCreated {
		t.Fatalf("register: %d", code)
	}
	ads := dialADS(t, s.ADSAddr(), "envoy-1")
	_, res := ads.fetch(resourcev3.EndpointType, "default")
	var got []string
	for _, le := range res[0].(*endpointv3.ClusterLoadAssignment).GetEndpoints() {
		for _, e := range le.GetLbEndpoints() {
			sa := e.GetEndpoint().GetAddress().GetSocketAddress()
			got = append(got, fmt.Sprintf("%s:%d", sa.GetAddress(), sa.GetPortValue()))
		}
	}
	if len(got) != 1 || got[0] != "10.0.0.7:8080" {
		t.Errorf("pool default lists %v, want only the registered engine", got)
	}
}
