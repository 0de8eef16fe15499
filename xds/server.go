// Package xds is infergate's control plane: it turns the declarative
// routing model of infergate.yaml (listeners, routes with matches on path,
// headers and model, weighted destinations, per-route policy, engine
// pools) into Envoy resources, validates every change in full before
// serving it, and serves per-node snapshots over ADS (state of the world
// and delta) while tracking what each node ACKed or NACKed. Changes come
// from the watched config file and from the admin HTTP API; engines can
// register themselves into pools with a heartbeat.
package xds

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"time"

	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	sotwv3 "github.com/envoyproxy/go-control-plane/pkg/server/sotw/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/infergate/infergate/config"
	"github.com/infergate/infergate/internal/ops"
	"github.com/infergate/infergate/xds/endpointslice"
)

// revision is one accepted version of the routing model.
type revision struct {
	Version int
	Source  string // startup, file, admin
	At      time.Time
	// Note says what changed ("PUT route chat", "rollback to 3", ...).
	Note    string
	routing config.XDS
}

// rejection is the last refused change.
type rejection struct {
	Source string    `yaml:"source" json:"source"`
	At     time.Time `yaml:"at" json:"at"`
	Error  string    `yaml:"error" json:"error"`
}

// Server is the control plane, an ops.Service.
type Server struct {
	log        *slog.Logger
	cfg        config.Config
	configPath string
	// fileSum is the config file's content hash when the server was made:
	// the watcher applies any content after that, even one written before
	// it started.
	fileSum   [32]byte
	reg       *prometheus.Registry
	m         *metrics
	tracker   *tracker
	pub       *publisher
	cache     *nackGuard
	endpoints *registry
	// slices follows the Kubernetes Services pools name; nil until the
	// first config that names one.
	slices     *endpointslice.Watcher
	kubeClient func() (endpointslice.API, error)
	adminToken string

	// mu serialises changes: build, validate, publish, record.
	mu            sync.Mutex
	model         model
	res           *resources
	version       int
	history       []revision
	lastRejection *rejection
	// waiting are the pools the first configuration is held for (see
	// grace.go); empty once it is published.
	waiting         []string
	graceTimer      *time.Timer
	engineInProcess bool

	grpcLn, adminLn net.Listener
	grpc            *grpc.Server
	ctx             context.Context
	cancel          context.CancelFunc
}

// New builds and validates the first snapshot from cfg; configPath (may be
// empty) is the file to watch for changes.
func New(cfg config.Config, configPath string, log *slog.Logger, opts ...Option) (*Server, error) {
	return newServer(cfg, configPath, log, ops.NewRegistry(), nil, opts...)
}

// Option tunes a Server beyond its config file.
type Option func(*Server)

// EngineInProcess says this process also runs the engine at engine.listen
// (infergate up), so the default pool, which serves engine.listen while
// no engine has registered into it, needs no registration grace.
func EngineInProcess() Option {
	return func(s *Server) { s.engineInProcess = true }
}

// newServer is New with the metrics on reg and, when kube is not nil, the
// Kubernetes API it gives.
func newServer(cfg config.Config, configPath string, log *slog.Logger, reg *prometheus.Registry, kube endpointslice.API, opts ...Option) (*Server, error) {
	if log == nil {
		log = slog.Default()
	}
	token, err := ops.ReadToken("xds.admin_token_file", cfg.XDS.AdminTokenFile)
	if err != nil {
		return nil, fmt.Errorf("xds: %w", err)
	}
	m := newMetrics(reg)
	t := newTracker(m)
	// Not the cache's ADS mode: it answers only requests naming every
	// resource of a type, and a proxyless gRPC client asks for its own
	// listener alone. Clusters still reach Envoy before their endpoints:
	// see publisher.setLocked and WithOrderedADS.
	snapshots := cachev3.NewSnapshotCache(false, nodeKeyHash{}, cacheLogger{log})
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		log: log, cfg: cfg, configPath: configPath, reg: reg, m: m, tracker: t,
		pub:       newPublisher(snapshots),
		cache:     &nackGuard{SnapshotCache: snapshots, tracker: t},
		endpoints: newRegistry(), adminToken: token,
		kubeClient: func() (endpointslice.API, error) {
			if kube != nil {
				return kube, nil
			}
			return endpointslice.NewClient(cfg.XDS.Kubeconfig)
		},
		ctx: ctx, cancel: cancel,
	}
	for _, o := range opts {
		o(s)
	}
	if configPath != "" {
		if data, err := os.ReadFile(configPath); err == nil {
			s.fileSum = sha256.Sum256(data)
		}
	}
	t.firstSeen = s.pub.addNode
	t.gone = s.pub.removeNode
	s.holdForRegistrations()
	if _, err := s.apply(modelOf(cfg), "startup", "initial config"); err != nil {
		cancel()
		if s.slices != nil {
			s.slices.Close()
		}
		return nil, fmt.Errorf("xds: %w", err)
	}
	return s, nil
}

func modelOf(cfg config.Config) model {
	return model{routing: cfg.XDS, extProcAddr: cfg.ExtProc.Listen, engineAddr: cfg.Engine.Listen}
}

var _ ops.Service = (*Server)(nil)

// Name implements ops.Service.
func (s *Server) Name() string { return "xds" }

// Registry is the Prometheus registry of the control plane's metrics.
func (s *Server) Registry() *prometheus.Registry { return s.reg }

// Listen binds the ADS and admin addresses.
func (s *Server) Listen() error {
	var err error
	if s.grpcLn, err = ops.Listen("xds ADS", s.cfg.XDS.Listen); err != nil {
		return err
	}
	if s.adminLn, err = ops.Listen("xds admin", s.cfg.XDS.Admin); err != nil {
		s.grpcLn.Close()
		return err
	}
	return nil
}

// ADSAddr and AdminAddr are the bound addresses (after Listen).
func (s *Server) ADSAddr() string   { return s.grpcLn.Addr().String() }
func (s *Server) AdminAddr() string { return s.adminLn.Addr().String() }

// Serve serves ADS and the admin API, watches the config file and expires
// silent engines until ctx is done.
func (s *Server) Serve(ctx context.Context) error {
	if s.grpcLn == nil {
		if err := s.Listen(); err != nil {
			return err
		}
	}
	defer s.cancel()
	// Ordered: one stream's responses go out in the order the cache gives
	// them, so the clusters a publish sends first reach Envoy first.
	xdsServer := serverv3.NewServer(s.ctx, s.cache, s.tracker, sotwv3.WithOrderedADS())
	s.grpc = grpc.NewServer()
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(s.grpc, xdsServer)

	mux := http.NewServeMux()
	ops.HandleProbes(mux, s.reg, func() error { return nil })
	s.routes(mux)
	admin := &http.Server{Handler: ops.RequireToken(s.adminToken, mux), ReadHeaderTimeout: 10 * time.Second}

	ctx, stop := context.WithCancel(ctx)
	defer stop()
	errc := make(chan error, 2)
	go func() { errc <- s.grpc.Serve(s.grpcLn) }()
	go func() { errc <- ops.ServeHTTP(ctx, admin, s.adminLn, ops.ShutdownGrace) }()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); s.watch(ctx) }()
	go func() { defer wg.Done(); s.expireLoop(ctx) }()
	s.log.Info("serving", "ads", s.ADSAddr(), "admin", s.AdminAddr(), "version", s.currentVersion())
	s.startGrace()

	var err error
	select {
	case err = <-errc:
	case <-ctx.Done():
	}
	stop()
	if s.graceTimer != nil {
		s.graceTimer.Stop()
	}
	// ADS streams never end on their own: stop them, then let the admin
	// server drain (ops.ServeHTTP) and the loops return.
	s.cancel()
	s.grpc.Stop()
	for range 2 {
		if e := <-errc; e != nil && !errors.Is(e, grpc.ErrServerStopped) && err == nil {
			err = e
		}
	}
	wg.Wait()
	s.mu.Lock()
	followed := s.slices
	s.mu.Unlock()
	if followed != nil {
		followed.Close()
	}
	return err
}

// currentModel returns a deep copy of the model being served, for edits.
func (s *Server) currentModel() model {
	s.mu.Lock()
	m := s.model
	s.mu.Unlock()
	m.routing = cloneRouting(m.routing)
	return m
}

func (s *Server) currentVersion() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.version
}

// apply builds, validates and publishes m as a new version. Nothing is
// changed when any check fails.
func (s *Server) apply(m model, source, note string) (int, error) {
	return s.applyDescribed(m, source, note, func(err error) error { return err })
}

// applyDescribed is apply with describe rewording a refusal (adding file
// lines, say) before it is recorded.
func (s *Server) applyDescribed(m model, source, note string, describe func(error) error) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.applyLocked(m, source, note, describe)
}

// applyLocked is applyDescribed with s.mu held.
func (s *Server) applyLocked(m model, source, note string, describe func(error) error) (int, error) {
	start := time.Now()
	m.routing.SetRoutingDefaults()
	err := m.routing.ValidateRouting()
	var res *resources
	if err == nil {
		res, err = build(m, s.endpointAddressesLocked(), s.res)
	}
	if err == nil {
		err = check(res)
	}
	if err == nil {
		// The slices' endpoints arrive through endpointsChanged.
		err = s.followSlicesLocked(m.routing.Pools)
	}
	if err == nil && s.slices != nil {
		// The build read the Services followed until now: a pool that
		// stopped following one (or follows another) loses its endpoints
		// with this version, not at the next slice event.
		res, err = res.withEndpoints(m, s.endpointAddressesLocked())
	}
	if err != nil {
		return 0, s.rejectLocked(source, describe(err))
	}
	s.pub.publish(res)
	s.model, s.res = m, res
	s.recordEndpointsLocked()
	for _, g := range s.endpoints.dropPoolsExcept(m.routing.Pools) {
		s.log.Info("engine deregistered: its pool was removed", "pool", g.Pool, "address", g.Address)
	}
	s.version++
	s.history = append(s.history, revision{Version: s.version, Source: source, At: time.Now(), Note: note, routing: m.routing})
	if max := s.cfg.XDS.History; len(s.history) > max {
		s.history = append([]revision(nil), s.history[len(s.history)-max:]...)
	}
	s.m.buildSeconds.Observe(time.Since(start).Seconds())
	s.m.configVersion.Set(float64(s.version))
	s.log.Info("config accepted", "version", s.version, "source", source, "note", note, "build", time.Since(start))
	return s.version, nil
}

func (s *Server) rejectLocked(source string, err error) error {
	s.m.rejections.WithLabelValues(source).Inc()
	s.lastRejection = &rejection{Source: source, At: time.Now(), Error: err.Error()}
	s.log.Warn("config refused; the last good config keeps serving", "source", source, "version", s.version, "error", err)
	return err
}

// followSlicesLocked follows the Services of the pools that name one,
// connecting to the Kubernetes API the first time a pool does.
func (s *Server) followSlicesLocked(pools []config.XDSPool) error {
	if s.slices == nil {
		if !slices.ContainsFunc(pools, func(p config.XDSPool) bool { return p.Kubernetes.Service != "" }) {
			return nil
		}
		client, err := s.kubeClient()
		if err != nil {
			return fmt.Errorf("xds.pools: a pool names a Kubernetes Service, but %w", err)
		}
		s.slices = endpointslice.NewWatcher(client, s.endpointsChanged, s.log.With("source", "endpointslices"))
	}
	s.slices.Sync(pools)
	return nil
}

// endpointAddressesLocked merges the dynamic endpoint sources: engines
// that registered and the EndpointSlices followed.
func (s *Server) endpointAddressesLocked() map[string][]string {
	addrs := s.endpoints.addresses()
	if s.slices != nil {
		for pool, a := range s.slices.Addresses() {
			addrs[pool] = append(addrs[pool], a...)
		}
	}
	return addrs
}

// endpointsChanged republishes the current model with the dynamic
// endpoints. The routing model (and its version) stays the same.
func (s *Server) endpointsChanged() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.res == nil {
		return // the first config was refused; New failed
	}
	start := time.Now()
	res, err := s.res.withEndpoints(s.model, s.endpointAddressesLocked())
	if err != nil {
		// Registered endpoints are checked on the way in, so the model
		// that was valid a moment ago cannot fail here; keep serving it.
		s.log.Error("endpoint change not published", "error", err)
		return
	}
	s.pub.publish(res)
	s.res = res
	s.recordEndpointsLocked()
	s.m.buildSeconds.Observe(time.Since(start).Seconds())
}

// recordEndpointsLocked sets each pool's endpoint gauge from what was
// published; removed pools lose their series.
func (s *Server) recordEndpointsLocked() {
	s.m.poolEndpoints.Reset()
	for pool, la := range s.res.endpoints {
		n := 0
		for _, le := range la.GetEndpoints() {
			n += len(le.GetLbEndpoints())
		}
		s.m.poolEndpoints.WithLabelValues(pool).Set(float64(n))
	}
}

// expireLoop drops registered engines whose heartbeat stopped.
func (s *Server) expireLoop(ctx context.Context) {
	// A registration may ask for a TTL far below heartbeat_ttl, so sweep
	// at least four times a second; a sweep is one pass over a small map.
	tick := time.NewTicker(max(min(s.cfg.XDS.HeartbeatTTL/4, 250*time.Millisecond), 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			if gone := s.endpoints.expire(now); len(gone) > 0 {
				for _, g := range gone {
					s.log.Info("engine left EDS: heartbeat stopped", "pool", g.Pool, "address", g.Address)
				}
				s.endpointsChanged()
			}
		}
	}
}

// Nodes returns the status of every connected node, keyed by
// "envoy/<id>" or "grpc/<id>".
func (s *Server) Nodes() map[string]NodeStatus { return s.tracker.snapshot() }

// cacheLogger routes go-control-plane's logs to slog at debug level; its
// info lines are per-request chatter.
type cacheLogger struct{ log *slog.Logger }

func (l cacheLogger) Debugf(format string, args ...any) { l.log.Debug(fmt.Sprintf(format, args...)) }
func (l cacheLogger) Infof(format string, args ...any)  { l.log.Debug(fmt.Sprintf(format, args...)) }
func (l cacheLogger) Warnf(format string, args ...any)  { l.log.Warn(fmt.Sprintf(format, args...)) }
func (l cacheLogger) Errorf(format string, args ...any) { l.log.Error(fmt.Sprintf(format, args...)) }
