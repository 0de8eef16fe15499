package bootstrap_test

import (
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"

	"github.com/infergate/infergate/config"
	"github.com/infergate/infergate/envoy/bootstrap"
)

func TestRenderDefaultPointsEnvoyAtADS(t *testing.T) {
	out, err := bootstrap.Render(config.Default())
	if err != nil {
		t.Fatal(err)
	}
	b, err := bootstrap.Parse(out)
	if err != nil {
		t.Fatalf("rendered bootstrap does not parse back: %v\n%s", err, out)
	}
	if got := b.GetNode(); got.GetId() != "infergate-envoy" || got.GetCluster() != "infergate" {
		t.Errorf("node = %v, want id infergate-envoy cluster infergate", got)
	}
	ads := b.GetDynamicResources().GetAdsConfig()
	if ads.GetApiType() != corev3.ApiConfigSource_GRPC || ads.GetTransportApiVersion() != corev3.ApiVersion_V3 {
		t.Errorf("ads_config api_type %v transport %v, want GRPC V3", ads.GetApiType(), ads.GetTransportApiVersion())
	}
	if got := ads.GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName(); got != bootstrap.XDSCluster {
		t.Errorf("ads cluster = %q, want %q", got, bootstrap.XDSCluster)
	}
	for name, cs := range map[string]*corev3.ConfigSource{
		"lds_config": b.GetDynamicResources().GetLdsConfig(),
		"cds_config": b.GetDynamicResources().GetCdsConfig(),
	} {
		if cs.GetAds() == nil || cs.GetResourceApiVersion() != corev3.ApiVersion_V3 {
			t.Errorf("%s = %v, want ads {} with resource_api_version V3", name, cs)
		}
	}
	xds := b.GetStaticResources().GetClusters()[0]
	if xds.GetName() != bootstrap.XDSCluster || xds.GetType() != clusterv3.Cluster_STATIC {
		t.Errorf("cluster %q type %v, want %q STATIC", xds.GetName(), xds.GetType(), bootstrap.XDSCluster)
	}
	sa := xds.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
	if sa.GetAddress() != "127.0.0.1" || sa.GetPortValue() != 18000 {
		t.Errorf("xds endpoint %s:%d, want 127.0.0.1:18000", sa.GetAddress(), sa.GetPortValue())
	}
	opts := &httpv3.HttpProtocolOptions{}
	if err := xds.GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].UnmarshalTo(opts); err != nil {
		t.Fatalf("xds cluster protocol options: %v", err)
	}
	if opts.GetExplicitHttpConfig().GetHttp2ProtocolOptions() == nil {
		t.Error("xds cluster does not speak HTTP/2, which gRPC needs")
	}
	admin := b.GetAdmin().GetAddress().GetSocketAddress()
	if admin.GetAddress() != "127.0.0.1" || admin.GetPortValue() != 9901 {
		t.Errorf("admin %s:%d, want 127.0.0.1:9901", admin.GetAddress(), admin.GetPortValue())
	}
}

func TestRenderCustomConfig(t *testing.T) {
	cases := []struct {
		name     string
		listen   string
		wantAddr string
		wantType clusterv3.Cluster_DiscoveryType
	}{
		{"wildcard listen is dialled on loopback", "0.0.0.0:19000", "127.0.0.1", clusterv3.Cluster_STATIC},
		{"host name uses DNS", "xds.infergate.svc:19000", "xds.infergate.svc", clusterv3.Cluster_STRICT_DNS},
		{"ipv6", "[::1]:19000", "::1", clusterv3.Cluster_STATIC},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := config.Parse("test.yaml", []byte(
				"xds:\n  listen: \""+tc.listen+"\"\nenvoy:\n  node_id: edge-1\n  cluster: edge\n  admin: 0.0.0.0:9902\n"))
			if err != nil {
				t.Fatal(err)
			}
			out, err := bootstrap.Render(cfg)
			if err != nil {
				t.Fatal(err)
			}
			b, err := bootstrap.Parse(out)
			if err != nil {
				t.Fatalf("parse back: %v\n%s", err, out)
			}
			if b.GetNode().GetId() != "edge-1" || b.GetNode().GetCluster() != "edge" {
				t.Errorf("node = %v", b.GetNode())
			}
			xds := b.GetStaticResources().GetClusters()[0]
			sa := xds.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
			if sa.GetAddress() != tc.wantAddr || sa.GetPortValue() != 19000 {
				t.Errorf("xds endpoint %s:%d, want %s:19000", sa.GetAddress(), sa.GetPortValue(), tc.wantAddr)
			}
			if xds.GetType() != tc.wantType {
				t.Errorf("cluster type %v, want %v", xds.GetType(), tc.wantType)
			}
			if a := b.GetAdmin().GetAddress().GetSocketAddress(); a.GetAddress() != "0.0.0.0" || a.GetPortValue() != 9902 {
				t.Errorf("admin %s:%d, want 0.0.0.0:9902", a.GetAddress(), a.GetPortValue())
			}
		})
	}
}

func TestParseRefusesBrokenBootstrap(t *testing.T) {
	good, err := bootstrap.Render(config.Default())
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		yaml    string
		wantErr string
	}{
		{"unknown field", strings.Replace(string(good), "  id: infergate-envoy", "  id: infergate-envoy\n  colour: blue", 1), "colour"},
		{"Any of an unknown type", strings.Replace(string(good),
			"type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
			"type.googleapis.com/envoy.extensions.upstreams.http.v3.NoSuchOptions", 1), "NoSuchOptions"},
		{"invalid value inside an Any", strings.Replace(string(good),
			"http2_protocol_options: {}", "http2_protocol_options: {max_concurrent_streams: 0}", 1), "MaxConcurrentStreams"},
		{"invalid value outside an Any", strings.Replace(string(good), "port_value: 9901", "port_value: 70000", 1), "PortValue"},
		{"not YAML", "node: [unclosed", "bootstrap:"},
		{"empty", "", "empty"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.yaml == string(good) {
				t.Fatal("test case did not change the bootstrap")
			}
			_, err := bootstrap.Parse([]byte(tc.yaml))
			if err == nil {
				t.Fatalf("accepted:\n%s", tc.yaml)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %q does not mention %q", err, tc.wantErr)
			}
		})
	}
}

// Envoy refuses any regex whose RE2 program is over 100 instructions
// unless the runtime raises that limit, so a route regex as ordinary as
// "^/v2/models/[a-z0-9._-]{1,64}/infer$" would be NACKed although it
// compiles. The bootstrap raises it (as Istio does) and keeps the admin
// runtime layer Envoy has by default.
func TestBootstrapRaisesRE2ProgramSizeLimit(t *testing.T) {
	out, err := bootstrap.Render(config.Default())
	if err != nil {
		t.Fatal(err)
	}
	b, err := bootstrap.Parse(out)
	if err != nil {
		t.Fatal(err)
	}
	var limit float64
	admin := false
	for _, l := range b.GetLayeredRuntime().GetLayers() {
		if v, ok := l.GetStaticLayer().GetFields()["re2.max_program_size.error_level"]; ok {
			limit = v.GetNumberValue()
		}
		admin = admin || l.GetAdminLayer() != nil
	}
	if limit < 10000 {
		t.Errorf("re2.max_program_size.error_level = %v, want it raised well above Envoy's default 100\n%s", limit, out)
	}
	if !admin {
		t.Errorf("the layered runtime lost the admin layer\n%s", out)
	}
}
