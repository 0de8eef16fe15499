package extproc

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/infergate/infergate/extproc/cache"
)

// metrics are the infergate_extproc_* series.
type metrics struct {
	lookups        *prometheus.CounterVec
	lookupSeconds  *prometheus.HistogramVec
	messageSeconds *prometheus.HistogramVec
	stores         *prometheus.CounterVec
	evictions      *prometheus.CounterVec
	purges         *prometheus.CounterVec
	purgedEntries  prometheus.Counter
	rateLimit      *prometheus.CounterVec
	streamErrors   *prometheus.CounterVec
	redisErrors    *prometheus.CounterVec
	streams        prometheus.Gauge
	followers      prometheus.Gauge
}

// microseconds-to-seconds buckets: the ext_proc work itself is tens of
// microseconds; a follower's wait or a Redis stall reaches into seconds.
var latencyBuckets = []float64{10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 100e-3, 250e-3, 1, 5}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		lookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "infergate_extproc_cache_lookups_total",
			Help: "Exact-cache lookups by route and result (hit, miss, bypass, collapsed).",
		}, []string{"route", "result"}),
		lookupSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "infergate_extproc_cache_lookup_duration_seconds",
			Help:    "Time to look a request up in the exact cache, by result.",
			Buckets: latencyBuckets,
		}, []string{"result"}),
		messageSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "infergate_extproc_message_duration_seconds",
			Help:    "Time to process one ext_proc message, by message kind.",
			Buckets: latencyBuckets,
		}, []string{"message"}),
		stores: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "infergate_extproc_cache_store_decisions_total",
			Help: "What happened to each cacheable response: stored, or why not.",
		}, []string{"route", "decision"}),
		evictions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "infergate_extproc_cache_evictions_total",
			Help: "Entries the in-process cache dropped by itself, by reason (expired, no_space).",
		}, []string{"reason"}),
		purges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "infergate_extproc_cache_purges_total",
			Help: "Purge API calls by selector (key, tenant, route, model, all).",
		}, []string{"by"}),
		purgedEntries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "infergate_extproc_cache_purged_entries_total",
			Help: "Entries deleted by purges, in-process and in Redis.",
		}),
		rateLimit: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "infergate_extproc_ratelimit_decisions_total",
			Help: "Rate-limit decisions by route, limit (requests, tokens) and decision (allowed, denied, unavailable).",
		}, []string{"route", "limit", "decision"}),
		streamErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "infergate_extproc_stream_errors_total",
			Help: "ext_proc streams ended with an error, by kind.",
		}, []string{"kind"}),
		redisErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "infergate_extproc_redis_errors_total",
			Help: "Failed Redis calls by operation; each one fell back (or failed closed).",
		}, []string{"op"}),
		streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "infergate_extproc_streams_active",
			Help: "ext_proc streams (HTTP requests) in progress.",
		}),
		followers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "infergate_extproc_collapse_waiting",
			Help: "Requests waiting for an identical request in flight (collapsed followers).",
		}),
	}
	reg.MustRegister(m.followers, m.lookups, m.lookupSeconds, m.messageSeconds, m.stores, m.evictions, m.purges,
		m.purgedEntries, m.rateLimit, m.streamErrors, m.redisErrors, m.streams)
	return m
}

// registerCacheSize adds the gauges read from the in-process cache.
func registerCacheSize(reg prometheus.Registerer, local *cache.Local) {
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "infergate_extproc_cache_entries",
			Help: "Entries held by the in-process cache.",
		}, func() float64 { return float64(local.Len()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "infergate_extproc_cache_bytes",
			Help: "Memory the in-process cache has allocated for entries.",
		}, func() float64 { return float64(local.Bytes()) }),
	)
}
