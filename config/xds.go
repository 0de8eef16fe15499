package config

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/infergate/infergate/policy"
)

// XDS configures the control plane and the routing model it serves to
// Envoy: listeners, virtual hosts, routes, per-route policies and engine
// pools. The same shape is read and written by the xDS admin API.
type XDS struct {
	// Listen is the ADS gRPC address Envoy connects to. Default 127.0.0.1:18000.
	Listen string `yaml:"listen"`
	// Admin is the HTTP address of the admin API, /metrics, /healthz and
	// /readyz. Default 127.0.0.1:18001.
	Admin string `yaml:"admin"`
	// Kubeconfig is the file the control plane uses to follow the
	// EndpointSlices of pools that name a Kubernetes Service. Default
	// empty: the pod's service account, else $KUBECONFIG or
	// ~/.kube/config.
	Kubeconfig string `yaml:"kubeconfig"`
	// AdminTokenFile holds the bearer token the admin API requires on
	// /v1/ (read once at start). Default empty: no token, so keep admin
	// on loopback.
	AdminTokenFile string `yaml:"admin_token_file"`
	// WatchInterval is how often the config file is checked for changes
	// (modification time and content hash). Default 1s.
	WatchInterval time.Duration `yaml:"watch_interval"`
	// History is how many accepted config versions are kept for rollback.
	// Default 20.
	History int `yaml:"history"`
	// HeartbeatTTL is how long an engine registered over the admin API stays
	// in EDS without a heartbeat. Default 15s.
	HeartbeatTTL time.Duration `yaml:"heartbeat_ttl"`
	// RegistrationGrace is how long a starting control plane holds back
	// its first configuration when some pool's endpoints come from engines
	// registering alone: a restarted control plane has forgotten the
	// registrations, and Envoy, which keeps its configuration until it gets
	// a new one, would otherwise drop every registered engine until its
	// next heartbeat. Default 6s, a little over the engines' default
	// register.interval (5s); 0 turns it off. Under 15s: Envoy's
	// initial_fetch_timeout and gRPC's resource timer, both 15s, would
	// start clients that connect during it without their configuration.
	RegistrationGrace *time.Duration `yaml:"registration_grace"`
	// ExtProc tunes the ext_proc filter in every listener; the ext_proc
	// cluster's address is extproc.listen.
	ExtProc XDSExtProc `yaml:"ext_proc"`
	// Listeners default to one, "ingress" on 127.0.0.1:10000, routing
	// everything to the pool "default".
	Listeners []XDSListener `yaml:"listeners"`
	// Policies are named per-route policies; a route without a policy gets
	// the one named "default" if it exists, else the built-in defaults.
	Policies map[string]policy.Policy `yaml:"policies"`
	// Pools are the engine clusters. Default: one pool "default". The pool
	// named "default", when it lists no endpoints, gets engine.listen.
	Pools []XDSPool `yaml:"pools"`
}

// XDSExtProc tunes the ext_proc HTTP filter.
type XDSExtProc struct {
	// MessageTimeout is how long Envoy waits for each ext_proc answer
	// before failing open. Default 500ms.
	MessageTimeout time.Duration `yaml:"message_timeout"`
	// MaxMessageTimeout is how far the ext_proc server may extend one
	// answer's timeout (override_message_timeout); it does so while an
	// identical request is in flight, so keep it above
	// extproc.cache.collapse_wait. Default 6s.
	MaxMessageTimeout time.Duration `yaml:"max_message_timeout"`
	// ConnectTimeout is the ext_proc cluster's connect timeout. Default 1s.
	ConnectTimeout time.Duration `yaml:"connect_timeout"`
}

// XDSListener is one Envoy listener (HCM with ext_proc then router). For
// proxyless gRPC nodes the same name is served as an API listener.
type XDSListener struct {
	Name string `yaml:"name"`
	// Address is the host:port Envoy binds. Default 127.0.0.1:10000.
	Address string `yaml:"address"`
	// Nodes restricts the listener to nodes whose id or cluster is listed.
	// Default: every node.
	Nodes []string `yaml:"nodes"`
	// TrustTenantHeader keeps the tenant headers (each route policy's
	// tenant_header) that arrive with a request. Set it only when a proxy
	// in front authenticates callers and sets them. Default false: Envoy
	// removes them as a request arrives, so that a client cannot claim
	// another tenant's cache or escape its own rate limits, and the
	// tenant is the caller's hashed API key.
	TrustTenantHeader bool `yaml:"trust_tenant_header"`
	// BufferLimitBytes is Envoy's per_connection_buffer_limit_bytes. The
	// ext_proc filter buffers whole bodies, so it is the largest request
	// (413 above it) and the largest response (500) the listener passes;
	// Envoy's own default, 1 MiB, is less than the engine's answer for a
	// few hundred embeddings. Default 16 MiB, extproc.max_body_bytes.
	BufferLimitBytes int              `yaml:"buffer_limit_bytes"`
	VirtualHosts     []XDSVirtualHost `yaml:"virtual_hosts"`
}

// XDSVirtualHost groups routes by Host header.
type XDSVirtualHost struct {
	Name string `yaml:"name"`
	// Domains default to ["*"].
	Domains []string   `yaml:"domains"`
	Routes  []XDSRoute `yaml:"routes"`
}

// XDSRoute is one route: a match, where it goes, and how.
type XDSRoute struct {
	// Name is unique in its listener; it names the route to Envoy and
	// scopes the ext_proc server's caches and limits.
	Name  string        `yaml:"name"`
	Match XDSRouteMatch `yaml:"match"`
	// Pool sends all traffic to one pool. Give Pool or Destinations.
	Pool string `yaml:"pool"`
	// Destinations split traffic by weight, for canaries.
	Destinations []XDSDestination `yaml:"destinations"`
	// Timeout is the whole request's upstream timeout. Default 60s.
	Timeout time.Duration `yaml:"timeout"`
	// Retry is the retry policy. Default: retry once on a reset, a failed
	// connection or a 503, within the pool's retry budget.
	Retry XDSRetry `yaml:"retry"`
	// Policy names an entry of xds.policies.
	Policy string `yaml:"policy"`
}

// XDSRouteMatch selects requests. Exactly one of Prefix, Path and Regex
// is set (default: prefix "/"); Headers and Model narrow it further.
type XDSRouteMatch struct {
	Prefix string `yaml:"prefix"`
	Path   string `yaml:"path"`
	// Regex is an RE2 regular expression matched against the whole path.
	Regex   string           `yaml:"regex"`
	Headers []XDSHeaderMatch `yaml:"headers"`
	// Model matches the "model" named in the request body. The ext_proc
	// server copies it into the x-infergate-model header and clears the
	// route cache, so this is a header match on that header.
	Model string `yaml:"model"`
}

// XDSHeaderMatch matches one request header. Exactly one of Exact,
// Prefix, Regex and Present is set.
type XDSHeaderMatch struct {
	Name    string `yaml:"name"`
	Exact   string `yaml:"exact"`
	Prefix  string `yaml:"prefix"`
	Regex   string `yaml:"regex"`
	Present bool   `yaml:"present"`
	// Invert makes the match succeed when the header does not match.
	Invert bool `yaml:"invert"`
}

// XDSDestination is one weighted target of a route.
type XDSDestination struct {
	Pool   string `yaml:"pool"`
	Weight uint32 `yaml:"weight"`
}

// XDSRetry is a route's retry policy.
type XDSRetry struct {
	// On lists Envoy retry conditions (5xx, gateway-error, reset,
	// connect-failure, retriable-status-codes, ...). Default
	// [reset, connect-failure, retriable-status-codes].
	On []string `yaml:"on"`
	// StatusCodes are the retriable status codes. Default [503].
	StatusCodes []uint32 `yaml:"status_codes"`
	// Attempts is the number of retries. Default 1 (set Disabled to turn
	// retries off).
	Attempts uint32 `yaml:"attempts"`
	// PerTryTimeout bounds each attempt. Default: the route timeout.
	PerTryTimeout time.Duration `yaml:"per_try_timeout"`
	// Disabled turns retries off for the route.
	Disabled bool `yaml:"disabled"`
}

// XDSPool is an engine cluster, load-balanced over EDS.
type XDSPool struct {
	Name string `yaml:"name"`
	// LB is least_request (default), round_robin or random.
	LB string `yaml:"lb"`
	// Endpoints are static host:port members; engines may also register
	// themselves over the admin API.
	Endpoints []string `yaml:"endpoints"`
	// Kubernetes, when its Service is set, adds the ready endpoints of
	// that Service's EndpointSlices, followed live.
	Kubernetes XDSKubernetes `yaml:"kubernetes"`
	// ConnectTimeout defaults to 1s.
	ConnectTimeout  time.Duration      `yaml:"connect_timeout"`
	HealthCheck     XDSHealthCheck     `yaml:"health_check"`
	Outlier         XDSOutlier         `yaml:"outlier_detection"`
	CircuitBreakers XDSCircuitBreakers `yaml:"circuit_breakers"`
}

// XDSKubernetes names the Service whose EndpointSlices list a pool's
// engines.
type XDSKubernetes struct {
	// Service is the Service's name. Default empty: no EndpointSlices.
	Service string `yaml:"service"`
	// Namespace is the Service's namespace. Default: the control plane's
	// own (in a pod), else "default".
	Namespace string `yaml:"namespace"`
	// Port picks the slice's port by name or number. Default: its only
	// port (a Service with several must name one).
	Port string `yaml:"port"`
}

// XDSHealthCheck is the pool's active HTTP health check.
type XDSHealthCheck struct {
	// Path defaults to /v2/health/ready (KServe readiness).
	Path string `yaml:"path"`
	// Interval defaults to 5s, Timeout to 1s.
	Interval time.Duration `yaml:"interval"`
	Timeout  time.Duration `yaml:"timeout"`
	// UnhealthyThreshold defaults to 3, HealthyThreshold to 1.
	UnhealthyThreshold uint32 `yaml:"unhealthy_threshold"`
	HealthyThreshold   uint32 `yaml:"healthy_threshold"`
}

// XDSOutlier is the pool's outlier detection.
type XDSOutlier struct {
	// Consecutive5xx ejects a host after this many 5xx in a row. Default 5.
	Consecutive5xx uint32 `yaml:"consecutive_5xx"`
	// Interval defaults to 10s, BaseEjectionTime to 30s.
	Interval         time.Duration `yaml:"interval"`
	BaseEjectionTime time.Duration `yaml:"base_ejection_time"`
	// MaxEjectionPercent defaults to 50.
	MaxEjectionPercent uint32 `yaml:"max_ejection_percent"`
}

// XDSCircuitBreakers are the pool's default-priority thresholds. The
// connection and request limits default to 1024.
type XDSCircuitBreakers struct {
	MaxConnections     uint32 `yaml:"max_connections"`
	MaxPendingRequests uint32 `yaml:"max_pending_requests"`
	MaxRequests        uint32 `yaml:"max_requests"`
	// RetryBudgetPercent caps active retries at this share of active
	// requests to the pool (Envoy's retry budget). Default 20.
	RetryBudgetPercent float64 `yaml:"retry_budget_percent"`
	// MinRetryConcurrency is the retries always allowed under the budget.
	// Default 3.
	MinRetryConcurrency uint32 `yaml:"min_retry_concurrency"`
}

const (
	// DefaultRegistrationGrace is a little over the engines' default
	// heartbeat interval (engine.register.interval, 5s).
	DefaultRegistrationGrace = 6 * time.Second
	// MaxRegistrationGrace is Envoy's default initial_fetch_timeout and
	// grpc-go's xDS resource timer.
	MaxRegistrationGrace = 15 * time.Second
)

// DefaultPoolName is the pool of the default route. When it lists no
// endpoints the control plane gives it engine.listen, so that the
// quickstart routes to the co-located engine.
const DefaultPoolName = "default"

// nodesOverlap reports whether some Envoy gets both listeners: an empty
// list means every node.
func nodesOverlap(a, b []string) bool {
	return len(a) == 0 || len(b) == 0 || slices.ContainsFunc(a, func(n string) bool { return slices.Contains(b, n) })
}

// DefaultListenerBufferLimitBytes holds the engine's largest answer (2 048
// embeddings of 512 floats as JSON are about 14 MB) and equals the
// ext_proc server's default max_body_bytes, so that what Envoy buffers the
// server can cache.
const DefaultListenerBufferLimitBytes = 16 << 20

// minListenerBufferLimitBytes keeps a listener able to pass an ordinary
// request; Envoy's flow control works at any size.
const minListenerBufferLimitBytes = 64 << 10

func (x *XDS) setDefaults() {
	if x.Listen == "" {
		x.Listen = "127.0.0.1:18000"
	}
	if x.Admin == "" {
		x.Admin = "127.0.0.1:18001"
	}
	if x.WatchInterval == 0 {
		x.WatchInterval = time.Second
	}
	if x.History == 0 {
		x.History = 20
	}
	if x.HeartbeatTTL == 0 {
		x.HeartbeatTTL = 15 * time.Second
	}
	if x.RegistrationGrace == nil {
		g := DefaultRegistrationGrace
		x.RegistrationGrace = &g
	}
	x.SetRoutingDefaults()
}

// SetRoutingDefaults fills the defaults of the routing model (listeners,
// routes, pools, policies) — what the admin API may replace at run time.
func (x *XDS) SetRoutingDefaults() {
	if x.ExtProc.MessageTimeout == 0 {
		x.ExtProc.MessageTimeout = 500 * time.Millisecond
	}
	if x.ExtProc.MaxMessageTimeout == 0 {
		x.ExtProc.MaxMessageTimeout = 6 * time.Second
	}
	if x.ExtProc.ConnectTimeout == 0 {
		x.ExtProc.ConnectTimeout = time.Second
	}
	if len(x.Listeners) == 0 {
		x.Listeners = []XDSListener{{Name: "ingress"}}
	}
	for i := range x.Listeners {
		l := &x.Listeners[i]
		if l.Address == "" {
			l.Address = "127.0.0.1:10000"
		}
		if l.BufferLimitBytes == 0 {
			l.BufferLimitBytes = DefaultListenerBufferLimitBytes
		}
		if len(l.VirtualHosts) == 0 {
			// Everything to the default pool, like the built-in listener;
			// route names are unique across listeners, so it takes the
			// listener's.
			l.VirtualHosts = []XDSVirtualHost{{Name: "default", Routes: []XDSRoute{{Name: l.Name, Pool: DefaultPoolName}}}}
		}
		for j := range l.VirtualHosts {
			vh := &l.VirtualHosts[j]
			if len(vh.Domains) == 0 {
				vh.Domains = []string{"*"}
			}
			for k := range vh.Routes {
				vh.Routes[k].setDefaults()
			}
		}
	}
	if len(x.Pools) == 0 {
		x.Pools = []XDSPool{{Name: DefaultPoolName}}
	}
	for i := range x.Pools {
		x.Pools[i].setDefaults()
	}
	for name, p := range x.Policies {
		p.Normalize()
		x.Policies[name] = p
	}
}

func (r *XDSRoute) setDefaults() {
	m := &r.Match
	if m.Prefix == "" && m.Path == "" && m.Regex == "" {
		m.Prefix = "/"
	}
	if r.Timeout == 0 {
		r.Timeout = 60 * time.Second
	}
	rt := &r.Retry
	if len(rt.On) == 0 {
		rt.On = []string{"reset", "connect-failure", "retriable-status-codes"}
	}
	if len(rt.StatusCodes) == 0 {
		rt.StatusCodes = []uint32{http.StatusServiceUnavailable}
	}
	if rt.Attempts == 0 {
		rt.Attempts = 1
	}
}

func (p *XDSPool) setDefaults() {
	if p.LB == "" {
		p.LB = "least_request"
	}
	if p.ConnectTimeout == 0 {
		p.ConnectTimeout = time.Second
	}
	h := &p.HealthCheck
	if h.Path == "" {
		h.Path = "/v2/health/ready"
	}
	if h.Interval == 0 {
		h.Interval = 5 * time.Second
	}
	if h.Timeout == 0 {
		h.Timeout = time.Second
	}
	if h.UnhealthyThreshold == 0 {
		h.UnhealthyThreshold = 3
	}
	if h.HealthyThreshold == 0 {
		h.HealthyThreshold = 1
	}
	o := &p.Outlier
	if o.Consecutive5xx == 0 {
		o.Consecutive5xx = 5
	}
	if o.Interval == 0 {
		o.Interval = 10 * time.Second
	}
	if o.BaseEjectionTime == 0 {
		o.BaseEjectionTime = 30 * time.Second
	}
	if o.MaxEjectionPercent == 0 {
		o.MaxEjectionPercent = 50
	}
	cb := &p.CircuitBreakers
	for _, v := range []*uint32{&cb.MaxConnections, &cb.MaxPendingRequests, &cb.MaxRequests} {
		if *v == 0 {
			*v = 1024
		}
	}
	if cb.RetryBudgetPercent == 0 {
		cb.RetryBudgetPercent = 20
	}
	if cb.MinRetryConcurrency == 0 {
		cb.MinRetryConcurrency = 3
	}
}

func (x *XDS) validate() error {
	errs := []error{checkHostPort("xds.listen", x.Listen), checkHostPort("xds.admin", x.Admin)}
	if x.WatchInterval < 0 {
		errs = append(errs, fmt.Errorf("xds.watch_interval: %s is negative", x.WatchInterval))
	}
	if x.History < 1 {
		errs = append(errs, fmt.Errorf("xds.history: %d must be at least 1", x.History))
	}
	if x.HeartbeatTTL < 0 {
		errs = append(errs, fmt.Errorf("xds.heartbeat_ttl: %s is negative", x.HeartbeatTTL))
	}
	if g := x.RegistrationGrace; g != nil && (*g < 0 || *g >= MaxRegistrationGrace) {
		errs = append(errs, fmt.Errorf("xds.registration_grace: %s is not in [0s, %s): clients that connect during it would give up waiting for their configuration (Envoy's initial_fetch_timeout, gRPC's resource timer)", *g, MaxRegistrationGrace))
	}
	errs = append(errs, x.ValidateRouting())
	return errors.Join(errs...)
}

// ValidateRouting checks the routing model on its own and its references
// (every route's pools and policy exist, every regex compiles). Each
// problem is one error starting with its path, e.g.
// "xds.listeners[0].virtual_hosts[0].routes[2].match.regex: ...", which
// WithLines turns into a file line.
func (x *XDS) ValidateRouting() error {
	var errs []error
	add := func(path, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", path, fmt.Sprintf(format, args...)))
	}
	if x.ExtProc.MessageTimeout < 0 {
		add("xds.ext_proc.message_timeout", "%s is negative", x.ExtProc.MessageTimeout)
	}
	if x.ExtProc.MaxMessageTimeout < x.ExtProc.MessageTimeout {
		add("xds.ext_proc.max_message_timeout", "%s is below message_timeout %s", x.ExtProc.MaxMessageTimeout, x.ExtProc.MessageTimeout)
	}
	if x.ExtProc.ConnectTimeout < 0 {
		add("xds.ext_proc.connect_timeout", "%s is negative", x.ExtProc.ConnectTimeout)
	}
	pools := map[string]bool{}
	for i, p := range x.Pools {
		path := fmt.Sprintf("xds.pools[%d]", i)
		if !validName(p.Name) {
			add(path+".name", "%q is not a name (letters, digits, - _ .)", p.Name)
		}
		if pools[p.Name] {
			add(path+".name", "pool %q is defined twice", p.Name)
		}
		pools[p.Name] = true
		errs = append(errs, p.validate(path))
	}
	for name, p := range x.Policies {
		if !validName(name) {
			add("xds.policies."+name, "%q is not a name (letters, digits, - _ .)", name)
		}
		if err := p.Validate(); err != nil {
			for _, e := range splitJoined(err) {
				add("xds.policies."+name+"."+fieldOf(e), "%s", msgOf(e))
			}
		}
	}
	listeners := map[string]bool{}
	addresses := map[string][]XDSListener{}
	// Route names scope cache entries, rate limits and purges, so they are
	// unique across listeners, not only within one.
	routes := map[string]string{} // route name → listener
	for i, l := range x.Listeners {
		path := fmt.Sprintf("xds.listeners[%d]", i)
		if !validName(l.Name) {
			add(path+".name", "%q is not a name (letters, digits, - _ .)", l.Name)
		}
		if listeners[l.Name] {
			add(path+".name", "listener %q is defined twice", l.Name)
		}
		listeners[l.Name] = true
		if err := checkHostPort(path+".address", l.Address); err != nil {
			errs = append(errs, err)
		} else if host, _ := HostPort(l.Address); net.ParseIP(host) == nil {
			add(path+".address", "Envoy listens on an IP address, not the host name %q", host)
		} else {
			for _, other := range addresses[l.Address] {
				if nodesOverlap(l.Nodes, other.Nodes) {
					add(path+".address", "%s is already used by listener %q on the same nodes", l.Address, other.Name)
					break
				}
			}
		}
		addresses[l.Address] = append(addresses[l.Address], l)
		if l.BufferLimitBytes < minListenerBufferLimitBytes {
			add(path+".buffer_limit_bytes", "%d is below the minimum of %d", l.BufferLimitBytes, minListenerBufferLimitBytes)
		} else if l.BufferLimitBytes > math.MaxUint32 {
			add(path+".buffer_limit_bytes", "%d is above Envoy's maximum of %d", l.BufferLimitBytes, uint32(math.MaxUint32))
		}
		if len(l.VirtualHosts) == 0 {
			add(path+".virtual_hosts", "a listener needs at least one virtual host")
		}
		vhosts := map[string]bool{}
		domains := map[string]string{}
		for j, vh := range l.VirtualHosts {
			vpath := fmt.Sprintf("%s.virtual_hosts[%d]", path, j)
			if !validName(vh.Name) {
				add(vpath+".name", "%q is not a name (letters, digits, - _ .)", vh.Name)
			}
			if vhosts[vh.Name] {
				add(vpath+".name", "virtual host %q is defined twice in listener %q", vh.Name, l.Name)
			}
			vhosts[vh.Name] = true
			for k, d := range vh.Domains {
				// Envoy compares domains lower-cased and NACKs a duplicate.
				key := strings.ToLower(d)
				if other, ok := domains[key]; ok {
					add(fmt.Sprintf("%s.domains[%d]", vpath, k), "domain %q is already served by virtual host %q", d, other)
				}
				domains[key] = vh.Name
			}
			if len(vh.Routes) == 0 {
				add(vpath+".routes", "a virtual host needs at least one route")
			}
			for k, r := range vh.Routes {
				rpath := fmt.Sprintf("%s.routes[%d]", vpath, k)
				if other, ok := routes[r.Name]; ok {
					add(rpath+".name", "route %q is already defined in listener %q (route names scope cache entries and rate limits, so they are unique across listeners)", r.Name, other)
				}
				routes[r.Name] = l.Name
				errs = append(errs, r.validate(rpath, pools, x.Policies))
			}
		}
	}
	return errors.Join(errs...)
}

func (r *XDSRoute) validate(path string, pools map[string]bool, policies map[string]policy.Policy) error {
	var errs []error
	add := func(p, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", p, fmt.Sprintf(format, args...)))
	}
	if !validName(r.Name) {
		add(path+".name", "%q is not a name (letters, digits, - _ .)", r.Name)
	}
	m := r.Match
	set := 0
	for _, s := range []string{m.Prefix, m.Path, m.Regex} {
		if s != "" {
			set++
		}
	}
	if set > 1 {
		add(path+".match", "give only one of prefix, path and regex")
	}
	if m.Prefix != "" && !strings.HasPrefix(m.Prefix, "/") {
		add(path+".match.prefix", "%q must start with /", m.Prefix)
	}
	if m.Path != "" && !strings.HasPrefix(m.Path, "/") {
		add(path+".match.path", "%q must start with /", m.Path)
	}
	if m.Regex != "" {
		if _, err := regexp.Compile(m.Regex); err != nil {
			add(path+".match.regex", "not an RE2 expression: %v", err)
		}
	}
	for i, h := range m.Headers {
		hpath := fmt.Sprintf("%s.match.headers[%d]", path, i)
		switch {
		case h.Name == "" || strings.ToLower(h.Name) != h.Name || strings.ContainsAny(h.Name, " \t\r\n"):
			add(hpath+".name", "%q is not a lower-case header name", h.Name)
		case h.Name == policy.ModelHeader:
			add(hpath+".name", "%s is set by the ext_proc server from the body: match on it with match.model", h.Name)
		case h.Name == policy.PriorityHeader:
			// ext_proc overwrites it with the matched route's own priority,
			// so matching on it would make the route depend on itself.
			add(hpath+".name", "%s is set by the ext_proc server from the route's policy: match on what sets the priority instead", h.Name)
		}
		kinds := 0
		for _, s := range []string{h.Exact, h.Prefix, h.Regex} {
			if s != "" {
				kinds++
			}
		}
		if h.Present {
			kinds++
		}
		if kinds != 1 {
			add(hpath, "give exactly one of exact, prefix, regex and present")
		}
		if h.Regex != "" {
			if _, err := regexp.Compile(h.Regex); err != nil {
				add(hpath+".regex", "not an RE2 expression: %v", err)
			}
		}
	}
	switch {
	case r.Pool != "" && len(r.Destinations) > 0:
		add(path, "give pool or destinations, not both")
	case r.Pool == "" && len(r.Destinations) == 0:
		add(path, "give pool or destinations")
	case r.Pool != "" && !pools[r.Pool]:
		add(path+".pool", "no pool named %q", r.Pool)
	}
	seen := map[string]bool{}
	var total uint64
	for i, d := range r.Destinations {
		dpath := fmt.Sprintf("%s.destinations[%d]", path, i)
		if !pools[d.Pool] {
			add(dpath+".pool", "no pool named %q", d.Pool)
		}
		if seen[d.Pool] {
			add(dpath+".pool", "pool %q is listed twice", d.Pool)
		}
		seen[d.Pool] = true
		total += uint64(d.Weight)
	}
	if len(r.Destinations) > 0 && total == 0 {
		add(path+".destinations", "weights add up to 0")
	}
	if total > 1<<32-1 {
		add(path+".destinations", "weights add up to more than 4294967295")
	}
	if r.Timeout < 0 {
		add(path+".timeout", "%s is negative", r.Timeout)
	}
	rt := r.Retry
	for i, on := range rt.On {
		if !retryConditions[on] {
			add(fmt.Sprintf("%s.retry.on[%d]", path, i), "%q is not an Envoy retry condition (%s)", on, strings.Join(retryConditionList, ", "))
		}
	}
	for i, c := range rt.StatusCodes {
		if c < 100 || c > 599 {
			add(fmt.Sprintf("%s.retry.status_codes[%d]", path, i), "%d is not an HTTP status", c)
		}
	}
	if rt.PerTryTimeout < 0 {
		add(path+".retry.per_try_timeout", "%s is negative", rt.PerTryTimeout)
	}
	if r.Policy != "" {
		if _, ok := policies[r.Policy]; !ok {
			add(path+".policy", "no policy named %q in xds.policies", r.Policy)
		}
	}
	return errors.Join(errs...)
}

func (p *XDSPool) validate(path string) error {
	var errs []error
	add := func(p, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", p, fmt.Sprintf(format, args...)))
	}
	switch p.LB {
	case "least_request", "round_robin", "random":
	default:
		add(path+".lb", "%q is not one of least_request, round_robin, random", p.LB)
	}
	for i, e := range p.Endpoints {
		epath := fmt.Sprintf("%s.endpoints[%d]", path, i)
		if err := checkHostPort(epath, e); err != nil {
			errs = append(errs, err)
		} else if host, _ := HostPort(e); net.ParseIP(host) == nil {
			add(epath, "EDS carries IP addresses, not the host name %q", host)
		}
	}
	if p.ConnectTimeout < 0 {
		add(path+".connect_timeout", "%s is negative", p.ConnectTimeout)
	}
	if k := p.Kubernetes; k.Service != "" || k.Namespace != "" || k.Port != "" {
		if !dnsLabel.MatchString(k.Service) {
			add(path+".kubernetes.service", "%q is not a Service name (lower-case DNS label)", k.Service)
		}
		if k.Namespace != "" && !dnsLabel.MatchString(k.Namespace) {
			add(path+".kubernetes.namespace", "%q is not a namespace name (lower-case DNS label)", k.Namespace)
		}
		if n, err := strconv.Atoi(k.Port); k.Port != "" && (err == nil && (n < 1 || n > 65535) || err != nil && !dnsLabel.MatchString(k.Port)) {
			add(path+".kubernetes.port", "%q is neither a port number nor a port name", k.Port)
		}
	}
	h := p.HealthCheck
	if !strings.HasPrefix(h.Path, "/") {
		add(path+".health_check.path", "%q must start with /", h.Path)
	}
	if h.Interval < 0 || h.Timeout < 0 {
		add(path+".health_check", "interval and timeout must not be negative")
	}
	if cb := p.CircuitBreakers; cb.RetryBudgetPercent < 0 || cb.RetryBudgetPercent > 100 {
		add(path+".circuit_breakers.retry_budget_percent", "%v is not in 0..100", cb.RetryBudgetPercent)
	}
	if p.Outlier.MaxEjectionPercent > 100 {
		add(path+".outlier_detection.max_ejection_percent", "%d is over 100", p.Outlier.MaxEjectionPercent)
	}
	if p.Outlier.Interval < 0 || p.Outlier.BaseEjectionTime < 0 {
		add(path+".outlier_detection", "interval and base_ejection_time must not be negative")
	}
	return errors.Join(errs...)
}

var retryConditionList = []string{"5xx", "gateway-error", "reset", "reset-before-request", "connect-failure",
	"envoy-ratelimited", "retriable-4xx", "refused-stream", "retriable-status-codes", "retriable-headers", "http3-post-connect-failure"}

var retryConditions = func() map[string]bool {
	m := map[string]bool{}
	for _, c := range retryConditionList {
		m[c] = true
	}
	return m
}()

var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// dnsLabel is an RFC 1123 label, as Kubernetes names Services,
// namespaces and ports.
var dnsLabel = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

func validName(s string) bool { return namePattern.MatchString(s) }

func splitJoined(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// fieldOf and msgOf split a policy error "field: message".
func fieldOf(err error) string {
	f, _, _ := strings.Cut(err.Error(), ": ")
	return f
}

func msgOf(err error) string {
	_, m, _ := strings.Cut(err.Error(), ": ")
	return m
}
