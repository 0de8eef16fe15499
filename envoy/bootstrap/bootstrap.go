// Package bootstrap writes the Envoy bootstrap that hands Envoy to
// infergate's control plane: node identity, the admin listener, and one
// static HTTP/2 cluster (xds_cluster) carrying ADS for listeners and
// clusters, all v3. It is built as the typed v3 Bootstrap proto, so what is
// written is valid by construction, and Parse reads one back with the same
// strictness Envoy applies.
package bootstrap

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/infergate/infergate/config"
	"github.com/infergate/infergate/envoy/validate"
)

// XDSCluster is the static cluster that reaches the control plane.
const XDSCluster = "xds_cluster"

// httpProtocolOptionsKey is the extension name Envoy looks up
// typed_extension_protocol_options by.
const httpProtocolOptionsKey = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

// Build returns the bootstrap for cfg as a proto.
func Build(cfg config.Config) (*bootstrapv3.Bootstrap, error) {
	xdsHost, xdsPort := config.HostPort(cfg.XDS.Listen)
	adminHost, adminPort := config.HostPort(cfg.Envoy.Admin)

	h2, err := anypb.New(&httpv3.HttpProtocolOptions{
		UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{
			ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
				ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{
					Http2ProtocolOptions: &corev3.Http2ProtocolOptions{},
				},
			},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}

	xds := &clusterv3.Cluster{
		Name:                 XDSCluster,
		ConnectTimeout:       durationpb.New(time.Second),
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: discoveryType(xdsHost)},
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: XDSCluster,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{
				LbEndpoints: []*endpointv3.LbEndpoint{{
					HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
						Address: socketAddress(dialable(xdsHost), xdsPort),
					}},
				}},
			}},
		},
		TypedExtensionProtocolOptions: map[string]*anypb.Any{httpProtocolOptionsKey: h2},
	}

	ads := &corev3.ConfigSource{
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
		ResourceApiVersion:    corev3.ApiVersion_V3,
	}
	b := &bootstrapv3.Bootstrap{
		Node: &corev3.Node{Id: cfg.Envoy.NodeID, Cluster: cfg.Envoy.Cluster},
		StaticResources: &bootstrapv3.Bootstrap_StaticResources{
			Clusters: []*clusterv3.Cluster{xds},
		},
		DynamicResources: &bootstrapv3.Bootstrap_DynamicResources{
			AdsConfig: &corev3.ApiConfigSource{
				ApiType:             corev3.ApiConfigSource_GRPC,
				TransportApiVersion: corev3.ApiVersion_V3,
				GrpcServices: []*corev3.GrpcService{{
					TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
						EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: XDSCluster},
					},
				}},
				SetNodeOnFirstMessageOnly: true,
			},
			LdsConfig: ads,
			CdsConfig: ads,
		},
		Admin:          &bootstrapv3.Admin{Address: socketAddress(adminHost, adminPort)},
		LayeredRuntime: layeredRuntime(),
	}
	if err := validate.Message(b); err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	return b, nil
}

// Render returns the bootstrap for cfg as YAML, fields in proto order.
func Render(cfg config.Config) ([]byte, error) {
	b, err := Build(cfg)
	if err != nil {
		return nil, err
	}
	js, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(b)
	if err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	// JSON is YAML: parsing it into a node keeps protojson's field order,
	// and clearing the flow style prints it as ordinary block YAML.
	var doc yaml.Node
	if err := yaml.Unmarshal(js, &doc); err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	blockStyle(&doc)
	var out bytes.Buffer
	enc := yaml.NewEncoder(&out)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	return out.Bytes(), nil
}

func blockStyle(n *yaml.Node) {
	n.Style &^= yaml.FlowStyle
	if n.Kind == yaml.ScalarNode && n.Style&yaml.DoubleQuotedStyle != 0 && n.Tag == "!!str" {
		// Plain style where the scalar still reads as the same string;
		// the encoder re-quotes anything that would not.
		n.Style &^= yaml.DoubleQuotedStyle
	}
	for _, c := range n.Content {
		blockStyle(c)
	}
}

// Parse reads a bootstrap in YAML (or JSON) as Envoy would: unknown fields
// and unresolvable Any types are errors, and every validation rule is
// checked, inside Any values too.
func Parse(data []byte) (*bootstrapv3.Bootstrap, error) {
	var doc any
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	if doc == nil {
		return nil, errors.New("bootstrap: document is empty")
	}
	js, err := json.Marshal(jsonable(doc))
	if err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	b := &bootstrapv3.Bootstrap{}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(js, b); err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	if err := validate.Message(b); err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	return b, nil
}

// jsonable turns yaml.v3's decoded maps (keys of any type) into maps
// encoding/json accepts.
func jsonable(v any) any {
	switch t := v.(type) {
	case map[string]any:
		for k, e := range t {
			t[k] = jsonable(e)
		}
		return t
	case map[any]any:
		m := make(map[string]any, len(t))
		for k, e := range t {
			m[fmt.Sprint(k)] = jsonable(e)
		}
		return m
	case []any:
		for i, e := range t {
			t[i] = jsonable(e)
		}
		return t
	}
	return v
}

// discoveryType is STATIC for an IP address, STRICT_DNS for a name.
// re2ProgramSizeLimit replaces Envoy's default limit of 100 on a regex's
// RE2 program size, which NACKs route regexes as ordinary as a bounded
// character class ({1,64}); the control plane validates regexes by
// compiling them, not by size. Istio uses the same value.
const re2ProgramSizeLimit = 32768

// layeredRuntime is Envoy's default runtime (a static layer and the admin
// layer) with the RE2 program size limit raised.
func layeredRuntime() *bootstrapv3.LayeredRuntime {
	return &bootstrapv3.LayeredRuntime{Layers: []*bootstrapv3.RuntimeLayer{
		{Name: "static", LayerSpecifier: &bootstrapv3.RuntimeLayer_StaticLayer{StaticLayer: &structpb.Struct{
			Fields: map[string]*structpb.Value{"re2.max_program_size.error_level": structpb.NewNumberValue(re2ProgramSizeLimit)},
		}}},
		{Name: "admin", LayerSpecifier: &bootstrapv3.RuntimeLayer_AdminLayer_{AdminLayer: &bootstrapv3.RuntimeLayer_AdminLayer{}}},
	}}
}

func discoveryType(host string) clusterv3.Cluster_DiscoveryType {
	if net.ParseIP(host) != nil {
		return clusterv3.Cluster_STATIC
	}
	return clusterv3.Cluster_STRICT_DNS
}

// dialable maps a wildcard listen address to loopback: the control plane
// listening on every interface is reached on the local one.
func dialable(host string) string {
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		if ip.To4() != nil {
			return "127.0.0.1"
		}
		return "::1"
	}
	return host
}

func socketAddress(host string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address:       host,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}
