// Package extproc is the Envoy ext_proc gRPC server of infergate: for every
// HTTP request Envoy opens a Process stream, and the server answers repeats
// from the exact response cache (then an optional further Stage such as
// the semantic cache), collapses identical requests in flight, enforces
// per-tenant request-rate limits and token budgets, and stores the
// upstream's cacheable responses on the way back. Per-route policy arrives
// with each stream as gRPC metadata (see package policy); the server keeps
// no per-route configuration.
package extproc

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/infergate/infergate/config"
	"github.com/infergate/infergate/extproc/cache"
	"github.com/infergate/infergate/extproc/ratelimit"
	"github.com/infergate/infergate/extproc/redisconn"
	"github.com/infergate/infergate/extproc/semantic"
	"github.com/infergate/infergate/internal/ops"
)

// Server is the ext_proc gRPC service plus its admin HTTP API. It
// implements ops.Service.
type Server struct {
	extprocv3.UnimplementedExternalProcessorServer

	cfg     config.ExtProc
	log     *slog.Logger
	reg     *prometheus.Registry
	metrics *metrics
	store   *cache.Store
	flights *cache.Flights
	limiter ratelimit.Limiter
	redis   *redisconn.Conn
	sem     *semantic.Cache
	stages  []Stage
	// policies caches the route policies streams arrive with.
	policies policyCache

	grpc    *grpc.Server
	grpcLn  net.Listener
	adminLn net.Listener
	// adminToken is the bearer token the admin API requires ("" none).
	adminToken string
}

// Option changes how New builds the Server.
type Option func(*Server)

// WithStage adds a lookup stage after the exact cache (see Stage).
func WithStage(st Stage) Option { return func(s *Server) { s.stages = append(s.stages, st) } }

// WithRegistry makes the server register its metrics on reg (served on its
// /metrics) instead of a registry of its own, so that a Stage built before
// the server can share it.
func WithRegistry(reg *prometheus.Registry) Option { return func(s *Server) { s.reg = reg } }

// New builds the server from its config section, with the semantic cache
// of cfg.Semantic (or the one given by WithSemantic) as the last stage.
// Nothing listens until Listen.
func New(cfg config.ExtProc, log *slog.Logger, opts ...Option) (*Server, error) {
	token, err := ops.ReadToken("extproc.admin_token_file", cfg.AdminTokenFile)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: log, flights: cache.NewFlights(), adminToken: token}
	for _, o := range opts {
		o(s)
	}
	if s.reg == nil {
		s.reg = ops.NewRegistry()
	}
	s.metrics = newMetrics(s.reg)
	local, err := cache.NewLocal(cache.LocalConfig{
		MemoryMB:      cfg.Cache.MemoryMB,
		MaxEntryBytes: cfg.Cache.MaxEntryBytes,
		MaxTTL:        cfg.Cache.MaxTTL,
		OnEvict:       func(reason string) { s.metrics.evictions.WithLabelValues(reason).Inc() },
	})
	if err != nil {
		return nil, err
	}
	registerCacheSize(s.reg, local)
	limiter := ratelimit.Limiter(ratelimit.NewLocal())
	if cfg.Redis.Addr != "" {
		s.redis = redisconn.New(cfg.Redis, log, func(op string) { s.metrics.redisErrors.WithLabelValues(op).Inc() })
		limiter = &ratelimit.Fallback{
			Shared:     ratelimit.NewRedis(s.redis),
			Local:      limiter,
			FailClosed: cfg.Redis.FailureMode == "closed",
		}
	}
	s.store = cache.NewStore(local, s.redis, log)
	s.limiter = limiter
	if s.sem == nil {
		if s.sem, err = s.newSemantic(cfg); err != nil {
			return nil, err
		}
	}
	// Only routes whose policy says cache: semantic reach it; it comes after
	// the exact cache and any stage given by WithStage.
	s.stages = append(s.stages, semanticStage{c: s.sem})
	s.store.OnRelayedPurge(func(sel cache.Selector) { s.sem.PurgeLocal(semanticSelector(sel)) })
	s.store.OnResubscribe(s.sem.Resync)
	// Bodies arrive whole in one message (BUFFERED); leave room for the
	// headers and attributes around the largest accepted body.
	msgLimit := cfg.MaxBodyBytes + 1<<20
	s.grpc = grpc.NewServer(grpc.MaxRecvMsgSize(msgLimit), grpc.MaxSendMsgSize(msgLimit))
	extprocv3.RegisterExternalProcessorServer(s.grpc, s)
	return s, nil
}

// Name implements ops.Service.
func (s *Server) Name() string { return "extproc" }

// Listen implements ops.Service.
func (s *Server) Listen() error {
	ln, err := ops.Listen("extproc", s.cfg.Listen)
	if err != nil {
		return err
	}
	admin, err := ops.Listen("extproc admin", s.cfg.Admin)
	if err != nil {
		_ = ln.Close()
		return err
	}
	s.grpcLn, s.adminLn = ln, admin
	return nil
}

// Addr is the bound gRPC address (after Listen).
func (s *Server) Addr() string { return s.grpcLn.Addr().String() }

// AdminAddr is the bound admin HTTP address (after Listen).
func (s *Server) AdminAddr() string { return s.adminLn.Addr().String() }

// Registry is the server's metrics registry.
func (s *Server) Registry() *prometheus.Registry { return s.reg }

// Serve implements ops.Service: gRPC and admin HTTP until ctx ends, then a
// graceful stop that lets open streams finish within ops.ShutdownGrace.
func (s *Server) Serve(ctx context.Context) error {
	if s.grpcLn == nil {
		return errors.New("extproc: Serve called before Listen")
	}
	defer s.store.Local().Close()
	defer s.redis.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go s.store.FollowPurges(ctx)
	// The semantic cache sweeps expired entries and follows the other
	// replicas until ctx ends; its background stores finish before Serve
	// returns and Redis is closed.
	semDone := make(chan struct{})
	go func() {
		defer close(semDone)
		if err := s.sem.Run(ctx); err != nil {
			s.log.Error("semantic cache stopped", "err", err)
		}
	}()
	defer func() { cancel(); <-semDone }()

	grpcErr := make(chan error, 1)
	go func() { grpcErr <- s.grpc.Serve(s.grpcLn) }()
	adminErr := make(chan error, 1)
	go func() {
		srv := &http.Server{Handler: s.adminHandler(), ReadHeaderTimeout: 10 * time.Second}
		adminErr <- ops.ServeHTTP(ctx, srv, s.adminLn, ops.ShutdownGrace)
	}()
	s.log.Info("ext_proc listening", "grpc", s.Addr(), "admin", s.AdminAddr(), "redis", s.cfg.Redis.Addr, "semantic_engine", s.cfg.Semantic.EngineURL)

	var err error
	select {
	case err = <-grpcErr:
		cancel()
		<-adminErr
		return err
	case err = <-adminErr:
	case <-ctx.Done():
		err = <-adminErr
	}
	stopped := make(chan struct{})
	go func() { s.grpc.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(ops.ShutdownGrace):
		s.grpc.Stop()
	}
	return err
}
