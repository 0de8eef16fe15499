package xds

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"go.yaml.in/yaml/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/infergate/infergate/envoy/validate"
)

func names(msgs []proto.Message) []string {
	var out []string
	for _, m := range msgs {
		out = append(out, m.(interface{ GetName() string }).GetName())
	}
	slices.Sort(out)
	return out
}

// Each node gets only the listeners meant for it and what they reference.
func TestEachNodeGetsOnlyItsResources(t *testing.T) {
	s := startServer(t, `engine:
  listen: 127.0.0.1:1
xds:
  listeners:
    - name: ingress
      virtual_hosts:
        - name: all
          routes: [{name: main, pool: a}]
    - name: internal
      address: 127.0.0.1:10001
      nodes: [special]
      virtual_hosts:
        - name: all
          routes: [{name: batch, pool: c}]
  pools:
    - {name: a, endpoints: ["127.0.0.1:9001"]}
    - {name: c, endpoints: ["127.0.0.1:9003"]}
    - {name: unused, endpoints: ["127.0.0.1:9004"]}
`)
	for _, tc := range []struct {
		node                string
		listeners, clusters []string
	}{
		{"other", []string{"ingress"}, []string{"a", ExtProcCluster}},
		{"special", []string{"ingress", "internal"}, []string{"a", "c", ExtProcCluster}},
	} {
		ads := dialADS(t, s.ADSAddr(), tc.node)
		_, ls := ads.fetch(resourcev3.ListenerType)
		_, cs := ads.fetch(resourcev3.ClusterType)
		slices.Sort(tc.clusters)
		if got := names(ls); !slices.Equal(got, tc.listeners) {
			t.Errorf("node %s: listeners %v, want %v", tc.node, got, tc.listeners)
		}
		if got := names(cs); !slices.Equal(got, tc.clusters) {
			t.Errorf("node %s: clusters %v, want %v", tc.node, got, tc.clusters)
		}
	}

	// A proxyless client gets the API-listener form of the same listener.
	ads := dialADS(t, s.ADSAddr(), "proxyless")
	ads.node.UserAgentName = "gRPC Go"
	_, ls := ads.fetch(resourcev3.ListenerType, "ingress")
	if l := ls[0].(*listenerv3.Listener); l.GetApiListener() == nil || l.GetAddress() != nil {
		t.Errorf("proxyless node got %v, want an API listener", l)
	}
}

// deltaStream is a raw incremental ADS client presenting itself as Envoy.
type deltaStream struct {
	t      *testing.T
	stream discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
	resps  chan *discoveryv3.DeltaDiscoveryResponse
}

func dialDelta(t *testing.T, ads string) *deltaStream {
	cc, err := grpc.NewClient(ads, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	d := &deltaStream{t: t, stream: st, resps: make(chan *discoveryv3.DeltaDiscoveryResponse, 16)}
	go func() {
		for {
			r, err := st.Recv()
			if err != nil {
				close(d.resps)
				return
			}
			d.resps <- r
		}
	}()
	return d
}

func (d *deltaStream) send(req *discoveryv3.DeltaDiscoveryRequest) {
	d.t.Helper()
	if err := d.stream.Send(req); err != nil {
		d.t.Fatal(err)
	}
}

func (d *deltaStream) recv(within time.Duration) *discoveryv3.DeltaDiscoveryResponse {
	select {
	case r := <-d.resps:
		return r
	case <-time.After(within):
		return nil
	}
}

func deltaRouteCluster(t *testing.T, r *discoveryv3.DeltaDiscoveryResponse) string {
	t.Helper()
	if r == nil || len(r.GetResources()) != 1 {
		t.Fatalf("delta response %v, want one route config", r)
	}
	rc := &routev3.RouteConfiguration{}
	if err := r.GetResources()[0].GetResource().UnmarshalTo(rc); err != nil {
		t.Fatal(err)
	}
	return rc.GetVirtualHosts()[0].GetRoutes()[0].GetRoute().GetCluster()
}

// Incremental ADS: subscribe, ACK, get the change; a NACK is recorded and
// the rejected resource is not sent again until the next change.
func TestDeltaADS(t *testing.T) {
	s := startServer(t, twoPools("127.0.0.1:9001", "127.0.0.1:9002", "pool: a"))
	d := dialDelta(t, s.ADSAddr())
	d.send(&discoveryv3.DeltaDiscoveryRequest{
		Node:                   &corev3.Node{Id: "delta", UserAgentName: "envoy"},
		TypeUrl:                resourcev3.RouteType,
		ResourceNamesSubscribe: []string{"ingress"},
	})
	r := d.recv(20 * time.Second)
	if got := deltaRouteCluster(t, r); got != "a" {
		t.Fatalf("route to %q, want a", got)
	}
	d.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.RouteType, ResponseNonce: r.GetNonce()})
	eventually(t, "delta ACK recorded", func() error {
		if ts := s.Nodes()["envoy/delta"].Types["route"]; ts == nil || ts.AckedVersion == "" || ts.AckedVersion != ts.SentVersion {
			return fmt.Errorf("route status %+v", ts)
		}
		return nil
	})

	adminDo(t, s, "PUT", "/v1/listeners/ingress/routes/main", `{"pool": "b"}`, nil)
	r = d.recv(20 * time.Second)
	if got := deltaRouteCluster(t, r); got != "b" {
		t.Fatalf("route to %q after the change, want b", got)
	}
	d.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.RouteType, ResponseNonce: r.GetNonce(),
		ErrorDetail: &statuspb.Status{Code: 3, Message: "route refused by this test"}})
	eventually(t, "delta NACK recorded", func() error {
		if ts := s.Nodes()["envoy/delta"].Types["route"]; ts == nil || ts.Error != "route refused by this test" {
			return fmt.Errorf("route status %+v", ts)
		}
		return nil
	})
	if again := d.recv(500 * time.Millisecond); again != nil {
		t.Fatalf("rejected resource sent again: %v", again)
	}

	adminDo(t, s, "PUT", "/v1/listeners/ingress/routes/main", `{"pool": "a"}`, nil)
	if got := deltaRouteCluster(t, d.recv(20*time.Second)); got != "a" {
		t.Fatalf("route to %q after the next change, want a", got)
	}
}

// The resources a node gets, rendered to YAML by the admin API, read back
// strictly and validated, are exactly what ADS serves it.
func TestRenderedYAMLValidatesAndMatchesADS(t *testing.T) {
	s, _ := quickstart(t)
	resp, err := http.Get("http://" + s.AdminAddr() + "/v1/resources?node=infergate-envoy")
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	rendered, err := parseYAML(data)
	if err != nil {
		t.Fatalf("%v in\n%s", err, data)
	}
	for _, m := range rendered {
		if err := validate.Message(m); err != nil {
			t.Errorf("%T: %v", m, err)
		}
	}

	ads := dialADS(t, s.ADSAddr(), "infergate-envoy")
	var served []proto.Message
	for _, typ := range resourceTypes {
		var names []string
		if typ == resourcev3.RouteType {
			names = []string{"ingress"}
		}
		if typ == resourcev3.EndpointType {
			names = []string{"default"}
		}
		_, msgs := ads.fetch(typ, names...)
		served = append(served, msgs...)
	}
	// ADS sends a type's resources in no particular order.
	byName := func(msgs []proto.Message) {
		slices.SortFunc(msgs, func(a, b proto.Message) int {
			ka := string(a.ProtoReflect().Descriptor().FullName()) + "/" + resourceName(a)
			kb := string(b.ProtoReflect().Descriptor().FullName()) + "/" + resourceName(b)
			return strings.Compare(ka, kb)
		})
	}
	byName(served)
	byName(rendered)
	if len(served) != len(rendered) {
		t.Fatalf("rendered %d resources, ADS serves %d", len(rendered), len(served))
	}
	for i := range served {
		if !proto.Equal(served[i], rendered[i]) {
			t.Errorf("resource %d differs:\nADS:  %v\nYAML: %v", i, served[i], rendered[i])
		}
	}
}

// parseYAML reads RenderYAML's output back strictly: protojson refuses
// unknown fields, and every @type must resolve.
func parseYAML(data []byte) ([]proto.Message, error) {
	var doc struct {
		Resources []any `yaml:"resources"`
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&doc); err != nil {
		return nil, err
	}
	var out []proto.Message
	for i, r := range doc.Resources {
		j, err := json.Marshal(r)
		if err != nil {
			return nil, fmt.Errorf("resources[%d]: %w", i, err)
		}
		a := &anypb.Any{}
		if err := protojson.Unmarshal(j, a); err != nil {
			return nil, fmt.Errorf("resources[%d]: %w", i, err)
		}
		m, err := a.UnmarshalNew()
		if err != nil {
			return nil, fmt.Errorf("resources[%d]: %w", i, err)
		}
		out = append(out, m)
	}
	return out, nil
}

// A policy changed over the admin API reaches Envoy inside the route, as
// the ext_proc server will decode it; a policy still in use cannot go.
func TestPolicyChangeReachesTheRoute(t *testing.T) {
	s := startServer(t, twoPools("127.0.0.1:9001", "127.0.0.1:9002", "pool: a"))
	if code := adminDo(t, s, "PUT", "/v1/policies/chat", `{"cache": "semantic", "ttl": "90s", "semantic_threshold": 0.9, "tenant_header": "x-team", "token_budget": 5000, "priority": 8}`, nil); code != 200 {
		t.Fatalf("PUT policy: %d", code)
	}
	if code := adminDo(t, s, "PUT", "/v1/listeners/ingress/routes/main", `{"pool": "a", "policy": "chat"}`, nil); code != 200 {
		t.Fatalf("PUT route: %d", code)
	}
	ads := dialADS(t, s.ADSAddr(), "policy-envoy")
	_, rs := ads.fetch(resourcev3.RouteType, "ingress")
	p := routePolicy(t, rs[0].(*routev3.RouteConfiguration).GetVirtualHosts()[0].GetRoutes()[0])
	if p.Route != "main" || p.Cache != "semantic" || p.TTL != 90*time.Second || p.SemanticThreshold != 0.9 ||
		p.TenantHeader != "x-team" || p.TokenBudget != 5000 || p.TokenWindow != time.Minute || p.Priority != 8 {
		t.Errorf("policy on the route: %+v", p)
	}

	var e struct{ Error string }
	if code := adminDo(t, s, "DELETE", "/v1/policies/chat", "", &e); code != 422 || !strings.Contains(e.Error, `no policy named "chat"`) {
		t.Errorf("deleting a policy in use: %d %q", code, e.Error)
	}
	if code := adminDo(t, s, "PUT", "/v1/policies/fast", `{"priority": 42}`, &e); code != 422 || !strings.Contains(e.Error, "xds.policies.fast.priority: 42 is not in 1..9") {
		t.Errorf("bad policy: %d %q", code, e.Error)
	}
}

func resourceName(m proto.Message) string {
	if n, ok := m.(interface{ GetName() string }); ok {
		return n.GetName()
	}
	return m.(interface{ GetClusterName() string }).GetClusterName()
}
