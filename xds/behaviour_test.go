package xds

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// twoPools is a config with pools a and b (one backend each) and one
// route "main" with the given destination lines.
func twoPools(a, b, destination string) string {
	return fmt.Sprintf(`engine:
  listen: 127.0.0.1:1
xds:
  watch_interval: 20ms
  listeners:
    - name: ingress
      virtual_hosts:
        - name: all
          routes:
            - name: main
              %s
  pools:
    - name: a
      endpoints: [%s]
    - name: b
      endpoints: [%s]
`, destination, a, b)
}

func TestRouteChangeFromFileReachesClient(t *testing.T) {
	a, b := backend(t), backend(t)
	s := startServer(t, twoPools(a, b, "pool: a"))
	cc := grpcClient(t, s.ADSAddr(), "file-client", "ingress")
	servedBy(t, cc, a)

	writeFile(t, s.path, twoPools(a, b, "pool: b"))
	servedBy(t, cc, b)
	if v := s.currentVersion(); v != 2 {
		t.Errorf("version %d after one file change, want 2", v)
	}
}

func TestRouteChangeFromAdminAPIReachesClient(t *testing.T) {
	a, b := backend(t), backend(t)
	s := startServer(t, twoPools(a, b, "pool: a"))
	cc := grpcClient(t, s.ADSAddr(), "admin-client", "ingress")
	servedBy(t, cc, a)

	var resp struct{ Version int }
	if code := adminDo(t, s, "PUT", "/v1/listeners/ingress/routes/main", `{"pool": "b"}`, &resp); code != 200 || resp.Version != 2 {
		t.Fatalf("PUT route: %d, version %d", code, resp.Version)
	}
	servedBy(t, cc, b)

	// A header match and a model match (the header the ext_proc server
	// sets from the body) in front of the catch-all route.
	if code := adminDo(t, s, "PUT", "/v1/listeners/ingress/routes/canary", `{"match": {"headers": [{"name": "x-canary", "exact": "yes"}]}, "pool": "a"}`, nil); code != 200 {
		t.Fatalf("PUT header route: %d", code)
	}
	if code := adminDo(t, s, "PUT", "/v1/listeners/ingress/routes/model-a", `{"match": {"model": "small"}, "pool": "a"}`, nil); code != 200 {
		t.Fatalf("PUT model route: %d", code)
	}
	servedBy(t, cc, a, "x-canary", "yes")
	servedBy(t, cc, a, "x-infergate-model", "small")
	servedBy(t, cc, b, "x-infergate-model", "large")
	servedBy(t, cc, b)
}

func TestWeightedCanarySplitsTrafficInProportion(t *testing.T) {
	a, b := backend(t), backend(t)
	s := startServer(t, twoPools(a, b, `destinations: [{pool: a, weight: 80}, {pool: b, weight: 20}]`))
	cc := grpcClient(t, s.ADSAddr(), "canary-client", "ingress")
	eventually(t, "first RPC", func() error { _, err := call(cc); return err })

	const n = 1000
	counts := map[string]int{}
	for range n {
		got, err := call(cc)
		if err != nil {
			t.Fatal(err)
		}
		counts[got]++
	}
	// Binomial(1000, 0.2) has a standard deviation of 12.6 calls; ±60 is
	// almost five of them, so only a wrong split fails.
	if counts[a]+counts[b] != n || counts[b] < 200-60 || counts[b] > 200+60 {
		t.Errorf("canary got %d of %d calls (stable %d), want 200±60", counts[b], n, counts[a])
	}
}

// A config that is valid for Envoy but that grpc-go rejects (it has no
// RANDOM load balancer): the NACK is recorded with grpc-go's error text,
// the rejected version is not pushed again, the client keeps its last
// good cluster, and the next config change reaches it.
func TestNACKIsRecordedAndNotResent(t *testing.T) {
	a, b := backend(t), backend(t)
	s := startServer(t, twoPools(a, b, "pool: a"))
	cc := grpcClient(t, s.ADSAddr(), "nacker", "ingress")
	servedBy(t, cc, a)

	if code := adminDo(t, s, "PUT", "/v1/config", fmt.Sprintf(`{"listeners": [{"name": "ingress", "virtual_hosts": [{"name": "all", "routes": [{"name": "main", "pool": "a"}]}]}],
		"pools": [{"name": "a", "lb": "random", "endpoints": [%q]}, {"name": "b", "endpoints": [%q]}]}`, a, b), nil); code != 200 {
		t.Fatalf("PUT config: %d", code)
	}
	var nacked TypeStatus
	eventually(t, "cluster NACKed", func() error {
		ts := s.Nodes()["grpc/nacker"].Types["cluster"]
		if ts == nil || ts.NackedVersion == "" || ts.NackedVersion != ts.SentVersion {
			return fmt.Errorf("cluster status %+v", ts)
		}
		nacked = *ts
		return nil
	})
	if !strings.Contains(nacked.Error, "lbPolicy") {
		t.Errorf("NACK error %q does not carry grpc-go's reason", nacked.Error)
	}
	var nodes struct {
		Nodes map[string]NodeStatus
	}
	adminDo(t, s, "GET", "/v1/nodes", "", &nodes)
	if got := nodes.Nodes["grpc/nacker"].Types["cluster"]; got == nil || got.Error != nacked.Error {
		t.Errorf("admin API shows %+v, want the NACK error", got)
	}
	metrics := scrape(t, s)
	if !strings.Contains(metrics, `infergate_xds_node_status{node="nacker",status="nacked",type="cluster"} 1`) ||
		!strings.Contains(metrics, `infergate_xds_nacks_total{type="cluster"} 1`) {
		t.Errorf("metrics do not show the NACK:\n%s", grepLines(metrics, "infergate_xds_n"))
	}

	// A storm would show within milliseconds; give it ample time.
	time.Sleep(500 * time.Millisecond)
	if ts := s.Nodes()["grpc/nacker"].Types["cluster"]; ts.Pushes != nacked.Pushes {
		t.Errorf("rejected version pushed %d more times", ts.Pushes-nacked.Pushes)
	}
	servedBy(t, cc, a)

	if code := adminDo(t, s, "PUT", "/v1/config", fmt.Sprintf(`{"listeners": [{"name": "ingress", "virtual_hosts": [{"name": "all", "routes": [{"name": "main", "pool": "b"}]}]}],
		"pools": [{"name": "a", "endpoints": [%q]}, {"name": "b", "endpoints": [%q]}]}`, a, b), nil); code != 200 {
		t.Fatalf("PUT config: %d", code)
	}
	servedBy(t, cc, b)
	eventually(t, "cluster ACKed again", func() error {
		if ts := s.Nodes()["grpc/nacker"].Types["cluster"]; ts.NackedVersion != "" || ts.AckedVersion != ts.SentVersion {
			return fmt.Errorf("cluster status %+v", ts)
		}
		return nil
	})
}

func TestBadConfigIsRefusedWhileClientsKeepLastGoodRoutes(t *testing.T) {
	a, b := backend(t), backend(t)
	s := startServer(t, twoPools(a, b, "pool: a"))
	cc := grpcClient(t, s.ADSAddr(), "keeper", "ingress")
	servedBy(t, cc, a)

	// From the file: the error names the field and its line.
	writeFile(t, s.path, twoPools(a, b, "pool: nope"))
	var view struct {
		Version       int
		LastRejection *rejection `json:"last_rejection"`
	}
	eventually(t, "file change refused", func() error {
		adminDo(t, s, "GET", "/v1/config", "", &view)
		if view.LastRejection == nil {
			return fmt.Errorf("no rejection yet")
		}
		return nil
	})
	if e := view.LastRejection.Error; !strings.Contains(e, `xds.listeners[0].virtual_hosts[0].routes[0].pool (line 11): no pool named "nope"`) {
		t.Errorf("rejection %q does not name the field and line", e)
	}
	if view.Version != 1 {
		t.Errorf("version %d after a refused change, want 1", view.Version)
	}

	// From the admin API: 422, and the served model is untouched.
	var e struct{ Error string }
	if code := adminDo(t, s, "PUT", "/v1/listeners/ingress/routes/main", `{"match": {"regex": "/v1/(embed"}, "pool": "b"}`, &e); code != 422 ||
		!strings.Contains(e.Error, "match.regex: not an RE2 expression") || !strings.Contains(e.Error, "version 1 keeps serving") {
		t.Errorf("bad regex: %d %q", code, e.Error)
	}
	// Only Envoy's own (generated) rules refuse this domain.
	if code := adminDo(t, s, "PUT", "/v1/config", fmt.Sprintf(`{"listeners": [{"name": "ingress", "virtual_hosts": [{"name": "all", "domains": ["bad\nhost"], "routes": [{"name": "main", "pool": "a"}]}]}],
		"pools": [{"name": "a", "endpoints": [%q]}, {"name": "b", "endpoints": [%q]}]}`, a, b), &e); code != 422 ||
		!strings.Contains(e.Error, `route config "ingress": envoy.config.route.v3.RouteConfiguration: invalid RouteConfiguration.VirtualHosts[0]`) {
		t.Errorf("domain Envoy refuses: %d %q", code, e.Error)
	}
	if code := adminDo(t, s, "PUT", "/v1/listeners/ingress/routes/main", `{"pool": "b", "colour": "red"}`, &e); code != 400 || !strings.Contains(e.Error, "colour") {
		t.Errorf("unknown field: %d %q", code, e.Error)
	}
	if code := adminDo(t, s, "PUT", "/v1/listeners/nope/routes/main", `{"pool": "b"}`, &e); code != 404 {
		t.Errorf("unknown listener: %d %q", code, e.Error)
	}
	servedBy(t, cc, a)
	if !strings.Contains(scrape(t, s), `infergate_xds_config_rejections_total{source="admin"} 2`) {
		t.Errorf("rejection not counted")
	}
}

func TestDeregisteredOrSilentEngineLeavesEDS(t *testing.T) {
	c := backend(t)
	s := startServer(t, "engine:\n  listen: 127.0.0.1:1\n"+registeredPoolConfig("0s"))
	cc := grpcClient(t, s.ADSAddr(), "eds-client", "ingress")
	register := func(ttl string) int {
		return adminDo(t, s, "POST", "/v1/pools/dyn/endpoints", fmt.Sprintf(`{"address": %q, "ttl": %q}`, c, ttl), nil)
	}
	unavailable := func() error {
		_, err := call(cc)
		if status.Code(err) != codes.Unavailable {
			return fmt.Errorf("RPC error %v, want Unavailable", err)
		}
		return nil
	}

	if code := register("1h"); code != 201 {
		t.Fatalf("register: %d", code)
	}
	servedBy(t, cc, c)
	if code := adminDo(t, s, "DELETE", "/v1/pools/dyn/endpoints/"+c, "", nil); code != 204 {
		t.Fatalf("deregister: %d", code)
	}
	eventually(t, "deregistered engine gone", unavailable)
	if code := adminDo(t, s, "DELETE", "/v1/pools/dyn/endpoints/"+c, "", nil); code != 404 {
		t.Errorf("second deregister: %d, want 404", code)
	}

	// An engine that heartbeats stays; once it falls silent it leaves.
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			if adminDo(t, s, "POST", "/v1/pools/dyn/endpoints/"+c+"/heartbeat", "", nil) == 404 {
				register("300ms") // expired while the machine was busy: re-register, as an engine does
			}
		}
	}()
	register("300ms")
	servedBy(t, cc, c)
	close(stop)
	<-done
	eventually(t, "silent engine gone", unavailable)
	var list struct{ Endpoints []registration }
	adminDo(t, s, "GET", "/v1/endpoints", "", &list)
	if len(list.Endpoints) != 0 {
		t.Errorf("registrations left: %+v", list.Endpoints)
	}

	if code := adminDo(t, s, "POST", "/v1/pools/nope/endpoints", fmt.Sprintf(`{"address": %q}`, c), nil); code != 404 {
		t.Errorf("unknown pool: %d, want 404", code)
	}
	if code := adminDo(t, s, "POST", "/v1/pools/dyn/endpoints", `{"address": "engine.local:8080"}`, nil); code != 400 {
		t.Errorf("host name: %d, want 400", code)
	}
}

func TestRollbackToAnEarlierVersion(t *testing.T) {
	a, b := backend(t), backend(t)
	s := startServer(t, twoPools(a, b, "pool: a"))
	cc := grpcClient(t, s.ADSAddr(), "rollback-client", "ingress")
	servedBy(t, cc, a)
	adminDo(t, s, "PUT", "/v1/listeners/ingress/routes/main", `{"pool": "b"}`, nil)
	servedBy(t, cc, b)

	var resp struct{ Version int }
	if code := adminDo(t, s, "POST", "/v1/rollback/1", "", &resp); code != 200 || resp.Version != 3 {
		t.Fatalf("rollback: %d, version %d", code, resp.Version)
	}
	servedBy(t, cc, a)
	var list struct {
		Versions []struct {
			Version int
			Note    string
			Current bool
		}
	}
	adminDo(t, s, "GET", "/v1/versions", "", &list)
	if len(list.Versions) != 3 || list.Versions[2].Note != "rollback to 1" || !list.Versions[2].Current {
		t.Errorf("history %+v", list.Versions)
	}
	if code := adminDo(t, s, "POST", "/v1/rollback/99", "", nil); code != 404 {
		t.Errorf("rollback to an unknown version: %d, want 404", code)
	}
}

// scrape reads the admin server's /metrics.
func scrape(t *testing.T, s *testServer) string {
	t.Helper()
	resp, err := http.Get("http://" + s.AdminAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}

func grepLines(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
