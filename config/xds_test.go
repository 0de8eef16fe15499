package config

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestXDSDefaults(t *testing.T) {
	c, err := Parse("empty.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	x := c.XDS
	if len(x.Listeners) != 1 || x.Listeners[0].Name != "ingress" || x.Listeners[0].Address != "127.0.0.1:10000" || x.Listeners[0].BufferLimitBytes != 16<<20 {
		t.Fatalf("default listener %+v", x.Listeners)
	}
	r := x.Listeners[0].VirtualHosts[0].Routes[0]
	if r.Pool != DefaultPoolName || r.Match.Prefix != "/" || r.Timeout != time.Minute || r.Retry.Attempts != 1 ||
		strings.Join(r.Retry.On, ",") != "reset,connect-failure,retriable-status-codes" || r.Retry.StatusCodes[0] != 503 {
		t.Errorf("default route %+v", r)
	}
	p := x.Pools[0]
	if p.Name != DefaultPoolName || p.LB != "least_request" || p.HealthCheck.Path != "/v2/health/ready" ||
		p.CircuitBreakers.RetryBudgetPercent != 20 || p.Outlier.Consecutive5xx != 5 {
		t.Errorf("default pool %+v", p)
	}
	if x.WatchInterval != time.Second || x.History != 20 || x.HeartbeatTTL != 15*time.Second || x.ExtProc.MessageTimeout != 500*time.Millisecond {
		t.Errorf("defaults %+v", x)
	}
	// A little over the engines' default heartbeat interval (ttl / 3).
	if *x.RegistrationGrace != 6*time.Second {
		t.Errorf("registration_grace default %s, want 6s", *x.RegistrationGrace)
	}
}

// Every routing problem is reported at once, each with its path and the
// line of the file to fix.
func TestXDSErrorsNameFieldAndLine(t *testing.T) {
	src := `xds:
  listeners:
    - name: ingress
      virtual_hosts:
        - name: all
          routes:
            - name: chat
              match: {regex: "/v1/(chat"}
              pool: gpu
            - name: chat
              pool: cpu
              destinations: [{pool: cpu, weight: 1}]
            - name: split
              destinations: [{pool: cpu, weight: 0}]
              retry: {on: [sometimes]}
              policy: missing
            - name: urgent
              match: {headers: [{name: x-infergate-priority, exact: "9"}]}
              pool: cpu
  policies:
    bad: {cache: maybe}
  pools:
    - name: cpu
      endpoints: [localhost, "engine.local:8080"]
    - name: k8s
      kubernetes: {service: Engines, namespace: ml, port: "70000"}
`
	_, err := Parse("infergate.yaml", []byte(src))
	if err == nil {
		t.Fatal("config accepted")
	}
	msg := WithLines([]byte(src), err).Error()
	for _, want := range []string{
		"xds.listeners[0].virtual_hosts[0].routes[0].match.regex (line 8): not an RE2 expression",
		`xds.listeners[0].virtual_hosts[0].routes[0].pool (line 9): no pool named "gpu"`,
		`xds.listeners[0].virtual_hosts[0].routes[1].name (line 10): route "chat" is already defined in listener`,
		"xds.listeners[0].virtual_hosts[0].routes[1] (line 10): give pool or destinations, not both",
		"xds.listeners[0].virtual_hosts[0].routes[2].destinations (line 14): weights add up to 0",
		`xds.listeners[0].virtual_hosts[0].routes[2].retry.on[0] (line 15): "sometimes" is not an Envoy retry condition`,
		`xds.listeners[0].virtual_hosts[0].routes[2].policy (line 16): no policy named "missing"`,
		`xds.listeners[0].virtual_hosts[0].routes[3].match.headers[0].name (line 18): x-infergate-priority is set by the ext_proc server`,
		`xds.policies.bad.cache (line 21): "maybe" is not one of off, exact, semantic`,
		`xds.pools[0].endpoints[0] (line 24): "localhost" is not host:port`,
		`xds.pools[0].endpoints[1] (line 24): EDS carries IP addresses, not the host name "engine.local"`,
		`xds.pools[1].kubernetes.service (line 26): "Engines" is not a Service name`,
		`xds.pools[1].kubernetes.port (line 26): "70000" is neither a port number nor a port name`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error does not contain %q:\n%s", want, msg)
		}
	}
}

func TestListenerBufferTooSmallForARequestIsRefused(t *testing.T) {
	_, err := Parse("infergate.yaml", []byte("xds:\n  listeners:\n    - {name: a, buffer_limit_bytes: 4096}\n"))
	if err == nil || !strings.Contains(err.Error(), "xds.listeners[0].buffer_limit_bytes (line 3): 4096 is below the minimum of 65536") {
		t.Fatalf("got %v, want the buffer limit refused", err)
	}
}

func TestXDSUnknownFieldNamesLine(t *testing.T) {
	_, err := Parse("infergate.yaml", []byte("xds:\n  listeners:\n    - name: a\n      virtual_hosts:\n        - name: v\n          routes:\n            - name: r\n              pol: default\n"))
	if err == nil || !strings.Contains(err.Error(), "line 8: field pol not found") {
		t.Errorf("got %v, want the unknown field and its line", err)
	}
}

// Envoy lower-cases every domain before it checks that each is served by
// one virtual host only, and NACKs the route config when one is not.
func TestXDSDomainsDifferingOnlyInCaseAreRefused(t *testing.T) {
	src := `xds:
  listeners:
    - name: ingress
      virtual_hosts:
        - name: a
          domains: ["api.example.com"]
          routes: [{name: r1, pool: default}]
        - name: b
          domains: ["API.Example.com"]
          routes: [{name: r2, pool: default}]
`
	_, err := Parse("infergate.yaml", []byte(src))
	if err == nil || !strings.Contains(err.Error(), `domain "API.Example.com" is already served by virtual host "a"`) {
		t.Fatalf("got %v, want the duplicate domain refused", err)
	}
}

// Envoy binds a listener only to an IP address; a host name there passed
// validation and then had the listener NACKed.
func TestXDSListenerOnHostNameIsRefused(t *testing.T) {
	src := `xds:
  listeners:
    - name: ingress
      address: "localhost:10000"
`
	_, err := Parse("infergate.yaml", []byte(src))
	if err == nil || !strings.Contains(err.Error(), `xds.listeners[0].address`) || !strings.Contains(err.Error(), `"localhost"`) {
		t.Fatalf("got %v, want the host name refused", err)
	}
}

// Two listeners with a route of the same name would share cache entries and
// rate limits, which are scoped by route name.
func TestRouteNamesAreUniqueAcrossListeners(t *testing.T) {
	_, err := Parse("x.yaml", []byte(`xds:
  listeners:
    - name: public
      address: 127.0.0.1:10000
      virtual_hosts: [{name: v, routes: [{name: main, pool: default}]}]
    - name: internal
      address: 127.0.0.1:10001
      virtual_hosts: [{name: v, routes: [{name: main, pool: default}]}]
`))
	if err == nil || !strings.Contains(err.Error(), `route "main" is already defined in listener "public"`) || !strings.Contains(err.Error(), "line 8") {
		t.Fatalf("error %v, want the second route refused with its line", err)
	}
}

// A collapsed request asks Envoy for collapse_wait plus a margin; past
// max_message_timeout Envoy ignores it and the request times out.
func TestCollapseWaitMustFitTheMessageTimeout(t *testing.T) {
	c, err := Parse("infergate.yaml", []byte("extproc:\n  cache: {collapse_wait: 5500ms}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.CheckCollapseWait(); err == nil || !strings.Contains(err.Error(), "max_message_timeout 6s is below extproc.cache.collapse_wait 5.5s + 1s") {
		t.Errorf("CheckCollapseWait = %v, want the 6s default named too short", err)
	}
	if err := Default().CheckCollapseWait(); err != nil {
		t.Errorf("defaults: %v", err)
	}
}

// Each Envoy gets only the listeners of its nodes, so two listeners may
// share an address when no node gets both.
func TestListenersShareAnAddressOnlyOnDisjointNodes(t *testing.T) {
	listeners := func(a, b string) []byte {
		return fmt.Appendf(nil, "xds:\n  listeners:\n    - {name: edge, address: 0.0.0.0:10000, nodes: %s}\n    - {name: internal, address: 0.0.0.0:10000, nodes: %s}\n", a, b)
	}
	if _, err := Parse("infergate.yaml", listeners("[edge-1]", "[mesh-1, mesh-2]")); err != nil {
		t.Errorf("disjoint nodes: %v", err)
	}
	for _, b := range []string{"[mesh-1, edge-1]", "[]"} {
		if _, err := Parse("infergate.yaml", listeners("[edge-1]", b)); err == nil || !strings.Contains(err.Error(), `0.0.0.0:10000 is already used by listener "edge" on the same nodes`) {
			t.Errorf("nodes [edge-1] and %s: %v, want the address refused", b, err)
		}
	}
}
