package batcher

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Outcomes of a request, the values of the outcome label.
const (
	OutcomeSuccess  = "success"
	OutcomeRejected = "rejected" // queue full or shutting down: never queued
	OutcomeInvalid  = "invalid"  // refused by the API before queueing (4xx)
	OutcomeCanceled = "canceled" // client went away
	OutcomeTimeout  = "timeout"  // deadline passed
	OutcomeError    = "error"    // the model failed
)

// Metrics are the infergate_engine_* series shared by every model's
// batcher; one set per registry.
type Metrics struct {
	requests *prometheus.CounterVec
	queue    *prometheus.HistogramVec
	compute  *prometheus.HistogramVec
	size     *prometheus.HistogramVec
	depth    *prometheus.GaugeVec
	tokens   *prometheus.CounterVec
}

// NewMetrics registers the engine's batching metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "infergate_engine_requests_total",
			Help: "Inference requests by model and outcome (success, rejected, invalid, canceled, timeout, error).",
		}, []string{"model", "outcome"}),
		queue: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "infergate_engine_queue_duration_seconds",
			Help:    "Time from a request's arrival in the queue until the batch holding its last item started.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 14),
		}, []string{"model"}),
		compute: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "infergate_engine_compute_duration_seconds",
			Help:    "Time the runtime took for one batch.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2.5, 14),
		}, []string{"model"}),
		size: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "infergate_engine_batch_size",
			Help:    "Items (input texts) per batch.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 10),
		}, []string{"model"}),
		depth: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "infergate_engine_queue_depth",
			Help: "Requests waiting in the model's queue.",
		}, []string{"model"}),
		tokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "infergate_engine_tokens_total",
			Help: "Tokens computed (real, not padding).",
		}, []string{"model"}),
	}
	reg.MustRegister(m.requests, m.queue, m.compute, m.size, m.depth, m.tokens)
	return m
}

// Count adds one request with the given outcome; the engine uses it for
// requests refused before they reach a batcher.
func (m *Metrics) Count(model, outcome string) {
	if m != nil {
		m.requests.WithLabelValues(model, outcome).Inc()
	}
}

// modelMetrics are Metrics curried for one model; nil records nothing.
type modelMetrics struct {
	m                    *Metrics
	model                string
	queue, compute, size prometheus.Observer
	depth                prometheus.Gauge
	tokens               prometheus.Counter
}

func (m *Metrics) forModel(model string) *modelMetrics {
	if m == nil {
		return nil
	}
	return &modelMetrics{
		m:       m,
		model:   model,
		queue:   m.queue.WithLabelValues(model),
		compute: m.compute.WithLabelValues(model),
		size:    m.size.WithLabelValues(model),
		depth:   m.depth.WithLabelValues(model),
		tokens:  m.tokens.WithLabelValues(model),
	}
}

// Outcome names the outcome label for an error Do returned.
func Outcome(err error) string {
	switch {
	case err == nil:
		return OutcomeSuccess
	case errors.Is(err, ErrQueueFull), errors.Is(err, ErrClosed):
		return OutcomeRejected
	case errors.Is(err, context.DeadlineExceeded):
		return OutcomeTimeout
	case errors.Is(err, context.Canceled):
		return OutcomeCanceled
	default:
		return OutcomeError
	}
}

func (mm *modelMetrics) outcome(err error) {
	if mm != nil {
		mm.m.Count(mm.model, Outcome(err))
	}
}

func (mm *modelMetrics) setDepth(n int) {
	if mm != nil {
		mm.depth.Set(float64(n))
	}
}

func (mm *modelMetrics) queued(d time.Duration) {
	if mm != nil {
		mm.queue.Observe(d.Seconds())
	}
}

func (mm *modelMetrics) computed(d time.Duration, items, tokens int) {
	if mm != nil {
		mm.compute.Observe(d.Seconds())
		mm.size.Observe(float64(items))
		mm.tokens.Add(float64(tokens))
	}
}
