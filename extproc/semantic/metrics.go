package semantic

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	lookups        *prometheus.CounterVec
	stores         *prometheus.CounterVec
	refusals       *prometheus.CounterVec
	evictions      *prometheus.CounterVec
	lookupSeconds  prometheus.Histogram
	embedSeconds   prometheus.Histogram
	bestSimilarity prometheus.Histogram
	entries        prometheus.Gauge
	bytes          prometheus.Gauge
	shared         *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		lookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "infergate_extproc_semantic_lookups_total",
			Help: "Semantic cache lookups by outcome: hit, miss, refused (guard), empty (nothing stored in scope), uncacheable, embed_failed, saturated.",
		}, []string{"outcome"}),
		stores: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "infergate_extproc_semantic_stores_total",
			Help: "Responses offered to the semantic cache by outcome: stored, uncacheable, embed_failed, saturated, too_large.",
		}, []string{"outcome"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "infergate_extproc_semantic_guard_refusals_total",
			Help: "Lookups whose candidates above the threshold the guard refused, by the reason for the best one.",
		}, []string{"reason"}),
		evictions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "infergate_extproc_semantic_evictions_total",
			Help: "Entries removed before being replaced, by reason: expired, memory.",
		}, []string{"reason"}),
		lookupSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "infergate_extproc_semantic_lookup_seconds",
			Help:    "Time of one semantic lookup, embedding included.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 14),
		}),
		embedSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "infergate_extproc_semantic_embed_seconds",
			Help:    "Time of the embedding call of a lookup or store.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 12),
		}),
		bestSimilarity: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "infergate_extproc_semantic_best_similarity",
			Help:    "Cosine similarity of the nearest stored question, per lookup that had one (for tuning thresholds).",
			Buckets: []float64{0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.92, 0.94, 0.96, 0.98, 1},
		}),
		entries: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "infergate_extproc_semantic_entries",
			Help: "Entries held by this replica.",
		}),
		bytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "infergate_extproc_semantic_bytes",
			Help: "Memory the entries account for, against the memory bound.",
		}),
		shared: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "infergate_extproc_semantic_shared_total",
			Help: "Entries exchanged through Redis: published, applied (from other replicas), failed (Redis errors).",
		}, []string{"op"}),
	}
	for _, c := range []prometheus.Collector{m.lookups, m.stores, m.refusals, m.evictions, m.lookupSeconds, m.embedSeconds, m.bestSimilarity, m.entries, m.bytes, m.shared} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
