// Package engine is infergate's inference server: the OpenAI
// /v1/embeddings and KServe v2 REST APIs in front of one dynamic batcher
// (engine/batcher) per configured model, each running an encoder from
// engine/model (USE-Lite or an ONNX model on GoMLX).
//
// The listener is bound first and models load in the background, so
// /healthz answers while they load; a model is ready (and /readyz, the v2
// ready endpoints and inference answer) once it has loaded and run one
// warm-up batch through its batcher.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gomlx/gomlx/backends"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/infergate/infergate/config"
	"github.com/infergate/infergate/engine/batcher"
	"github.com/infergate/infergate/engine/embedcache"
	"github.com/infergate/infergate/engine/gpu"
	"github.com/infergate/infergate/engine/model"
	"github.com/infergate/infergate/engine/model/onnxenc"
	"github.com/infergate/infergate/engine/model/uselite"
	"github.com/infergate/infergate/internal/ops"
	"github.com/infergate/infergate/policy"
)

// PriorityHeader carries a request's priority level (0 is the lowest);
// the ext_proc server or the client sets it.
const PriorityHeader = policy.PriorityHeader

// loadFunc turns a model's config into a running encoder.
type loadFunc func(m config.EngineModel) (model.Encoder, error)

// Server is the engine; it implements ops.Service.
type Server struct {
	cfg     config.Engine
	log     *slog.Logger
	reg     *prometheus.Registry
	metrics *batcher.Metrics
	// reuse answers inputs seen before; nil when turned off.
	reuse  *embedcache.Cache
	load   loadFunc
	models map[string]*served
	order  []*served // config order, for /v1/models

	mux      *http.ServeMux
	srv      *http.Server
	ln       net.Listener
	stopping atomic.Bool

	backendOnce sync.Once
	backend     backends.Backend
	backendErr  error

	// gpu exports NVML telemetry on /metrics; nil for engines built by
	// tests around a test encoder.
	gpu *gpu.Telemetry
}

// served is one model: its config and, once loaded, encoder and batcher.
type served struct {
	cfg config.EngineModel
	// enc and batch are written once before ready is set.
	enc   model.Encoder
	batch *batcher.Batcher
	ready atomic.Bool
	// failed holds the load error, if loading failed.
	failed atomic.Pointer[error]
}

// New builds the engine for cfg (already defaulted and validated by the
// config package). Nothing is bound or loaded until Listen and Serve.
func New(cfg config.Engine, log *slog.Logger) (*Server, error) {
	s, err := newServer(cfg, log, nil)
	if err != nil {
		return nil, err
	}
	s.load = s.loadEncoder
	// GPU gauges where NVML initialises; elsewhere one log line and none.
	s.gpu = gpu.Open(log)
	if err := s.gpu.Register(s.reg); err != nil {
		s.gpu.Close()
		return nil, err
	}
	return s, nil
}

func newServer(cfg config.Engine, log *slog.Logger, load loadFunc) (*Server, error) {
	s := &Server{
		cfg:    cfg,
		log:    log,
		reg:    ops.NewRegistry(),
		load:   load,
		models: map[string]*served{},
		mux:    http.NewServeMux(),
	}
	s.metrics = batcher.NewMetrics(s.reg)
	if cfg.EmbeddingCacheBytes != nil && *cfg.EmbeddingCacheBytes > 0 {
		c, err := embedcache.New(*cfg.EmbeddingCacheBytes, s.reg)
		if err != nil {
			return nil, err
		}
		s.reuse = c
	}
	for _, m := range cfg.Models {
		sv := &served{cfg: m}
		s.models[m.Name] = sv
		s.order = append(s.order, sv)
	}
	s.routes()
	s.srv = &http.Server{
		Handler:           s.mux,
		ReadHeaderTimeout: 10 * time.Second,
		// A client that stalls sending its body holds a connection (and,
		// at shutdown, the grace) for no longer than this.
		ReadTimeout: time.Minute,
		IdleTimeout: 2 * time.Minute,
		ErrorLog:    slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	return s, nil
}

// Name implements ops.Service.
func (s *Server) Name() string { return "engine" }

// Registry is the engine's Prometheus registry (served on /metrics).
func (s *Server) Registry() *prometheus.Registry { return s.reg }

// Addr is the bound address, once Listen succeeded.
func (s *Server) Addr() string {
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// Listen implements ops.Service.
func (s *Server) Listen() error {
	ln, err := ops.Listen("engine", s.cfg.Listen)
	if err != nil {
		return err
	}
	s.ln = ln
	return nil
}

// Serve implements ops.Service: it loads the models in the background
// while serving HTTP. When ctx ends it stops accepting, lets in-flight
// requests and every queued batch finish, and frees the models. A model
// that fails to load stops the engine with that error.
func (s *Server) Serve(ctx context.Context) error {
	if s.ln == nil {
		if err := s.Listen(); err != nil {
			return err
		}
	}
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	var (
		loadErr error
		loaded  = make(chan struct{})
	)
	go func() {
		defer close(loaded)
		if loadErr = s.loadAll(ctx); loadErr != nil && ctx.Err() == nil {
			stop()
		}
	}()
	// Readiness drops as soon as shutdown starts, while requests drain.
	context.AfterFunc(ctx, func() { s.stopping.Store(true) })
	s.log.Info("engine listening", "addr", s.Addr(), "models", len(s.order))
	err := ops.ServeHTTP(ctx, s.srv, s.ln, s.shutdownGrace())
	s.stopping.Store(true)
	<-loaded
	s.shutdownModels()
	if s.gpu != nil {
		s.gpu.Close()
	}
	if loadErr != nil && !errors.Is(loadErr, context.Canceled) {
		return loadErr
	}
	return err
}

// shutdownGrace lets every accepted request end on its own: answered, or
// 504 at its deadline (the longest model timeout), with time to write it.
// The batchers keep running meanwhile, so the queues drain.
func (s *Server) shutdownGrace() time.Duration {
	grace := ops.ShutdownGrace
	for _, sv := range s.order {
		grace = max(grace, sv.cfg.Timeout+5*time.Second)
	}
	return grace
}

// loadAll loads every model, one after the other, each ready as soon as
// its warm-up batch ran.
func (s *Server) loadAll(ctx context.Context) error {
	for _, sv := range s.order {
		if err := s.loadModel(ctx, sv); err != nil {
			sv.failed.Store(&err)
			s.log.Error("model failed to load", "model", sv.cfg.Name, "error", err)
			return err
		}
	}
	return nil
}

// Warmer is implemented by encoders that can compile the shape buckets of
// batches of up to maxBatch sequences of up to maxTokens up front, so that
// no request waits for a compile (seconds per bucket on XLA).
type Warmer interface {
	WarmupBatches(ctx context.Context, maxBatch, maxTokens int) error
}

// Both encoders compile their buckets at load; a changed signature must
// not silently skip that.
var (
	_ Warmer = (*uselite.Encoder)(nil)
	_ Warmer = (*onnxenc.Encoder)(nil)
)

func (s *Server) loadModel(ctx context.Context, sv *served) error {
	m := sv.cfg
	start := time.Now()
	s.log.Info("loading model", "model", m.Name, "kind", m.Kind, "path", m.Path)
	enc, err := s.load(m)
	if err != nil {
		return fmt.Errorf("model %s: %w", m.Name, err)
	}
	sv.enc = enc
	if w, ok := enc.(Warmer); ok {
		if err := w.WarmupBatches(ctx, m.MaxBatchSize, enc.MaxTokens()); err != nil {
			return fmt.Errorf("model %s: warm-up: %w", m.Name, err)
		}
	}
	b, err := batcher.New(batcher.Config{
		Model:          m.Name,
		MaxBatchSize:   m.MaxBatchSize,
		MaxBatchTokens: m.MaxBatchTokens,
		MaxQueueDelay:  *m.MaxQueueDelay,
		QueueSize:      m.QueueSize,
		Workers:        m.Workers,
		PriorityLevels: m.PriorityLevels,

		PreferredBatchSizes: m.PreferredBatchSizes,
	}, enc.Embed, s.metrics)
	if err != nil {
		return err
	}
	sv.batch = b
	// The warm-up batch takes the same path as a request, but is not
	// counted as one.
	ids, err := enc.Tokenize("infergate warm-up")
	if err != nil {
		return fmt.Errorf("model %s: warm-up: %w", m.Name, err)
	}
	if err := b.Warm(ctx, [][]int32{ids}); err != nil {
		return fmt.Errorf("model %s: warm-up batch: %w", m.Name, err)
	}
	sv.ready.Store(true)
	s.log.Info("model ready", "model", m.Name, "dim", enc.Dim(), "max_tokens", enc.MaxTokens(), "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// shutdownModels drains every batcher, then frees the encoders and the
// backend. HTTP has stopped by now, so no new request can arrive.
func (s *Server) shutdownModels() {
	ctx, cancel := context.WithTimeout(context.Background(), ops.ShutdownGrace)
	defer cancel()
	for _, sv := range s.order {
		sv.ready.Store(false)
		if sv.batch != nil {
			if err := sv.batch.Close(ctx); err != nil {
				s.log.Warn("batcher drain cut short", "model", sv.cfg.Name, "error", err)
			}
		}
		if sv.enc != nil {
			if err := sv.enc.Close(); err != nil {
				s.log.Warn("closing model", "model", sv.cfg.Name, "error", err)
			}
		}
	}
	if s.backend != nil {
		s.backend.Finalize()
	}
}

// ready is nil when every model serves.
func (s *Server) ready() error {
	if s.stopping.Load() {
		return errors.New("shutting down")
	}
	var loading []string
	for _, sv := range s.order {
		if err := sv.notReady(); err != nil {
			loading = append(loading, err.Error())
		}
	}
	if len(loading) > 0 {
		return errors.New(strings.Join(loading, "; "))
	}
	return nil
}

func (sv *served) notReady() error {
	if sv.ready.Load() {
		return nil
	}
	if p := sv.failed.Load(); p != nil {
		return fmt.Errorf("model %s failed to load: %v", sv.cfg.Name, *p)
	}
	return fmt.Errorf("model %s is loading", sv.cfg.Name)
}

// loadEncoder is the production loader: USE-Lite or ONNX on the
// configured GoMLX backend, shared by all models.
func (s *Server) loadEncoder(m config.EngineModel) (model.Encoder, error) {
	s.backendOnce.Do(func() { s.backend, s.backendErr = model.NewBackend(s.cfg.Backend) })
	if s.backendErr != nil {
		return nil, s.backendErr
	}
	return LoadEncoder(m, s.backend)
}

// LoadEncoder loads the model m describes on backend, as the engine does
// (`infergate bench` uses it to measure the runtime alone).
func LoadEncoder(m config.EngineModel, backend backends.Backend) (model.Encoder, error) {
	switch m.Kind {
	case "use-lite":
		return uselite.Load(m.Path, backend)
	case "onnx":
		return onnxenc.Load(onnxenc.Options{
			ModelPath:         m.Path,
			TokenizerPath:     m.ONNX.Tokenizer,
			InputIDsName:      m.ONNX.InputIDs,
			AttentionMaskName: m.ONNX.AttentionMask,
			TokenTypeIDsName:  m.ONNX.TokenTypeIDs,
			OutputName:        m.ONNX.Output,
			Pooling:           m.ONNX.Pooling,
			Normalize:         m.ONNX.Normalize,
			MaxTokens:         m.ONNX.MaxTokens,
		}, backend)
	}
	return nil, fmt.Errorf("unknown model kind %q", m.Kind)
}
