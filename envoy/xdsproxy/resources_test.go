package xdsproxy

import (
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	corsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

func mustAny(t *testing.T, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func extProcFilter(t *testing.T, ep *extprocfilterv3.ExternalProcessor) *hcmv3.HttpFilter {
	if ep == nil {
		ep = &extprocfilterv3.ExternalProcessor{}
	}
	ep.GrpcService = &corev3.GrpcService{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
		EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: "extproc"},
	}}
	return &hcmv3.HttpFilter{Name: "envoy.filters.http.ext_proc", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, ep)}}
}

func routerFilter(t *testing.T) *hcmv3.HttpFilter {
	return &hcmv3.HttpFilter{Name: "envoy.filters.http.router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, &routerv3.Router{})}}
}

func listener(t *testing.T, filters ...*hcmv3.HttpFilter) *listenerv3.Listener {
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix: "in",
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			RouteConfigName: "in",
			ConfigSource:    &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}},
		}},
		HttpFilters: filters,
	}
	return &listenerv3.Listener{
		Name: "in",
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: "127.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 10000},
		}}},
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name: "hcm", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, hcm)},
		}}}},
	}
}

func TestListenerDecoding(t *testing.T) {
	cors := &hcmv3.HttpFilter{Name: "cors", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, &corsv3.Cors{})}}
	optionalCors := proto.Clone(cors).(*hcmv3.HttpFilter)
	optionalCors.IsOptional = true

	// A filter type this binary does not even link, as a newer Envoy
	// extension would be.
	unlinked := &hcmv3.HttpFilter{Name: "future", IsOptional: true,
		ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: &anypb.Any{TypeUrl: "type.googleapis.com/example.v9.Future"}}}
	lc, err := decodeListener(listener(t, extProcFilter(t, nil), optionalCors, unlinked, routerFilter(t)))
	if err != nil {
		t.Fatalf("ext_proc, optional filters the proxy does not run, router: %v", err)
	}
	if lc.address != "127.0.0.1:10000" || lc.rdsName != "in" || lc.extProcName != "envoy.filters.http.ext_proc" {
		t.Errorf("decoded %+v", lc)
	}

	for _, c := range []struct {
		name    string
		filters []*hcmv3.HttpFilter
		want    string
	}{
		{"unknown filter", []*hcmv3.HttpFilter{extProcFilter(t, nil), cors, routerFilter(t)}, "is not supported"},
		{"unlinked filter", []*hcmv3.HttpFilter{extProcFilter(t, nil), {Name: "future",
			ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: &anypb.Any{TypeUrl: "type.googleapis.com/example.v9.Future"}}}, routerFilter(t)}, "is not supported"},
		{"router not last", []*hcmv3.HttpFilter{routerFilter(t), extProcFilter(t, nil)}, "must be the last"},
		{"no router", []*hcmv3.HttpFilter{extProcFilter(t, nil)}, "must be the last"},
		{"no ext_proc", []*hcmv3.HttpFilter{routerFilter(t)}, "no ext_proc filter"},
		{"two ext_proc", []*hcmv3.HttpFilter{extProcFilter(t, nil), extProcFilter(t, nil), routerFilter(t)}, "only one ext_proc"},
		{"what the harness cannot reproduce", []*hcmv3.HttpFilter{
			extProcFilter(t, &extprocfilterv3.ExternalProcessor{SendBodyWithoutWaitingForHeaderResponse: true}), routerFilter(t),
		}, "send_body_without_waiting_for_header_response"},
	} {
		if _, err := decodeListener(listener(t, c.filters...)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one containing %q", c.name, err, c.want)
		}
	}
}

func TestRouteAndClusterRefusals(t *testing.T) {
	direct := &routev3.Route{Name: "d", Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
		Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: 200}}}
	if _, err := decodeRoute(direct); err == nil || !strings.Contains(err.Error(), "only route actions") {
		t.Errorf("direct_response: %v", err)
	}
	badRegex := &routev3.Route{Name: "r", Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: "(["}}},
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "c"}}}}
	if _, err := decodeRoute(badRegex); err == nil || !strings.Contains(err.Error(), "safe_regex") {
		t.Errorf("bad regex: %v", err)
	}
	if _, err := decodeCluster(&clusterv3.Cluster{Name: "o", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_ORIGINAL_DST}}); err == nil {
		t.Error("ORIGINAL_DST cluster accepted")
	}
}

func TestVirtualHostByDomain(t *testing.T) {
	rc := &routeConfig{vhosts: []*virtualHost{
		{name: "any", domains: []string{"*"}},
		{name: "prefix", domains: []string{"api.*"}},
		{name: "suffix", domains: []string{"*.example.com"}},
		{name: "exact", domains: []string{"api.example.com"}},
	}}
	for host, want := range map[string]string{
		"api.example.com": "exact",
		"www.example.com": "suffix",
		"api.internal":    "prefix",
		"localhost:10000": "any",
		".example.com":    "any", // a wildcard never matches an empty part
	} {
		if got := rc.virtualHost(host); got == nil || got.name != want {
			t.Errorf("host %q: got %v, want %s", host, got, want)
		}
	}
	if got := (&routeConfig{vhosts: []*virtualHost{{name: "x", domains: []string{"x.com"}}}}).virtualHost("y.com"); got != nil {
		t.Errorf("no domain matches y.com, got %s", got.name)
	}
}

func TestWeightedPickSkipsEmptyClusters(t *testing.T) {
	tb := &table{upstreams: map[string]*upstream{"empty": {}, "full": {addrs: []string{"127.0.0.1:1", "127.0.0.1:2"}}}}
	r := &route{clusters: []weightedCluster{{name: "empty", weight: 90}, {name: "full", weight: 10}, {name: "unknown", weight: 50}}, total: 150}
	seen := map[string]bool{}
	for range 4 {
		seen[tb.pick(r)] = true
	}
	if len(seen) != 2 || !seen["http://127.0.0.1:1"] || !seen["http://127.0.0.1:2"] {
		t.Fatalf("picks %v, want both endpoints of the only cluster with endpoints, round robin", seen)
	}
	if got := tb.pick(&route{clusters: []weightedCluster{{name: "empty", weight: 1}}, total: 1}); got != "" {
		t.Fatalf("a route whose clusters are empty picked %q", got)
	}
}
