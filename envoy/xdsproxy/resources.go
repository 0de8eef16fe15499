package xdsproxy

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	mutationrulesv3 "github.com/envoyproxy/go-control-plane/envoy/config/common/mutation_rules/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	earlyheaderv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/http/early_header_mutation/header_mutation/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/infergate/infergate/envoy/harness"
	"github.com/infergate/infergate/envoy/routematch"
	"github.com/infergate/infergate/envoy/validate"
)

// listenerConf is one LDS listener reduced to what the proxy serves: a
// socket, a route table (by RDS name or inline) and the ext_proc filter.
type listenerConf struct {
	name    string
	address string // host:port to bind
	rdsName string
	inline  *routeConfig // set instead of rdsName for an inline route_config
	// extProc is the HCM's ext_proc filter config, nil when there is none;
	// extProcName is its filter name, the key of its per-route configs.
	extProc     *extprocfilterv3.ExternalProcessor
	extProcName string
	bufferLimit int
	// removeHeaders are taken off each request as it arrives (the HCM's
	// early header mutation), before routing and ext_proc.
	removeHeaders []string
	paths         pathRules
}

// decodeListener accepts the listeners the proxy can serve like Envoy:
// one filter chain holding an HTTP connection manager whose filters are
// ext_proc (optional) and the router. Anything else is refused so that it
// is NACKed instead of being served differently.
func decodeListener(l *listenerv3.Listener) (*listenerConf, error) {
	if l.GetApiListener() != nil {
		return nil, errors.New("api_listener is for proxyless clients, not a socket listener")
	}
	sa := l.GetAddress().GetSocketAddress()
	if sa == nil {
		return nil, errors.New("address: only socket addresses are supported")
	}
	if sa.GetProtocol() != corev3.SocketAddress_TCP {
		return nil, errors.New("address: only TCP is supported")
	}
	if sa.GetNamedPort() != "" {
		return nil, errors.New("address: named ports are not supported")
	}
	chains := l.GetFilterChains()
	if l.GetDefaultFilterChain() != nil {
		chains = append(chains, l.GetDefaultFilterChain())
	}
	if len(chains) != 1 {
		return nil, fmt.Errorf("%d filter chains: exactly one is supported", len(chains))
	}
	chain := chains[0]
	if chain.GetFilterChainMatch() != nil || chain.GetTransportSocket() != nil {
		return nil, errors.New("filter_chain_match and transport_socket (TLS) are not supported")
	}
	if len(chain.GetFilters()) != 1 {
		return nil, fmt.Errorf("%d network filters: exactly one HTTP connection manager is supported", len(chain.GetFilters()))
	}
	// Shallow: the HTTP filters are validated one by one, so that an
	// optional one this binary does not know is skipped, not refused.
	hcm := &hcmv3.HttpConnectionManager{}
	if err := unpackShallow(chain.GetFilters()[0].GetTypedConfig(), hcm); err != nil {
		return nil, fmt.Errorf("network filter %q: %w", chain.GetFilters()[0].GetName(), err)
	}
	lc := &listenerConf{
		name:        l.GetName(),
		address:     net.JoinHostPort(sa.GetAddress(), strconv.FormatUint(uint64(sa.GetPortValue()), 10)),
		bufferLimit: int(l.GetPerConnectionBufferLimitBytes().GetValue()),
	}
	switch rs := hcm.GetRouteSpecifier().(type) {
	case *hcmv3.HttpConnectionManager_Rds:
		if rs.Rds.GetConfigSource().GetAds() == nil {
			return nil, errors.New("rds: only an ADS config source is supported")
		}
		lc.rdsName = rs.Rds.GetRouteConfigName()
	case *hcmv3.HttpConnectionManager_RouteConfig:
		rc, err := decodeRouteConfig(rs.RouteConfig)
		if err != nil {
			return nil, fmt.Errorf("route_config: %w", err)
		}
		lc.inline = rc
	default:
		return nil, errors.New("route specifier: rds or route_config is required (scoped routes are not supported)")
	}
	if err := lc.earlyHeaderMutations(hcm.GetEarlyHeaderMutationExtensions()); err != nil {
		return nil, err
	}
	var err error
	if lc.paths, err = decodePathRules(hcm); err != nil {
		return nil, err
	}
	if err := lc.httpFilters(hcm.GetHttpFilters()); err != nil {
		return nil, err
	}
	if lc.extProc == nil {
		return nil, errors.New("http_filters: no ext_proc filter (the proxy exists to run one)")
	}
	return lc, nil
}

// earlyHeaderMutations takes the header removals of Envoy's
// header_mutation early extension; the proxy supports no other action.
func (lc *listenerConf) earlyHeaderMutations(exts []*corev3.TypedExtensionConfig) error {
	for _, ext := range exts {
		hm := &earlyheaderv3.HeaderMutation{}
		if err := unpack(ext.GetTypedConfig(), hm); err != nil {
			return fmt.Errorf("early header mutation %q: %w", ext.GetName(), err)
		}
		for _, m := range hm.GetMutations() {
			rm, ok := m.GetAction().(*mutationrulesv3.HeaderMutation_Remove)
			if !ok {
				return fmt.Errorf("early header mutation %q: only remove is supported, not %T", ext.GetName(), m.GetAction())
			}
			lc.removeHeaders = append(lc.removeHeaders, rm.Remove)
		}
	}
	return nil
}

// httpFilters takes the ext_proc filter and checks that the router ends
// the chain; an optional filter the proxy does not know is skipped, as
// Envoy skips an optional filter it does not have.
func (lc *listenerConf) httpFilters(filters []*hcmv3.HttpFilter) error {
	if len(filters) == 0 {
		return errors.New("http_filters: the router filter is missing")
	}
	for i, f := range filters {
		last := i == len(filters)-1
		switch f.GetTypedConfig().MessageName() {
		case "envoy.extensions.filters.http.router.v3.Router":
			if !last {
				return fmt.Errorf("http filter %q: the router must be the last filter", f.GetName())
			}
			if err := unpack(f.GetTypedConfig(), &routerv3.Router{}); err != nil {
				return fmt.Errorf("http filter %q: %w", f.GetName(), err)
			}
			continue
		case "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor":
			if lc.extProc != nil {
				return fmt.Errorf("http filter %q: only one ext_proc filter is supported", f.GetName())
			}
			ep := &extprocfilterv3.ExternalProcessor{}
			if err := unpack(f.GetTypedConfig(), ep); err != nil {
				return fmt.Errorf("http filter %q: %w", f.GetName(), err)
			}
			if ep.GetGrpcService().GetEnvoyGrpc() == nil && ep.GetGrpcService().GetGoogleGrpc() == nil {
				return fmt.Errorf("http filter %q: grpc_service is required", f.GetName())
			}
			if err := harnessAccepts(ep, nil); err != nil {
				return fmt.Errorf("http filter %q: %w", f.GetName(), err)
			}
			lc.extProc, lc.extProcName = ep, f.GetName()
		default:
			if !f.GetIsOptional() {
				return fmt.Errorf("http filter %q: type %q is not supported", f.GetName(), f.GetTypedConfig().GetTypeUrl())
			}
		}
		if last {
			return fmt.Errorf("http filter %q: the router must be the last filter", f.GetName())
		}
	}
	return nil
}

// routeConfig is a compiled RDS route configuration.
type routeConfig struct {
	name   string
	vhosts []*virtualHost
	// perFilter is the route configuration's typed_per_filter_config,
	// the least specific level.
	perFilter map[string]*extprocfilterv3.ExtProcPerRoute
}

type virtualHost struct {
	name      string
	domains   []string
	routes    []*route
	perFilter map[string]*extprocfilterv3.ExtProcPerRoute
}

// route is one compiled route: its match, its weighted clusters and its
// per-filter configs by filter name.
type route struct {
	name      string
	vhost     string
	match     *routematch.Matcher
	clusters  []weightedCluster
	total     uint64
	timeout   time.Duration
	perFilter map[string]*extprocfilterv3.ExtProcPerRoute
}

type weightedCluster struct {
	name   string
	weight uint64
}

// defaultRouteTimeout is Envoy's route timeout when the action sets none.
const defaultRouteTimeout = 15 * time.Second

func decodeRouteConfig(rc *routev3.RouteConfiguration) (*routeConfig, error) {
	out := &routeConfig{name: rc.GetName()}
	var err error
	if out.perFilter, err = perFilterConfigs(rc.GetTypedPerFilterConfig()); err != nil {
		return nil, err
	}
	wildcards := 0
	for _, vh := range rc.GetVirtualHosts() {
		v := &virtualHost{name: vh.GetName()}
		for _, d := range vh.GetDomains() {
			if d == "*" {
				wildcards++
			}
			v.domains = append(v.domains, strings.ToLower(d))
		}
		if v.perFilter, err = perFilterConfigs(vh.GetTypedPerFilterConfig()); err != nil {
			return nil, fmt.Errorf("virtual host %q: %w", vh.GetName(), err)
		}
		for _, r := range vh.GetRoutes() {
			cr, err := decodeRoute(r)
			if err != nil {
				return nil, fmt.Errorf("virtual host %q: route %q: %w", vh.GetName(), r.GetName(), err)
			}
			cr.vhost = vh.GetName()
			v.routes = append(v.routes, cr)
		}
		out.vhosts = append(out.vhosts, v)
	}
	if wildcards > 1 {
		return nil, errors.New(`only one virtual host may have the domain "*"`)
	}
	return out, nil
}

func decodeRoute(r *routev3.Route) (*route, error) {
	action := r.GetRoute()
	if action == nil {
		return nil, errors.New("only route actions are supported (not redirect, direct_response or filter_action)")
	}
	m, err := routematch.Compile(r.GetMatch())
	if err != nil {
		return nil, err
	}
	cr := &route{name: r.GetName(), match: m, timeout: defaultRouteTimeout}
	if t := action.GetTimeout(); t != nil {
		cr.timeout = t.AsDuration()
	}
	switch cs := action.GetClusterSpecifier().(type) {
	case *routev3.RouteAction_Cluster:
		cr.clusters = []weightedCluster{{name: cs.Cluster, weight: 1}}
	case *routev3.RouteAction_WeightedClusters:
		for _, c := range cs.WeightedClusters.GetClusters() {
			if c.GetClusterHeader() != "" {
				return nil, errors.New("weighted cluster_header is not supported")
			}
			if w := uint64(c.GetWeight().GetValue()); w > 0 {
				cr.clusters = append(cr.clusters, weightedCluster{name: c.GetName(), weight: w})
			}
		}
	default:
		return nil, errors.New("only cluster and weighted_clusters are supported")
	}
	for _, c := range cr.clusters {
		cr.total += c.weight
	}
	if cr.total == 0 {
		return nil, errors.New("weighted_clusters: the weights add up to 0")
	}
	if cr.perFilter, err = perFilterConfigs(r.GetTypedPerFilterConfig()); err != nil {
		return nil, err
	}
	return cr, nil
}

// perFilterConfigs keeps the ext_proc per-route configs, bare or wrapped
// in a FilterConfig, by filter name; other filters' configs do not matter
// to a proxy that runs only ext_proc and the router.
func perFilterConfigs(m map[string]*anypb.Any) (map[string]*extprocfilterv3.ExtProcPerRoute, error) {
	out := map[string]*extprocfilterv3.ExtProcPerRoute{}
	for name, a := range m {
		inner := a
		if a.MessageName() == "envoy.config.route.v3.FilterConfig" {
			fc := &routev3.FilterConfig{}
			if err := unpackShallow(a, fc); err != nil {
				return nil, fmt.Errorf("typed_per_filter_config %q: %w", name, err)
			}
			inner = fc.GetConfig()
		}
		if inner.MessageName() != "envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute" {
			continue
		}
		pr := &extprocfilterv3.ExtProcPerRoute{}
		if err := unpack(inner, pr); err != nil {
			return nil, fmt.Errorf("typed_per_filter_config %q: %w", name, err)
		}
		if err := harnessAccepts(nil, pr); err != nil {
			return nil, fmt.Errorf("typed_per_filter_config %q: %w", name, err)
		}
		out[name] = pr
	}
	return out, nil
}

// clusterConf is a CDS cluster: its endpoints come from EDS (edsName) or
// from its own load_assignment.
type clusterConf struct {
	name    string
	edsName string
	static  []string
}

func decodeCluster(c *clusterv3.Cluster) (*clusterConf, error) {
	if c.GetClusterType() != nil {
		return nil, errors.New("custom cluster_type is not supported")
	}
	cc := &clusterConf{name: c.GetName()}
	switch c.GetType() {
	case clusterv3.Cluster_EDS:
		if c.GetEdsClusterConfig().GetEdsConfig().GetAds() == nil {
			return nil, errors.New("eds_cluster_config: only an ADS config source is supported")
		}
		cc.edsName = c.GetEdsClusterConfig().GetServiceName()
		if cc.edsName == "" {
			cc.edsName = c.GetName()
		}
	case clusterv3.Cluster_STATIC, clusterv3.Cluster_STRICT_DNS, clusterv3.Cluster_LOGICAL_DNS:
		addrs, err := endpointAddresses(c.GetLoadAssignment())
		if err != nil {
			return nil, fmt.Errorf("load_assignment: %w", err)
		}
		cc.static = addrs
	default:
		return nil, fmt.Errorf("cluster type %s is not supported", c.GetType())
	}
	return cc, nil
}

// endpointAddresses lists the host:port of every endpoint that may take
// traffic: EDS health status UNHEALTHY, DRAINING and TIMEOUT are skipped.
func endpointAddresses(la *endpointv3.ClusterLoadAssignment) ([]string, error) {
	var out []string
	for _, loc := range la.GetEndpoints() {
		for _, lb := range loc.GetLbEndpoints() {
			switch lb.GetHealthStatus() {
			case corev3.HealthStatus_UNHEALTHY, corev3.HealthStatus_DRAINING, corev3.HealthStatus_TIMEOUT:
				continue
			}
			sa := lb.GetEndpoint().GetAddress().GetSocketAddress()
			if sa == nil || sa.GetNamedPort() != "" {
				return nil, errors.New("only socket addresses with a port value are supported")
			}
			out = append(out, net.JoinHostPort(sa.GetAddress(), strconv.FormatUint(uint64(sa.GetPortValue()), 10)))
		}
	}
	return out, nil
}

// harnessAccepts asks the harness whether it reproduces Envoy's behaviour
// for a filter config or a per-route config (it checks each on its own),
// so that what it would refuse is NACKed when it arrives.
func harnessAccepts(filter *extprocfilterv3.ExternalProcessor, perRoute *extprocfilterv3.ExtProcPerRoute) error {
	// Nothing is dialled: New only validates and prepares a lazy client.
	h, err := harness.New("127.0.0.1:0", harness.Config{Filter: filter, PerRoute: perRoute, Upstream: "http://127.0.0.1:0"})
	if err != nil {
		return err
	}
	return h.Close()
}

// unpack decodes an Any into m and validates it as Envoy does, packed
// messages included.
func unpack(a *anypb.Any, m proto.Message) error {
	if a == nil {
		return errors.New("typed_config is missing")
	}
	if err := a.UnmarshalTo(m); err != nil {
		return fmt.Errorf("cannot decode %s: %w", a.GetTypeUrl(), err)
	}
	return validate.Message(m)
}

// unpackShallow is unpack checking only m's own rules, not the configs
// packed inside it.
func unpackShallow(a *anypb.Any, m envoyResource) error {
	if a == nil {
		return errors.New("typed_config is missing")
	}
	if err := a.UnmarshalTo(m); err != nil {
		return fmt.Errorf("cannot decode %s: %w", a.GetTypeUrl(), err)
	}
	return m.ValidateAll()
}
