package xds

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	earlyheaderv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/http/early_header_mutation/header_mutation/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/infergate/infergate/config"
	"github.com/infergate/infergate/envoy/validate"
	"github.com/infergate/infergate/extproc"
	"github.com/infergate/infergate/policy"
)

// quickstart serves examples/quickstart/infergate.yaml with the engine
// pool pointing at a test backend.
func quickstart(t *testing.T) (*testServer, string) {
	t.Helper()
	cfg, err := config.Load("../examples/quickstart/infergate.yaml")
	if err != nil {
		t.Fatal(err)
	}
	be := backend(t)
	cfg.Engine.Listen = be
	return startConfig(t, cfg, ""), be
}

// The first snapshot, as grpc-go's xDS client sees it: listener, route,
// cluster and endpoints resolve to the engine, and every type is ACKed.
func TestFirstSnapshotReachesGRPCClient(t *testing.T) {
	s, engine := quickstart(t)
	cc := grpcClient(t, s.ADSAddr(), "first", "ingress")
	servedBy(t, cc, engine)

	eventually(t, "all four types ACKed", func() error {
		n, ok := s.Nodes()["grpc/first"]
		if !ok {
			return fmt.Errorf("node not connected")
		}
		for _, typ := range []string{"listener", "route", "cluster", "endpoint"} {
			ts := n.Types[typ]
			if ts == nil || ts.AckedVersion == "" || ts.AckedVersion != ts.SentVersion || ts.NackedVersion != "" {
				return fmt.Errorf("%s: %+v", typ, ts)
			}
		}
		return nil
	})
}

// The first snapshot, as Envoy fetches it: the listener runs ext_proc then
// the router, routes carry their policy, the engine pool is EDS with
// health checks, the ext_proc cluster speaks HTTP/2; all of it passes the
// generated validation.
func TestFirstSnapshotForEnvoy(t *testing.T) {
	s, engine := quickstart(t)
	ads := dialADS(t, s.ADSAddr(), "infergate-envoy")

	_, ls := ads.fetch(resourcev3.ListenerType)
	if len(ls) != 1 {
		t.Fatalf("got %d listeners, want 1", len(ls))
	}
	l := ls[0].(*listenerv3.Listener)
	if sa := l.GetAddress().GetSocketAddress(); l.GetName() != "ingress" || sa.GetAddress() != "127.0.0.1" || sa.GetPortValue() != 10000 {
		t.Errorf("listener %q on %v, want ingress on 127.0.0.1:10000", l.GetName(), sa)
	}
	hcm := &hcmv3.HttpConnectionManager{}
	if err := l.GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(hcm); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range hcm.GetHttpFilters() {
		names = append(names, f.GetName())
	}
	if !slices.Equal(names, []string{ExtProcFilter, RouterFilter}) {
		t.Errorf("HTTP filters %v, want ext_proc then router", names)
	}
	ep := &extprocv3.ExternalProcessor{}
	if err := hcm.GetHttpFilters()[0].GetTypedConfig().UnmarshalTo(ep); err != nil {
		t.Fatal(err)
	}
	if m := ep.GetProcessingMode(); !proto.Equal(m, extproc.ProcessingMode) {
		t.Errorf("processing mode %v, want extproc.ProcessingMode %v", m, extproc.ProcessingMode)
	}
	if !ep.GetFailureModeAllow() || !ep.GetAllowModeOverride() || ep.GetMessageTimeout().AsDuration() != 500*time.Millisecond ||
		ep.GetGrpcService().GetEnvoyGrpc().GetClusterName() != ExtProcCluster || !slices.Contains(ep.GetRequestAttributes(), "xds.route_name") {
		t.Errorf("ext_proc filter %v", ep)
	}
	// The server's SSE switch is honoured only if Envoy lists that exact mode,
	// and collapsed requests extend their timeout up to the max.
	if om := ep.GetAllowedOverrideModes(); len(om) != 1 || !proto.Equal(om[0], extproc.StreamedResponseMode) {
		t.Errorf("allowed_override_modes %v, want exactly extproc.StreamedResponseMode", om)
	}
	if ep.GetMaxMessageTimeout().AsDuration() <= config.Default().ExtProc.Cache.CollapseWait {
		t.Errorf("max_message_timeout %v does not cover collapse_wait", ep.GetMaxMessageTimeout().AsDuration())
	}
	if hcm.GetRds().GetRouteConfigName() != "ingress" || hcm.GetRds().GetConfigSource().GetAds() == nil {
		t.Errorf("RDS %v, want route config ingress over ADS", hcm.GetRds())
	}
	// A client's own x-tenant-id is gone before routing and ext_proc.
	early := hcm.GetEarlyHeaderMutationExtensions()
	hm := &earlyheaderv3.HeaderMutation{}
	if len(early) != 1 || early[0].GetName() != EarlyHeaderRemoval || early[0].GetTypedConfig().UnmarshalTo(hm) != nil ||
		len(hm.GetMutations()) != 1 || hm.GetMutations()[0].GetRemove() != policy.DefaultTenantHeader {
		t.Errorf("early header mutations %v, want the removal of %s", early, policy.DefaultTenantHeader)
	}

	_, rs := ads.fetch(resourcev3.RouteType, "ingress")
	rc := rs[0].(*routev3.RouteConfiguration)
	routes := rc.GetVirtualHosts()[0].GetRoutes()
	if len(routes) != 2 || routes[0].GetName() != "embeddings" || routes[0].GetMatch().GetPrefix() != "/v1/embeddings" || routes[0].GetRoute().GetCluster() != "default" {
		t.Fatalf("routes %v", routes)
	}
	p := routePolicy(t, routes[0])
	if p.Route != "embeddings" || p.TTL != 10*time.Minute || p.RequestsPerSecond != 50 || p.Burst != 100 || p.Cache != policy.CacheExact {
		t.Errorf("embeddings policy %+v", p)
	}
	if rp := routes[0].GetRoute().GetRetryPolicy(); rp.GetRetryOn() != "reset,connect-failure,retriable-status-codes" || !slices.Equal(rp.GetRetriableStatusCodes(), []uint32{503}) {
		t.Errorf("retry policy %v", rp)
	}

	_, cs := ads.fetch(resourcev3.ClusterType)
	clusters := map[string]*clusterv3.Cluster{}
	for _, c := range cs {
		clusters[c.(*clusterv3.Cluster).GetName()] = c.(*clusterv3.Cluster)
	}
	pool := clusters["default"]
	if pool.GetType() != clusterv3.Cluster_EDS || pool.GetLbPolicy() != clusterv3.Cluster_LEAST_REQUEST ||
		pool.GetHealthChecks()[0].GetHttpHealthCheck().GetPath() != "/v2/health/ready" || pool.GetOutlierDetection() == nil ||
		pool.GetCircuitBreakers().GetThresholds()[0].GetRetryBudget() == nil {
		t.Errorf("engine pool %v", pool)
	}
	ext := clusters[ExtProcCluster]
	opts := &upstreamhttpv3.HttpProtocolOptions{}
	if err := ext.GetTypedExtensionProtocolOptions()[httpProtocolOptionsName].UnmarshalTo(opts); err != nil || opts.GetExplicitHttpConfig().GetHttp2ProtocolOptions() == nil {
		t.Errorf("ext_proc cluster is not HTTP/2: %v %v", opts, err)
	}
	extAddr := ext.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
	if got := fmt.Sprintf("%s:%d", extAddr.GetAddress(), extAddr.GetPortValue()); got != s.cfg.ExtProc.Listen || ext.GetType() != clusterv3.Cluster_STATIC {
		t.Errorf("ext_proc cluster at %s (%v), want extproc.listen %s, STATIC", got, ext.GetType(), s.cfg.ExtProc.Listen)
	}

	_, es := ads.fetch(resourcev3.EndpointType, "default")
	cla := es[0].(*endpointv3.ClusterLoadAssignment)
	sa := cla.GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
	if got := fmt.Sprintf("%s:%d", sa.GetAddress(), sa.GetPortValue()); got != engine {
		t.Errorf("engine endpoint %s, want %s", got, engine)
	}

	for _, msg := range slices.Concat(ls, rs, cs, es) {
		if err := validate.Message(msg); err != nil {
			t.Errorf("%T: %v", msg, err)
		}
	}
}

func routePolicy(t *testing.T, r *routev3.Route) policy.Policy {
	t.Helper()
	fc := &routev3.FilterConfig{}
	if err := r.GetTypedPerFilterConfig()[ExtProcFilter].UnmarshalTo(fc); err != nil {
		t.Fatal(err)
	}
	per := &extprocv3.ExtProcPerRoute{}
	if err := fc.GetConfig().UnmarshalTo(per); err != nil {
		t.Fatal(err)
	}
	for _, h := range per.GetOverrides().GetGrpcInitialMetadata() {
		if h.GetKey() == policy.MetadataKey {
			p, err := policy.Decode(h.GetValue())
			if err != nil {
				t.Fatal(err)
			}
			return p
		}
	}
	t.Fatalf("route %q carries no %s", r.GetName(), policy.MetadataKey)
	return policy.Policy{}
}

// Every tenant header a listener's routes read is removed once, the
// default policy's included; a trusting listener removes none.
func TestUntrustedHeadersCoverEveryRoutePolicy(t *testing.T) {
	policies := map[string]policy.Policy{"team": {TenantHeader: "x-team"}, "other": {TenantHeader: "x-team"}}
	l := config.XDSListener{VirtualHosts: []config.XDSVirtualHost{
		{Routes: []config.XDSRoute{{Policy: "team"}, {Policy: "other"}}},
		{Routes: []config.XDSRoute{{Policy: "unnamed"}}},
	}}
	if got, want := untrustedHeaders(l, policies), []string{"x-team", policy.DefaultTenantHeader}; !slices.Equal(got, want) {
		t.Errorf("removed %v, want %v", got, want)
	}
	l.TrustTenantHeader = true
	if got := untrustedHeaders(l, policies); got != nil {
		t.Errorf("trusting listener removes %v, want none", got)
	}
}

// A route's policy lists the model routes before it in its virtual host,
// each with its match (minus the model header) and its own policy, so
// that ext_proc can apply the policy of the route Envoy takes once the
// body names the model; routes that match on the model list none.
func TestRoutePolicyCarriesTheModelRoutesBeforeIt(t *testing.T) {
	s := startServer(t, `engine:
  listen: 127.0.0.1:1
xds:
  listeners:
    - name: ingress
      virtual_hosts:
        - name: all
          routes:
            - {name: big, match: {prefix: /v1/, model: big}, pool: default, policy: strict}
            - {name: main, match: {prefix: /}, pool: default}
            - {name: late, match: {prefix: /, model: late}, pool: default}
  policies:
    strict: {requests_per_second: 1}
`)
	ads := dialADS(t, s.ADSAddr(), "infergate-envoy")
	_, rs := ads.fetch(resourcev3.RouteType, "ingress")
	routes := rs[0].(*routev3.RouteConfiguration).GetVirtualHosts()[0].GetRoutes()
	main := routePolicy(t, routes[1])
	if len(main.ModelRoutes) != 1 {
		t.Fatalf("route main lists %d model routes, want 1 (big; late comes after it)", len(main.ModelRoutes))
	}
	mr := main.ModelRoutes[0]
	var m routev3.RouteMatch
	if err := protojson.Unmarshal(mr.Match, &m); err != nil {
		t.Fatal(err)
	}
	if mr.Model != "big" || m.GetPrefix() != "/v1/" || len(m.GetHeaders()) != 0 {
		t.Errorf("model route %s with match %v, want big on prefix /v1/ without the model header", mr.Model, &m)
	}
	if mr.Policy.Route != "big" || mr.Policy.RequestsPerSecond != 1 {
		t.Errorf("model route policy %+v, want route big's policy strict", mr.Policy)
	}
	if big := routePolicy(t, routes[0]); len(big.ModelRoutes) != 0 {
		t.Errorf("route big, chosen on the client's own model header, lists model routes %+v", big.ModelRoutes)
	}
}

// A virtual host with so many model routes that a policy would not fit
// in gRPC metadata is refused with the reason, and the last good config
// keeps serving.
func TestTooManyModelRoutesAreRefused(t *testing.T) {
	s := startServer(t, "engine:\n  listen: 127.0.0.1:1\n")
	var routes []string
	for i := range 200 {
		routes = append(routes, fmt.Sprintf(`{"name": "m%d", "match": {"regex": "/v1/(embeddings|chat/completions|completions)/%d", "model": "model-%d"}, "pool": "default"}`, i, i, i))
	}
	routes = append(routes, `{"name": "main", "pool": "default"}`)
	var out struct{ Error string }
	code := adminDo(t, s, "PUT", "/v1/config", `{"listeners": [{"name": "ingress", "virtual_hosts": [{"name": "all", "routes": [`+strings.Join(routes, ",")+`]}]}]}`, &out)
	if code != http.StatusUnprocessableEntity || !strings.Contains(out.Error, "gRPC metadata") {
		t.Fatalf("PUT config with 200 model routes: %d %q, want 422 naming the gRPC metadata limit", code, out.Error)
	}
}
