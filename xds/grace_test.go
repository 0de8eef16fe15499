package xds

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/infergate/infergate/config"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// registeredPoolConfig routes everything to pool dyn, which only
// registering engines fill.
func registeredPoolConfig(grace string) string {
	return onePoolConfig(grace, "dyn", "")
}

// onePoolConfig routes everything to pool, with endpoints (YAML flow
// list) if not empty.
func onePoolConfig(grace, pool, endpoints string) string {
	cfg := fmt.Sprintf(`xds:
  registration_grace: %s
  listeners:
    - name: ingress
      virtual_hosts:
        - name: all
          routes:
            - name: main
              pool: %s
  pools:
    - name: %s
`, grace, pool, pool)
	if endpoints != "" {
		cfg += "      endpoints: " + endpoints + "\n"
	}
	return cfg
}

// pendingRecv receives the stream's next response in the background.
func pendingRecv(a *adsStream) <-chan *discoveryv3.DiscoveryResponse {
	ch := make(chan *discoveryv3.DiscoveryResponse, 1)
	go func() {
		if r, err := a.stream.Recv(); err == nil {
			ch <- r
		}
	}()
	return ch
}

// A restarted control plane must not push empty pools to Envoys that
// still hold the engines: it holds its configuration for the grace period,
// while every engine registers again, and then sends them all at once.
func TestRestartedControlPlaneHoldsConfigWhileEnginesReregister(t *testing.T) {
	const grace = 2 * time.Second
	start := time.Now()
	s := startServer(t, registeredPoolConfig(grace.String()))
	envoy := dialADS(t, s.ADSAddr(), "held")
	if !strings.Contains(scrape(t, s), "infergate_xds_registration_hold 1") {
		t.Error("the hold is not on /metrics")
	}
	envoy.send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType})
	got := pendingRecv(envoy)
	for _, engine := range []string{backend(t), backend(t)} {
		if code := adminDo(t, s, "POST", "/v1/pools/dyn/endpoints", fmt.Sprintf(`{"address": %q}`, engine), nil); code != 201 {
			t.Fatalf("register: %d", code)
		}
	}
	select {
	case resp := <-got:
		if held := time.Since(start); held < grace {
			t.Fatalf("clusters sent %s after start, within the %s grace", held, grace)
		}
		envoy.send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()})
	case <-time.After(20 * time.Second):
		t.Fatal("no clusters after the grace")
	}
	if !strings.Contains(scrape(t, s), "infergate_xds_registration_hold 0") {
		t.Error("the hold's end is not on /metrics")
	}
	_, eds := envoy.fetch(resourcev3.EndpointType, "dyn")
	if len(eds) != 1 || len(eds[0].(*endpointv3.ClusterLoadAssignment).GetEndpoints()[0].GetLbEndpoints()) != 2 {
		t.Fatalf("the first endpoints Envoy got for dyn are %v, want both engines that registered", eds)
	}
}

func TestRegistrationGraceEndsWithPoolsStillEmpty(t *testing.T) {
	s := startServer(t, registeredPoolConfig("100ms"))
	envoy := dialADS(t, s.ADSAddr(), "after-grace")
	if _, clusters := envoy.fetch(resourcev3.ClusterType); len(clusters) == 0 {
		t.Fatal("no clusters after the grace")
	}
	_, eds := envoy.fetch(resourcev3.EndpointType, "dyn")
	if len(eds) != 1 || len(eds[0].(*endpointv3.ClusterLoadAssignment).GetEndpoints()) != 0 {
		t.Fatalf("endpoints for dyn: %v, want an empty assignment", eds)
	}
}

// Pools with listed endpoints, and the default pool where the engine it
// falls back to runs in the same process, hold nothing back.
func TestNoGraceWithoutRegisteredOnlyPools(t *testing.T) {
	const grace = 14 * time.Second
	for name, cfg := range map[string]string{
		"listed endpoints":                onePoolConfig("14s", "fixed", "[127.0.0.1:1]"),
		"default pool, engine in process": "xds:\n  registration_grace: 14s\n",
		"grace off":                       registeredPoolConfig("0s"),
	} {
		t.Run(name, func(t *testing.T) {
			start := time.Now()
			s := startServer(t, cfg)
			if _, clusters := dialADS(t, s.ADSAddr(), "prompt").fetch(resourcev3.ClusterType); len(clusters) == 0 {
				t.Fatal("no clusters")
			}
			if took := time.Since(start); took >= grace {
				t.Fatalf("clusters came after %s: held for the grace", took)
			}
		})
	}
}

// A control plane without the engine in its process (infergate xds) waits
// for registrations into the default pool too: engines register there by
// default, and engine.listen is not theirs.
func TestStandaloneControlPlaneWaitsForTheDefaultPool(t *testing.T) {
	const grace = time.Second
	start := time.Now()
	cfg, err := config.Parse("standalone.yaml", []byte("xds:\n  registration_grace: 1s\n"))
	if err != nil {
		t.Fatal(err)
	}
	s := startWithKube(t, cfg, "", nil)
	resp, _ := dialADS(t, s.ADSAddr(), "standalone").fetch(resourcev3.ClusterType)
	if took := time.Since(start); took < grace || len(resp.GetResources()) == 0 {
		t.Fatalf("clusters (%d) came %s after start, within the %s grace", len(resp.GetResources()), took, grace)
	}
}
