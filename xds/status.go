package xds

import (
	"context"
	"strings"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the control plane's infergate_xds_* series.
type metrics struct {
	connectedNodes prometheus.Gauge
	pushes         *prometheus.CounterVec
	acks           *prometheus.CounterVec
	nacks          *prometheus.CounterVec
	pushToAck      *prometheus.HistogramVec
	buildSeconds   prometheus.Histogram
	rejections     *prometheus.CounterVec
	nodeStatus     *prometheus.GaugeVec
	configVersion  prometheus.Gauge
	poolEndpoints  *prometheus.GaugeVec
	held           prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		connectedNodes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "infergate_xds_connected_nodes", Help: "Nodes with at least one open xDS stream.",
		}),
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "infergate_xds_pushes_total", Help: "Discovery responses sent, by resource type.",
		}, []string{"type"}),
		acks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "infergate_xds_acks_total", Help: "Responses ACKed by nodes, by resource type.",
		}, []string{"type"}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "infergate_xds_nacks_total", Help: "Responses NACKed by nodes, by resource type.",
		}, []string{"type"}),
		pushToAck: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "infergate_xds_push_to_ack_seconds",
			Help:    "Time from sending a response to its ACK or NACK, by resource type.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"type"}),
		buildSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "infergate_xds_snapshot_build_seconds",
			Help:    "Time to build, validate and publish the snapshots of one change.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		rejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "infergate_xds_config_rejections_total", Help: "Config changes refused by validation, by source (file, admin).",
		}, []string{"source"}),
		nodeStatus: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "infergate_xds_node_status",
			Help: "1 for the current state (pending, acked, nacked) of each connected node and resource type.",
		}, []string{"node", "type", "status"}),
		configVersion: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "infergate_xds_config_version", Help: "Version of the config being served.",
		}),
		poolEndpoints: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "infergate_xds_pool_endpoints",
			Help: "Endpoints each pool has in EDS (config, registered engines and EndpointSlices together); 0 means its routes answer 503.",
		}, []string{"pool"}),
		held: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "infergate_xds_registration_hold",
			Help: "1 while a starting control plane holds its first configuration back for xds.registration_grace.",
		}),
	}
	reg.MustRegister(m.connectedNodes, m.pushes, m.acks, m.nacks, m.pushToAck, m.buildSeconds, m.rejections, m.nodeStatus, m.configVersion, m.poolEndpoints, m.held)
	return m
}

// typeName is the short resource type name used in metrics and the API.
func typeName(url string) string {
	switch url {
	case resourcev3.ListenerType:
		return "listener"
	case resourcev3.RouteType:
		return "route"
	case resourcev3.ClusterType:
		return "cluster"
	case resourcev3.EndpointType:
		return "endpoint"
	}
	return url[strings.LastIndex(url, ".")+1:]
}

// TypeStatus is what one node did with one resource type.
type TypeStatus struct {
	// SentVersion is the last version sent; AckedVersion the last one the
	// node accepted.
	SentVersion  string    `json:"sent_version"`
	SentAt       time.Time `json:"sent_at"`
	AckedVersion string    `json:"acked_version"`
	// NackedVersion and Error are set while the node rejects the last
	// version sent, with the node's own error text.
	NackedVersion string `json:"nacked_version,omitempty"`
	Error         string `json:"error,omitempty"`
	Pushes        int    `json:"pushes"`
	// AnswerSeconds is how long the node took to ACK or NACK the last
	// response it answered.
	AnswerSeconds float64 `json:"answer_seconds"`
}

// NodeStatus is one connected node.
type NodeStatus struct {
	ID        string                 `json:"id"`
	Cluster   string                 `json:"cluster"`
	UserAgent string                 `json:"user_agent"`
	Proxyless bool                   `json:"proxyless"`
	Streams   int                    `json:"streams"`
	Types     map[string]*TypeStatus `json:"types"`
}

type sent struct {
	typeURL string
	version string
	at      time.Time
}

type streamState struct {
	key   string
	node  *corev3.Node
	sent  map[string]sent // by nonce, until answered
	delta bool
}

// tracker implements go-control-plane's server callbacks: it follows every
// stream, matches each ACK or NACK to the response it answers (by nonce),
// and keeps per node and type what was sent, accepted and rejected.
type tracker struct {
	m *metrics
	// firstSeen runs when a node opens its first stream, so that its
	// snapshot exists before its first watch; gone runs when its last
	// stream closes. Both run under mu, so that a node reconnecting while
	// its old stream closes cannot have its new snapshot cleared. (Lock
	// order: tracker, then publisher, then snapshot cache.)
	firstSeen func(key string, node *corev3.Node)
	gone      func(key string)

	mu      sync.Mutex
	streams map[int64]*streamState
	nodes   map[string]*NodeStatus
}

func newTracker(m *metrics) *tracker {
	return &tracker{m: m, streams: map[int64]*streamState{}, nodes: map[string]*NodeStatus{}}
}

// maxUnanswered bounds the nonces remembered per stream: clients answer
// every response, so only a misbehaving one could leave more.
const maxUnanswered = 64

func (t *tracker) OnStreamOpen(context.Context, int64, string) error { return nil }
func (t *tracker) OnDeltaStreamOpen(context.Context, int64, string) error {
	return nil
}
func (t *tracker) OnStreamClosed(id int64, _ *corev3.Node)      { t.closed(id) }
func (t *tracker) OnDeltaStreamClosed(id int64, _ *corev3.Node) { t.closed(id) }
func (t *tracker) OnFetchRequest(context.Context, *discoveryv3.DiscoveryRequest) error {
	return nil
}
func (t *tracker) OnFetchResponse(*discoveryv3.DiscoveryRequest, *discoveryv3.DiscoveryResponse) {}

func (t *tracker) OnStreamRequest(id int64, req *discoveryv3.DiscoveryRequest) error {
	t.request(id, req.GetNode(), false, req.GetTypeUrl(), req.GetResponseNonce(), req.GetErrorDetail().GetMessage(), req.GetErrorDetail() != nil)
	return nil
}

func (t *tracker) OnStreamDeltaRequest(id int64, req *discoveryv3.DeltaDiscoveryRequest) error {
	t.request(id, req.GetNode(), true, req.GetTypeUrl(), req.GetResponseNonce(), req.GetErrorDetail().GetMessage(), req.GetErrorDetail() != nil)
	return nil
}

func (t *tracker) OnStreamResponse(_ context.Context, id int64, req *discoveryv3.DiscoveryRequest, resp *discoveryv3.DiscoveryResponse) {
	t.response(id, resp.GetTypeUrl(), resp.GetNonce(), resp.GetVersionInfo())
}

func (t *tracker) OnStreamDeltaResponse(id int64, req *discoveryv3.DeltaDiscoveryRequest, resp *discoveryv3.DeltaDiscoveryResponse) {
	t.response(id, resp.GetTypeUrl(), resp.GetNonce(), resp.GetSystemVersionInfo())
}

func (t *tracker) request(id int64, node *corev3.Node, delta bool, typeURL, nonce, errText string, nack bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	st, ok := t.streams[id]
	var newNode *corev3.Node
	if !ok {
		if node == nil {
			// Only the first request must carry the node; a stream that
			// starts without one is answered by the server with an error.
			return
		}
		st = &streamState{key: nodeKey(node), node: node, sent: map[string]sent{}, delta: delta}
		t.streams[id] = st
		ns, ok := t.nodes[st.key]
		if !ok {
			ns = &NodeStatus{ID: node.GetId(), Cluster: node.GetCluster(), UserAgent: node.GetUserAgentName(),
				Proxyless: isProxyless(node), Types: map[string]*TypeStatus{}}
			t.nodes[st.key] = ns
			t.m.connectedNodes.Inc()
			newNode = node
		}
		ns.Streams++
	}
	if nonce != "" {
		if s, ok := st.sent[nonce]; ok && s.typeURL == typeURL {
			delete(st.sent, nonce)
			ts := t.typeStatus(st.key, typeURL)
			name := typeName(typeURL)
			ts.AnswerSeconds = time.Since(s.at).Seconds()
			t.m.pushToAck.WithLabelValues(name).Observe(ts.AnswerSeconds)
			if nack {
				ts.NackedVersion, ts.Error = s.version, errText
				t.m.nacks.WithLabelValues(name).Inc()
			} else {
				ts.AckedVersion, ts.NackedVersion, ts.Error = s.version, "", ""
				t.m.acks.WithLabelValues(name).Inc()
			}
			t.setStatusMetric(st.key, typeURL, ts)
		}
	}
	if newNode != nil && t.firstSeen != nil {
		t.firstSeen(st.key, newNode)
	}
}

func (t *tracker) response(id int64, typeURL, nonce, version string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	st, ok := t.streams[id]
	if !ok {
		return
	}
	if len(st.sent) >= maxUnanswered {
		for n := range st.sent {
			delete(st.sent, n)
			break
		}
	}
	now := time.Now()
	st.sent[nonce] = sent{typeURL: typeURL, version: version, at: now}
	ts := t.typeStatus(st.key, typeURL)
	ts.SentVersion, ts.SentAt = version, now
	ts.Pushes++
	t.m.pushes.WithLabelValues(typeName(typeURL)).Inc()
	t.setStatusMetric(st.key, typeURL, ts)
}

func (t *tracker) closed(id int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	st, ok := t.streams[id]
	if !ok {
		return
	}
	delete(t.streams, id)
	ns := t.nodes[st.key]
	ns.Streams--
	last := ns.Streams == 0
	if last {
		delete(t.nodes, st.key)
		t.m.connectedNodes.Dec()
		for typeURL := range ns.Types {
			for _, s := range []string{"pending", "acked", "nacked"} {
				t.m.nodeStatus.DeleteLabelValues(ns.ID, typeName(typeURL), s)
			}
		}
	}
	if last && t.gone != nil {
		t.gone(st.key)
	}
}

// typeStatus must be called with t.mu held.
func (t *tracker) typeStatus(key, typeURL string) *TypeStatus {
	ns := t.nodes[key]
	ts, ok := ns.Types[typeURL]
	if !ok {
		ts = &TypeStatus{}
		ns.Types[typeURL] = ts
	}
	return ts
}

func (t *tracker) setStatusMetric(key, typeURL string, ts *TypeStatus) {
	status := "pending"
	switch {
	case ts.NackedVersion != "":
		status = "nacked"
	case ts.AckedVersion == ts.SentVersion:
		status = "acked"
	}
	id, name := t.nodes[key].ID, typeName(typeURL)
	for _, s := range []string{"pending", "acked", "nacked"} {
		v := 0.0
		if s == status {
			v = 1
		}
		t.m.nodeStatus.WithLabelValues(id, name, s).Set(v)
	}
}

// nacked returns the version the node rejected last for the type, or "".
func (t *tracker) nacked(key, typeURL string) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if ns, ok := t.nodes[key]; ok {
		if ts, ok := ns.Types[typeURL]; ok {
			return ts.NackedVersion
		}
	}
	return ""
}

// snapshot copies the status of every connected node, keyed by node key.
func (t *tracker) snapshot() map[string]NodeStatus {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]NodeStatus, len(t.nodes))
	for key, ns := range t.nodes {
		c := *ns
		c.Types = make(map[string]*TypeStatus, len(ns.Types))
		for typeURL, ts := range ns.Types {
			tc := *ts
			c.Types[typeName(typeURL)] = &tc
		}
		out[key] = c
	}
	return out
}
