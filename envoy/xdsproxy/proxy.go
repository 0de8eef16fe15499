// Package xdsproxy is a small Envoy stand-in configured only over ADS, so
// that the end-to-end tests exercise the control plane, the ext_proc server
// and the engine together where no Envoy binary exists. It presents itself
// as an Envoy node (user agent "envoy"), subscribes to LDS, the RDS route
// configurations its listeners name, CDS and EDS, ACKs what it applies and
// NACKs, with the reason, what it cannot serve. Each LDS listener is bound
// and served as plain HTTP: a request is matched to a route (virtual host
// by domain, then prefix/path/safe_regex and header matchers), a cluster is
// picked by weight and an endpoint round robin, and the request runs
// through envoy/harness with the listener's ext_proc filter config and the
// route's ExtProcPerRoute, so every ext_proc behaviour (and the route
// recomputed after clear_route_cache) is the harness's.
//
// What Envoy does that the proxy does not: TLS, HTTP/2 to clients, retries,
// active health checks, outlier detection and circuit breakers.
package xdsproxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/infergate/infergate/envoy/harness"
	"github.com/infergate/infergate/internal/ops"
)

// Config names the control plane and the node the proxy presents.
type Config struct {
	// ADS is the control plane's ADS address (host:port, gRPC).
	ADS string
	// NodeID and Cluster are node.id and node.cluster, as in an Envoy
	// bootstrap (infergate's envoy.node_id and envoy.cluster).
	NodeID  string
	Cluster string
	// Log defaults to slog.Default().
	Log *slog.Logger
}

// Proxy is one Envoy-like node. It is an ops.Service; its sockets are
// bound when LDS names them, not in Listen.
type Proxy struct {
	cfg  Config
	log  *slog.Logger
	node *corev3.Node
	conn *grpc.ClientConn
	// transport is shared by every route's upstream client, so
	// connections to the engines are pooled as Envoy pools them.
	transport *http.Transport

	mu        sync.Mutex
	subs      map[string]*subscription // by type URL
	frontends map[string]*frontend     // by listener name
	routes    map[string]*routeConfig  // RDS, by name
	clusters  map[string]*clusterConf  // CDS, by name
	endpoints map[string][]string      // EDS, by cluster (service) name
	procs     map[string]*processor    // by config key
	// changed is closed and replaced whenever the serving state changes.
	changed chan struct{}
	// background tracks the listeners' HTTP servers until they stop and
	// retired processors until they are closed.
	background sync.WaitGroup
}

var _ ops.Service = (*Proxy)(nil)

// New prepares a proxy; nothing is dialled before Serve.
func New(cfg Config) (*Proxy, error) {
	if cfg.ADS == "" {
		return nil, errors.New("xdsproxy: the ADS address is required")
	}
	if cfg.NodeID == "" {
		return nil, errors.New("xdsproxy: the node id is required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	conn, err := grpc.NewClient(cfg.ADS, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("xdsproxy: ADS address %q: %w", cfg.ADS, err)
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConnsPerHost = 64
	return &Proxy{
		cfg: cfg,
		log: cfg.Log,
		node: &corev3.Node{
			Id: cfg.NodeID, Cluster: cfg.Cluster,
			// The control plane gives socket listeners to "envoy" only.
			UserAgentName:        "envoy",
			UserAgentVersionType: &corev3.Node_UserAgentVersion{UserAgentVersion: "infergate-xdsproxy"},
		},
		conn:      conn,
		transport: transport,
		subs:      newSubscriptions(),
		frontends: map[string]*frontend{},
		routes:    map[string]*routeConfig{},
		clusters:  map[string]*clusterConf{},
		endpoints: map[string][]string{},
		procs:     map[string]*processor{},
		changed:   make(chan struct{}),
	}, nil
}

// Name implements ops.Service.
func (p *Proxy) Name() string { return "xdsproxy" }

// Listen implements ops.Service. It binds nothing: the listeners' addresses
// arrive over LDS, and a bind failure there is a NACK, as in Envoy.
func (p *Proxy) Listen() error { return nil }

// Serve follows the control plane and serves its listeners until ctx is
// done, reconnecting to ADS when the stream breaks while the last applied
// config keeps serving. Then in-flight requests finish and it returns.
func (p *Proxy) Serve(ctx context.Context) error {
	p.followADS(ctx)
	p.mu.Lock()
	for name, fe := range p.frontends {
		fe.stop()
		delete(p.frontends, name)
	}
	for key, proc := range p.procs {
		proc.retire()
		delete(p.procs, key)
	}
	p.notifyLocked()
	p.mu.Unlock()
	p.background.Wait()
	p.transport.CloseIdleConnections()
	return p.conn.Close()
}

// Addr is the bound address of the named listener while it serves, else "".
func (p *Proxy) Addr(listener string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if fe := p.frontends[listener]; fe != nil && fe.serving {
		return fe.ln.Addr().String()
	}
	return ""
}

// WaitServing waits until the named listener serves (its route table and
// ext_proc cluster arrived) and returns its bound address.
func (p *Proxy) WaitServing(ctx context.Context, listener string) (string, error) {
	for {
		p.mu.Lock()
		fe, changed := p.frontends[listener], p.changed
		var addr string
		if fe != nil && fe.serving {
			addr = fe.ln.Addr().String()
		}
		p.mu.Unlock()
		if addr != "" {
			return addr, nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("xdsproxy: listener %q is not serving: %w", listener, ctx.Err())
		case <-changed:
		}
	}
}

func (p *Proxy) notifyLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// frontend is one LDS listener: its socket, its HTTP server once the
// listener is warm, and its current table.
type frontend struct {
	p       *Proxy
	conf    *listenerConf
	ln      net.Listener
	srv     *http.Server
	serving bool
	table   atomic.Pointer[table]
}

// startLocked serves the socket. Until then connections wait in the
// kernel's backlog, as they do while Envoy warms a listener.
func (fe *frontend) startLocked() {
	fe.serving = true
	srv := &http.Server{Handler: fe, ReadHeaderTimeout: 10 * time.Second}
	fe.srv = srv
	name, ln, log := fe.conf.name, fe.ln, fe.p.log
	fe.p.background.Add(1)
	go func() {
		defer fe.p.background.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("listener stopped", "listener", name, "error", err)
		}
	}()
	log.Info("listener serving", "listener", name, "address", ln.Addr().String())
}

// stop drains the listener: in-flight requests finish (up to
// ops.ShutdownGrace), new connections are refused.
func (fe *frontend) stop() {
	if !fe.serving {
		fe.ln.Close()
		return
	}
	fe.serving = false
	srv := fe.srv
	fe.p.background.Add(1)
	go func() {
		defer fe.p.background.Done()
		ctx, cancel := context.WithTimeout(context.Background(), ops.ShutdownGrace)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}()
}

// ServeHTTP matches the route on the request as received, then hands the
// request to that route's processor (the harness).
func (fe *frontend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	arrival := fe.table.Load()
	for _, h := range arrival.removeHeaders {
		r.Header.Del(h)
	}
	path, ok := arrival.paths.apply(r.URL.RequestURI())
	if !ok {
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write([]byte("Bad Request"))
		return
	}
	if path != r.URL.RequestURI() {
		u, err := url.ParseRequestURI(path)
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		r.URL, r.RequestURI = u, path
	}
	header := r.Header.Clone()
	header.Set("Host", r.Host)
	// Route header matches see the pseudo-headers too, as in Envoy.
	header[":method"], header[":authority"], header[":path"], header[":scheme"] = []string{r.Method}, []string{r.Host}, []string{path}, []string{"http"}
	for {
		t := fe.table.Load()
		rt := t.match(header, path)
		proc := t.noRoute
		if rt != nil {
			proc = t.procs[rt]
		}
		if served := serveWith(proc, w, r); served {
			return
		}
		// The processor was retired since the table was loaded. A config
		// change publishes the new table before retiring anything, so an
		// unchanged table means the listener is draining.
		if fe.table.Load() == t {
			w.Header().Set("Content-Type", "text/plain")
			w.Header().Set("Connection", "close")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("listener draining"))
			return
		}
	}
}

func serveWith(proc *processor, w http.ResponseWriter, r *http.Request) bool {
	if !proc.acquire() {
		return false
	}
	defer proc.release()
	proc.handler.ServeHTTP(w, r)
	return true
}

// route is the harness's route table: the current table's route for the
// (possibly mutated) request and an endpoint of its cluster.
func (fe *frontend) route(h http.Header, path string) string {
	t := fe.table.Load()
	rt := t.match(h, path)
	if rt == nil {
		return ""
	}
	if u := t.pick(rt); u != "" {
		return u
	}
	return harness.NoHealthyUpstream
}

// refreshLocked rebuilds every listener's table from the applied
// resources. A listener whose route table or ext_proc cluster is missing
// keeps its previous table, or stays warming.
func (p *Proxy) refreshLocked() {
	// A cluster is warm once its endpoints are known: its own, or an EDS
	// response for it (which may list none).
	upstreams := map[string]*upstream{}
	for name, c := range p.clusters {
		addrs, warm := c.static, true
		if c.edsName != "" {
			addrs, warm = p.endpoints[c.edsName]
		}
		if warm {
			upstreams[name] = &upstream{addrs: addrs}
		}
	}
	used := map[string]*processor{}
	for _, name := range sortedKeys(p.frontends) {
		fe := p.frontends[name]
		t, why := p.buildTableLocked(fe, upstreams, used)
		if t == nil {
			if old := fe.table.Load(); old != nil {
				for _, proc := range old.procs {
					used[proc.key] = proc
				}
				used[old.noRoute.key] = old.noRoute
			}
			p.log.Debug("listener warming", "listener", name, "waiting_for", why)
			continue
		}
		fe.table.Store(t)
		if !fe.serving {
			fe.startLocked()
		}
	}
	for key, proc := range p.procs {
		if used[key] != proc {
			proc.retire()
		}
	}
	p.procs = used
	p.notifyLocked()
}

// buildTableLocked returns nil and what is missing when the listener
// cannot be served yet.
func (p *Proxy) buildTableLocked(fe *frontend, upstreams map[string]*upstream, used map[string]*processor) (*table, string) {
	c := fe.conf
	rc := c.inline
	if rc == nil {
		if rc = p.routes[c.rdsName]; rc == nil {
			return nil, "route configuration " + strconv.Quote(c.rdsName)
		}
	}
	extProcAddr := c.extProc.GetGrpcService().GetGoogleGrpc().GetTargetUri()
	if name := c.extProc.GetGrpcService().GetEnvoyGrpc().GetClusterName(); name != "" {
		if u := upstreams[name]; u != nil && len(u.addrs) > 0 {
			extProcAddr = u.addrs[0]
		}
	}
	if extProcAddr == "" {
		return nil, "the ext_proc cluster's endpoints"
	}
	if !fe.serving {
		// As Envoy's initialization does, a listener starts serving only
		// when every cluster its routes use is warm.
		for _, vh := range rc.vhosts {
			for _, r := range vh.routes {
				for _, wc := range r.clusters {
					if upstreams[wc.name] == nil {
						return nil, "cluster " + strconv.Quote(wc.name)
					}
				}
			}
		}
	}
	t := &table{routes: rc, upstreams: upstreams, procs: map[*route]*processor{}, removeHeaders: c.removeHeaders, paths: c.paths}
	var err error
	if t.noRoute, err = p.processorLocked(fe, extProcAddr, nil, nil, used); err != nil {
		return nil, err.Error()
	}
	for _, vh := range rc.vhosts {
		for _, r := range vh.routes {
			pr := r.perFilter[c.extProcName]
			if pr == nil {
				pr = vh.perFilter[c.extProcName]
			}
			if pr == nil {
				pr = rc.perFilter[c.extProcName]
			}
			if t.procs[r], err = p.processorLocked(fe, extProcAddr, r, pr, used); err != nil {
				return nil, err.Error()
			}
		}
	}
	return t, ""
}

// processorLocked returns the processor for one route's ext_proc config,
// reusing the one already running when nothing about it changed.
func (p *Proxy) processorLocked(fe *frontend, extProcAddr string, r *route, perRoute *extprocfilterv3.ExtProcPerRoute, used map[string]*processor) (*processor, error) {
	c := fe.conf
	var name, vhost string
	timeout := time.Duration(0)
	if r != nil {
		name, vhost, timeout = r.name, r.vhost, r.timeout
	}
	opts := proto.MarshalOptions{Deterministic: true}
	filterBytes, err := opts.Marshal(c.extProc)
	if err != nil {
		return nil, err
	}
	var perRouteBytes []byte
	if perRoute != nil {
		if perRouteBytes, err = opts.Marshal(perRoute); err != nil {
			return nil, err
		}
	}
	key := fmt.Sprintf("%s\x00%s\x00%x\x00%x\x00%s\x00%s\x00%d\x00%d", c.name, extProcAddr, filterBytes, perRouteBytes, vhost, name, c.bufferLimit, timeout)
	if proc := used[key]; proc != nil {
		return proc, nil
	}
	if proc := p.procs[key]; proc != nil {
		used[key] = proc
		return proc, nil
	}
	hc := harness.Config{
		Filter:      c.extProc,
		Route:       fe.route,
		BufferLimit: c.bufferLimit,
		HTTPClient: &http.Client{
			Transport:     p.transport,
			Timeout:       timeout,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}
	if r != nil {
		// Attributes Envoy computes from the route; the harness cannot.
		hc.Attributes = map[string]*structpb.Value{
			"xds.route_name":        structpb.NewStringValue(name),
			"xds.virtual_host_name": structpb.NewStringValue(vhost),
		}
	}
	hc.PerRoute = perRoute
	h, err := harness.New(extProcAddr, hc)
	if err != nil {
		// The configs passed harnessAccepts when they were applied, so
		// only the ext_proc address can be wrong here.
		return nil, err
	}
	proc := newProcessor(key, h, &p.background)
	used[key] = proc
	return proc, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
