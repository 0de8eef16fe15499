package xds

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"reflect"
	"slices"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	mutationrulesv3 "github.com/envoyproxy/go-control-plane/envoy/config/common/mutation_rules/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	earlyheaderv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/http/early_header_mutation/header_mutation/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/infergate/infergate/config"
	"github.com/infergate/infergate/envoy/validate"
	"github.com/infergate/infergate/policy"
)

// Names every snapshot uses.
const (
	// ExtProcCluster is the cluster of the ext_proc server (HTTP/2).
	ExtProcCluster = "infergate-extproc"
	// ExtProcFilter is the HTTP filter name, also the key of the per-route
	// policy in typed_per_filter_config.
	ExtProcFilter = "envoy.filters.http.ext_proc"
	// RouterFilter must be the last HTTP filter.
	RouterFilter = "envoy.filters.http.router"

	hcmFilter               = "envoy.filters.network.http_connection_manager"
	httpProtocolOptionsName = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
)

// model is everything one snapshot is built from: the routing section and
// the addresses that come from the other sections.
type model struct {
	routing     config.XDS
	extProcAddr string // extproc.listen
	engineAddr  string // engine.listen, the default pool's endpoint
}

// resources is one build of the whole routing model, before it is cut
// into per-node snapshots.
type resources struct {
	envoyListeners map[string]*listenerv3.Listener // socket listeners for Envoy
	apiListeners   map[string]*listenerv3.Listener // API listeners for proxyless gRPC
	routes         map[string]*routev3.RouteConfiguration
	clusters       map[string]*clusterv3.Cluster
	endpoints      map[string]*endpointv3.ClusterLoadAssignment
	// listenerClusters lists the clusters each listener's routes use.
	listenerClusters map[string][]string
	// listenerNodes is each listener's node selector (empty: every node).
	listenerNodes map[string][]string
	order         []string // listener names in config order
	// hashes of every resource's deterministic encoding, set by check.
	hashes map[proto.Message]uint64
	// builtRoutes are the routes of all route configs by routeKey.
	builtRoutes map[string]*builtRoute
}

func adsSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ResourceApiVersion:    corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
	}
}

// builder packs messages into Any and keeps the first error (a string
// that is not UTF-8, say), so that the build functions stay readable.
type builder struct{ err error }

func (b *builder) failf(format string, args ...any) {
	if b.err == nil {
		b.err = fmt.Errorf(format, args...)
	}
}

func (b *builder) any(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil && b.err == nil {
		b.err = fmt.Errorf("cannot encode %T: %w", m, err)
	}
	return a
}

// build turns the model plus the registered endpoints into resources. It
// reports problems the config validation cannot see (such as an endpoint
// that is not an IP address), by config path.
func build(m model, registered map[string][]string, prev *resources) (*resources, error) {
	r := &resources{
		envoyListeners:   map[string]*listenerv3.Listener{},
		apiListeners:     map[string]*listenerv3.Listener{},
		routes:           map[string]*routev3.RouteConfiguration{},
		clusters:         map[string]*clusterv3.Cluster{},
		endpoints:        map[string]*endpointv3.ClusterLoadAssignment{},
		listenerClusters: map[string][]string{},
		listenerNodes:    map[string][]string{},
		builtRoutes:      map[string]*builtRoute{},
	}
	var prevRoutes map[string]*builtRoute
	if prev != nil {
		prevRoutes = prev.builtRoutes
	}
	x := m.routing
	policies := map[string]policy.Policy{}
	for name, p := range x.Policies {
		policies[name] = p
	}
	eps, errs := buildEndpoints(m, registered)
	r.endpoints = eps
	for i, p := range x.Pools {
		if p.Name == ExtProcCluster {
			errs = append(errs, fmt.Sprintf("xds.pools[%d].name: %q is reserved for the ext_proc server's cluster", i, p.Name))
		}
		r.clusters[p.Name] = poolCluster(p)
	}
	b := &builder{}
	ext, err := b.extProcCluster(m.extProcAddr, x.ExtProc.ConnectTimeout)
	if err != nil {
		errs = append(errs, err.Error())
	} else {
		r.clusters[ExtProcCluster] = ext
	}
	for _, l := range x.Listeners {
		rc, used := b.routeConfig(l, policies, prevRoutes, r.builtRoutes)
		r.routes[l.Name] = rc
		r.listenerClusters[l.Name] = used
		r.listenerNodes[l.Name] = l.Nodes
		r.envoyListeners[l.Name] = b.envoyListener(l, x.ExtProc, untrustedHeaders(l, policies))
		r.apiListeners[l.Name] = b.apiListener(l, x.ExtProc)
		r.order = append(r.order, l.Name)
	}
	if b.err != nil {
		errs = append(errs, b.err.Error())
	}
	if len(errs) > 0 {
		return nil, errors.New(strings.Join(errs, "\n"))
	}
	return r, nil
}

// buildEndpoints makes each pool's load assignment from its static
// endpoints and the registered ones.
func buildEndpoints(m model, registered map[string][]string) (map[string]*endpointv3.ClusterLoadAssignment, []string) {
	out := map[string]*endpointv3.ClusterLoadAssignment{}
	var errs []string
	for _, p := range m.routing.Pools {
		addrs := append([]string(nil), p.Endpoints...)
		// The built-in default pool is the co-located engine only while
		// nothing else fills it: engines that registered, or a Service.
		if len(addrs) == 0 && p.Name == config.DefaultPoolName && len(registered[p.Name]) == 0 && p.Kubernetes.Service == "" {
			if host, _ := config.HostPort(m.engineAddr); net.ParseIP(host) == nil {
				errs = append(errs, fmt.Sprintf("engine.listen: the pool %q routes to it over EDS, which needs an IP address, not the host name %q", p.Name, host))
			}
			addrs = []string{m.engineAddr}
		}
		// An address listed in the file that also registers itself is one
		// endpoint: grpc-go NACKs a load assignment naming it twice.
		var unique []string
		seen := map[string]bool{}
		for _, a := range append(addrs, registered[p.Name]...) {
			if c, ok := canonicalEndpoint(a); ok {
				a = c
			}
			if !seen[a] {
				seen[a] = true
				unique = append(unique, a)
			}
		}
		out[p.Name] = loadAssignment(p.Name, unique)
	}
	return out, errs
}

// withEndpoints is r with the endpoints rebuilt from registered; only
// they are validated and hashed again, so that engines coming and going
// cost little however large the route table is.
func (r *resources) withEndpoints(m model, registered map[string][]string) (*resources, error) {
	eps, errs := buildEndpoints(m, registered)
	if len(errs) > 0 {
		return nil, errors.New(strings.Join(errs, "\n"))
	}
	c := *r
	c.endpoints = eps
	c.hashes = make(map[proto.Message]uint64, len(r.hashes))
	for msg, h := range r.hashes {
		if _, ok := msg.(*endpointv3.ClusterLoadAssignment); !ok {
			c.hashes[msg] = h
		}
	}
	var verrs []error
	for _, name := range sortedKeys(eps) {
		h, err := hashMessage(eps[name])
		if err = errors.Join(validate.Message(eps[name]), err); err != nil {
			verrs = append(verrs, fmt.Errorf("endpoints %q: %w", name, err))
		}
		c.hashes[eps[name]] = h
	}
	if err := errors.Join(verrs...); err != nil {
		return nil, err
	}
	return &c, nil
}

// extProcFilter is the ext_proc HTTP filter every listener runs before the
// router: headers and buffered bodies both ways, mode override allowed (so
// an SSE response can switch to STREAMED), failing open.
func (b *builder) extProcFilter(e config.XDSExtProc, optional bool) *hcmv3.HttpFilter {
	return &hcmv3.HttpFilter{
		Name: ExtProcFilter,
		ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: b.any(&extprocv3.ExternalProcessor{
			GrpcService: &corev3.GrpcService{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
				EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: ExtProcCluster},
			}},
			FailureModeAllow:  true,
			ProcessingMode:    processingMode(extprocv3.ProcessingMode_BUFFERED),
			AllowModeOverride: true,
			// The one override the ext_proc server asks for: a
			// text/event-stream response switches to STREAMED.
			AllowedOverrideModes: []*extprocv3.ProcessingMode{processingMode(extprocv3.ProcessingMode_STREAMED)},
			MessageTimeout:       durationpb.New(e.MessageTimeout),
			MaxMessageTimeout:    durationpb.New(e.MaxMessageTimeout),
			RequestAttributes:    []string{"xds.route_name"},
			StatPrefix:           "infergate",
		})},
		// Proxyless gRPC has no ext_proc filter unless switched on; optional
		// lets such a client ignore it instead of rejecting the listener.
		IsOptional: optional,
	}
}

// processingMode is extproc.ProcessingMode with the given response body
// mode: BUFFERED is the filter's mode, STREAMED the one override the server
// asks for (extproc.StreamedResponseMode; a test holds them equal). Envoy
// accepts an override only if it equals a listed mode. Trailers are sent:
// a body followed by trailers is complete only when they arrive.
func processingMode(responseBody extprocv3.ProcessingMode_BodySendMode) *extprocv3.ProcessingMode {
	return &extprocv3.ProcessingMode{
		RequestHeaderMode:   extprocv3.ProcessingMode_SEND,
		RequestBodyMode:     extprocv3.ProcessingMode_BUFFERED,
		RequestTrailerMode:  extprocv3.ProcessingMode_SEND,
		ResponseHeaderMode:  extprocv3.ProcessingMode_SEND,
		ResponseBodyMode:    responseBody,
		ResponseTrailerMode: extprocv3.ProcessingMode_SEND,
	}
}

func (b *builder) routerFilter() *hcmv3.HttpFilter {
	return &hcmv3.HttpFilter{
		Name:       RouterFilter,
		ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: b.any(&routerv3.Router{})},
	}
}

func (b *builder) connectionManager(l config.XDSListener, e config.XDSExtProc, proxyless bool) *hcmv3.HttpConnectionManager {
	return &hcmv3.HttpConnectionManager{
		StatPrefix: l.Name,
		CodecType:  hcmv3.HttpConnectionManager_AUTO,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource:    adsSource(),
			RouteConfigName: l.Name,
		}},
		HttpFilters: []*hcmv3.HttpFilter{b.extProcFilter(e, proxyless), b.routerFilter()},
	}
}

// normalizePaths makes Envoy route, and ext_proc see, the path the engine
// serves. Without it /v1/%65mbeddings or /v1//embeddings misses the
// /v1/embeddings route (and its limits) while the engine's HTTP router
// decodes and serves it. An escaped slash is refused: unescaping it would
// change which segments a path has.
func normalizePaths(hcm *hcmv3.HttpConnectionManager) {
	hcm.NormalizePath = wrapperspb.Bool(true)
	hcm.MergeSlashes = true
	hcm.PathWithEscapedSlashesAction = hcmv3.HttpConnectionManager_REJECT_REQUEST
}

// EarlyHeaderRemoval is the name of the HCM extension that removes the
// client's tenant headers before any filter or route sees the request.
const EarlyHeaderRemoval = "envoy.http.early_header_mutation.header_mutation"

// untrustedHeaders are the tenant headers a client must not set on
// listener l: the tenant_header of every policy its routes use, unless
// the listener trusts a proxy in front of it to set them. Sorted.
func untrustedHeaders(l config.XDSListener, policies map[string]policy.Policy) []string {
	if l.TrustTenantHeader {
		return nil
	}
	seen := map[string]bool{}
	var names []string
	for _, vh := range l.VirtualHosts {
		for _, r := range vh.Routes {
			if h := policyOf(r, policies).TenantHeader; h != "" && !seen[h] {
				seen[h] = true
				names = append(names, h)
			}
		}
	}
	slices.Sort(names)
	return names
}

// earlyHeaderRemoval removes the named request headers as the request
// arrives, so that neither routing nor ext_proc ever sees the client's
// values.
func (b *builder) earlyHeaderRemoval(names []string) []*corev3.TypedExtensionConfig {
	if len(names) == 0 {
		return nil
	}
	hm := &earlyheaderv3.HeaderMutation{}
	for _, n := range names {
		hm.Mutations = append(hm.Mutations, &mutationrulesv3.HeaderMutation{
			Action: &mutationrulesv3.HeaderMutation_Remove{Remove: n},
		})
	}
	return []*corev3.TypedExtensionConfig{{Name: EarlyHeaderRemoval, TypedConfig: b.any(hm)}}
}

func (b *builder) envoyListener(l config.XDSListener, e config.XDSExtProc, untrusted []string) *listenerv3.Listener {
	hcm := b.connectionManager(l, e, false)
	hcm.EarlyHeaderMutationExtensions = b.earlyHeaderRemoval(untrusted)
	normalizePaths(hcm)
	host, port := config.HostPort(l.Address)
	return &listenerv3.Listener{
		Name:                          l.Name,
		PerConnectionBufferLimitBytes: wrapperspb.UInt32(uint32(l.BufferLimitBytes)),
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Protocol:      corev3.SocketAddress_TCP,
			Address:       host,
			PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
		}}},
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name:       hcmFilter,
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: b.any(hcm)},
		}}}},
	}
}

// apiListener is the same listener in the form proxyless gRPC clients
// take: no socket, the HCM as api_listener, the same RDS route config.
func (b *builder) apiListener(l config.XDSListener, e config.XDSExtProc) *listenerv3.Listener {
	return &listenerv3.Listener{
		Name:        l.Name,
		ApiListener: &listenerv3.ApiListener{ApiListener: b.any(b.connectionManager(l, e, true))},
	}
}

// builtRoute is one route as built, kept from build to build so that an
// unchanged route is neither built nor validated again.
type builtRoute struct {
	cfg    config.XDSRoute
	policy string // the encoded policy
	// base is the policy encoded without its model routes, and models
	// what those were (modelRoutesKey), so that a route whose inputs did
	// not change is not encoded again.
	base, models string
	route        *routev3.Route
	hash         uint64
	validated    bool // by check, in an earlier build or this one
}

func routeKey(listener, vhost, route string) string {
	return listener + "\x00" + vhost + "\x00" + route
}

// routeConfig builds a listener's route table, reusing from prev the
// routes whose config and policy did not change. It also returns the
// clusters the routes use, in order of first use.
func (b *builder) routeConfig(l config.XDSListener, policies map[string]policy.Policy, prev, next map[string]*builtRoute) (*routev3.RouteConfiguration, []string) {
	rc := &routev3.RouteConfiguration{Name: l.Name}
	seen := map[string]bool{}
	var used []string
	use := func(c string) {
		if !seen[c] {
			seen[c] = true
			used = append(used, c)
		}
	}
	for _, vh := range l.VirtualHosts {
		v := &routev3.VirtualHost{Name: vh.Name, Domains: vh.Domains}
		// The model routes so far: Envoy may move a request to one of them
		// once ext_proc has read its body, never to a later one.
		var (
			modelRoutes []policy.ModelRoute
			modelsKey   string
		)
		for _, r := range vh.Routes {
			p := policyOf(r, policies)
			p.Route = r.Name
			base, models := p.Encode(), ""
			if r.Match.Model == "" {
				// A route that matches on the model was chosen with the
				// client's own model header: the body cannot move it.
				p.ModelRoutes, models = modelRoutes, modelsKey
			} else {
				mr := b.modelRoute(r, p)
				modelRoutes = append(modelRoutes, mr)
				modelsKey += mr.Model + "\x00" + string(mr.Match) + "\x00" + base + "\x01"
			}
			key := routeKey(l.Name, vh.Name, r.Name)
			br, ok := prev[key]
			if !ok || br.base != base || br.models != models || !reflect.DeepEqual(br.cfg, r) {
				enc := base
				if len(p.ModelRoutes) > 0 {
					enc = p.Encode()
				}
				if len(enc) > maxPolicyBytes {
					b.failf("listener %q, route %q: its policy with %d model routes encodes to %d bytes, more than the %d a policy may take as gRPC metadata; put fewer model routes before it in virtual host %q",
						l.Name, r.Name, len(p.ModelRoutes), len(enc), maxPolicyBytes, vh.Name)
				}
				br = &builtRoute{cfg: r, policy: enc, base: base, models: models, route: b.route(r, enc)}
			}
			next[key] = br
			if r.Pool != "" {
				use(r.Pool)
			}
			for _, d := range r.Destinations {
				use(d.Pool)
			}
			v.Routes = append(v.Routes, br.route)
		}
		rc.VirtualHosts = append(rc.VirtualHosts, v)
	}
	return rc, used
}

// maxPolicyBytes bounds an encoded policy: it travels as one gRPC
// metadata value, within the 60 KiB of headers Envoy and grpc-go accept
// by default along with the stream's other metadata.
const maxPolicyBytes = 16 << 10

// modelRoute is r, a route that matches on the model, as the ext_proc
// server matches it: Envoy's RouteMatch without the model header, and its
// policy p.
func (b *builder) modelRoute(r config.XDSRoute, p policy.Policy) policy.ModelRoute {
	m := r.Match
	m.Model = ""
	js, err := protojson.Marshal(routeMatch(m))
	if err != nil {
		b.failf("route %q: cannot encode its match: %v", r.Name, err)
	}
	// protojson varies its spacing on purpose; the policy must encode
	// the same way every time so that unchanged routes are not rebuilt.
	var compact bytes.Buffer
	if err := json.Compact(&compact, js); err != nil {
		b.failf("route %q: cannot encode its match: %v", r.Name, err)
	}
	return policy.ModelRoute{Model: r.Match.Model, Match: compact.Bytes(), Policy: p}
}

// policyOf is the policy route r names, else the one named default,
// else the built-in defaults.
func policyOf(r config.XDSRoute, policies map[string]policy.Policy) policy.Policy {
	if p, ok := policies[r.Policy]; ok {
		return p
	}
	if p, ok := policies["default"]; ok {
		return p
	}
	return policy.Default()
}

func (b *builder) route(r config.XDSRoute, encodedPolicy string) *routev3.Route {
	return &routev3.Route{
		Name:   r.Name,
		Match:  routeMatch(r.Match),
		Action: &routev3.Route_Route{Route: routeAction(r)},
		TypedPerFilterConfig: map[string]*anypb.Any{
			ExtProcFilter: b.any(&routev3.FilterConfig{
				Config: b.any(&extprocv3.ExtProcPerRoute{Override: &extprocv3.ExtProcPerRoute_Overrides{
					Overrides: &extprocv3.ExtProcOverrides{GrpcInitialMetadata: []*corev3.HeaderValue{
						{Key: policy.MetadataKey, Value: encodedPolicy},
					}},
				}}),
				// As for the filter: a proxyless client without ext_proc
				// ignores the policy instead of NACKing the route.
				IsOptional: true,
			}),
		},
	}
}

func stringMatcher(exact, prefix, regex string) *matcherv3.StringMatcher {
	switch {
	case exact != "":
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: exact}}
	case prefix != "":
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: prefix}}
	default:
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: regex}}}
	}
}

func routeMatch(m config.XDSRouteMatch) *routev3.RouteMatch {
	rm := &routev3.RouteMatch{}
	switch {
	case m.Path != "":
		rm.PathSpecifier = &routev3.RouteMatch_Path{Path: m.Path}
	case m.Regex != "":
		rm.PathSpecifier = &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: m.Regex}}
	default:
		rm.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: m.Prefix}
	}
	for _, h := range m.Headers {
		hm := &routev3.HeaderMatcher{Name: h.Name, InvertMatch: h.Invert}
		if h.Present {
			hm.HeaderMatchSpecifier = &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}
		} else {
			hm.HeaderMatchSpecifier = &routev3.HeaderMatcher_StringMatch{StringMatch: stringMatcher(h.Exact, h.Prefix, h.Regex)}
		}
		rm.Headers = append(rm.Headers, hm)
	}
	if m.Model != "" {
		rm.Headers = append(rm.Headers, &routev3.HeaderMatcher{
			Name:                 policy.ModelHeader,
			HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: stringMatcher(m.Model, "", "")},
		})
	}
	return rm
}

func routeAction(r config.XDSRoute) *routev3.RouteAction {
	a := &routev3.RouteAction{Timeout: durationpb.New(r.Timeout)}
	if r.Pool != "" {
		a.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: r.Pool}
	} else {
		wc := &routev3.WeightedCluster{}
		for _, d := range r.Destinations {
			wc.Clusters = append(wc.Clusters, &routev3.WeightedCluster_ClusterWeight{Name: d.Pool, Weight: wrapperspb.UInt32(d.Weight)})
		}
		a.ClusterSpecifier = &routev3.RouteAction_WeightedClusters{WeightedClusters: wc}
	}
	if rt := r.Retry; !rt.Disabled {
		p := &routev3.RetryPolicy{
			RetryOn:              strings.Join(rt.On, ","),
			NumRetries:           wrapperspb.UInt32(rt.Attempts),
			RetriableStatusCodes: rt.StatusCodes,
			RetryBackOff: &routev3.RetryPolicy_RetryBackOff{
				BaseInterval: durationpb.New(25 * time.Millisecond),
				MaxInterval:  durationpb.New(250 * time.Millisecond),
			},
		}
		if rt.PerTryTimeout > 0 {
			p.PerTryTimeout = durationpb.New(rt.PerTryTimeout)
		}
		a.RetryPolicy = p
	}
	return a
}

var lbPolicies = map[string]clusterv3.Cluster_LbPolicy{
	"least_request": clusterv3.Cluster_LEAST_REQUEST,
	"round_robin":   clusterv3.Cluster_ROUND_ROBIN,
	"random":        clusterv3.Cluster_RANDOM,
}

func poolCluster(p config.XDSPool) *clusterv3.Cluster {
	h, o, cb := p.HealthCheck, p.Outlier, p.CircuitBreakers
	return &clusterv3.Cluster{
		Name:                 p.Name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: adsSource()},
		ConnectTimeout:       durationpb.New(p.ConnectTimeout),
		LbPolicy:             lbPolicies[p.LB],
		HealthChecks: []*corev3.HealthCheck{{
			Timeout:            durationpb.New(h.Timeout),
			Interval:           durationpb.New(h.Interval),
			UnhealthyThreshold: wrapperspb.UInt32(h.UnhealthyThreshold),
			HealthyThreshold:   wrapperspb.UInt32(h.HealthyThreshold),
			HealthChecker: &corev3.HealthCheck_HttpHealthCheck_{HttpHealthCheck: &corev3.HealthCheck_HttpHealthCheck{
				Path: h.Path,
			}},
		}},
		OutlierDetection: &clusterv3.OutlierDetection{
			Consecutive_5Xx:    wrapperspb.UInt32(o.Consecutive5xx),
			Interval:           durationpb.New(o.Interval),
			BaseEjectionTime:   durationpb.New(o.BaseEjectionTime),
			MaxEjectionPercent: wrapperspb.UInt32(o.MaxEjectionPercent),
		},
		CircuitBreakers: &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
			Priority:           corev3.RoutingPriority_DEFAULT,
			MaxConnections:     wrapperspb.UInt32(cb.MaxConnections),
			MaxPendingRequests: wrapperspb.UInt32(cb.MaxPendingRequests),
			MaxRequests:        wrapperspb.UInt32(cb.MaxRequests),
			RetryBudget: &clusterv3.CircuitBreakers_Thresholds_RetryBudget{
				BudgetPercent:       &typev3.Percent{Value: cb.RetryBudgetPercent},
				MinRetryConcurrency: wrapperspb.UInt32(cb.MinRetryConcurrency),
			},
		}}},
	}
}

func socketAddress(addr string) *corev3.Address {
	host, port := config.HostPort(addr)
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Protocol:      corev3.SocketAddress_TCP,
		Address:       host,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

func loadAssignment(cluster string, addrs []string) *endpointv3.ClusterLoadAssignment {
	la := &endpointv3.ClusterLoadAssignment{ClusterName: cluster}
	if len(addrs) == 0 {
		return la
	}
	// One locality with weight 1: gRPC skips localities without a weight.
	loc := &endpointv3.LocalityLbEndpoints{Locality: &corev3.Locality{}, LoadBalancingWeight: wrapperspb.UInt32(1)}
	for _, a := range addrs {
		loc.LbEndpoints = append(loc.LbEndpoints, &endpointv3.LbEndpoint{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: socketAddress(a)}},
		})
	}
	la.Endpoints = []*endpointv3.LocalityLbEndpoints{loc}
	return la
}

// extProcCluster reaches the ext_proc server over HTTP/2: STATIC for an IP
// address, STRICT_DNS for a host name.
func (b *builder) extProcCluster(addr string, connect time.Duration) (*clusterv3.Cluster, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("extproc.listen: %q is not host:port", addr)
	}
	typ := clusterv3.Cluster_STATIC
	if net.ParseIP(host) == nil {
		typ = clusterv3.Cluster_STRICT_DNS
	}
	return &clusterv3.Cluster{
		Name:                 ExtProcCluster,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: typ},
		ConnectTimeout:       durationpb.New(connect),
		LoadAssignment:       loadAssignment(ExtProcCluster, []string{addr}),
		TypedExtensionProtocolOptions: map[string]*anypb.Any{
			httpProtocolOptionsName: b.any(&upstreamhttpv3.HttpProtocolOptions{
				UpstreamProtocolOptions: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_{
					ExplicitHttpConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig{
						ProtocolConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{
							Http2ProtocolOptions: &corev3.Http2ProtocolOptions{},
						},
					},
				},
			}),
		},
	}, nil
}
