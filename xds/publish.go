package xds

import (
	"context"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
)

// isProxyless tells a proxyless gRPC client from an Envoy: Envoy names
// itself "envoy" in user_agent_name. Proxyless nodes get each listener in
// its API-listener form, which Envoy cannot take over LDS.
func isProxyless(n *corev3.Node) bool {
	ua := n.GetUserAgentName()
	return ua != "" && ua != "envoy"
}

// nodeKey is the snapshot cache key: an Envoy and a proxyless client that
// share a node id still get the resources of their kind.
func nodeKey(n *corev3.Node) string {
	if isProxyless(n) {
		return "grpc/" + n.GetId()
	}
	return "envoy/" + n.GetId()
}

type nodeKeyHash struct{}

func (nodeKeyHash) ID(n *corev3.Node) string { return nodeKey(n) }

var resourceTypes = []string{resourcev3.ListenerType, resourcev3.RouteType, resourcev3.ClusterType, resourcev3.EndpointType}

// typeVersion remembers, per node and type, the content hash behind the
// version last set, so that a type whose content did not change keeps its
// version and is not pushed again.
type typeVersion struct {
	hash    uint64
	version string
}

// publisher cuts a build into per-node snapshots: each node gets the
// listeners meant for it and only the routes, clusters and endpoints
// those listeners reference.
type publisher struct {
	cache cachev3.SnapshotCache

	// boot sets this process's versions apart from an earlier one's: a
	// restarted control plane counts generations from 1 again, and an
	// Envoy that holds, say, endpoints version "2" from before would
	// take a new "2" for what it has and never ask for it.
	boot string

	mu         sync.Mutex
	res        *resources
	generation int
	nodes      map[string]*publishedNode
	// held keeps every snapshot back (see Server.holdForRegistrations):
	// builds are still made current, and release sets them all.
	held bool
}

type publishedNode struct {
	node     *corev3.Node
	versions map[string]typeVersion
	// last is the snapshot set last, whose endpoints a cluster change
	// keeps for one step (see setLocked).
	last *cachev3.Snapshot
}

func newPublisher(c cachev3.SnapshotCache) *publisher {
	return &publisher{cache: c, nodes: map[string]*publishedNode{}, boot: strconv.FormatInt(time.Now().UnixNano(), 36)}
}

// publish makes r current and updates every known node's snapshot.
func (p *publisher) publish(r *resources) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.res = r
	p.generation++
	if p.held {
		return
	}
	for key, n := range p.nodes {
		p.setLocked(key, n)
	}
}

// release ends the hold: every connected node gets the current build.
func (p *publisher) release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.held {
		return
	}
	p.held = false
	if p.res != nil {
		for key, n := range p.nodes {
			p.setLocked(key, n)
		}
	}
}

// currentVersion is the version the last publish gave what it changed.
func (p *publisher) currentVersion() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.version(p.generation)
}

func (p *publisher) version(generation int) string {
	return strconv.Itoa(generation) + "." + p.boot
}

// addNode gives a newly connected node its snapshot.
func (p *publisher) addNode(key string, node *corev3.Node) {
	p.mu.Lock()
	defer p.mu.Unlock()
	n, ok := p.nodes[key]
	if !ok {
		n = &publishedNode{node: node, versions: map[string]typeVersion{}}
		p.nodes[key] = n
	}
	if p.res != nil && !p.held {
		p.setLocked(key, n)
	}
}

// removeNode forgets a node whose last stream closed.
func (p *publisher) removeNode(key string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.nodes, key)
	p.cache.ClearSnapshot(key)
}

func (p *publisher) setLocked(key string, n *publishedNode) {
	byType := p.res.forNode(n.node)
	snap := &cachev3.Snapshot{}
	clustersChanged := false
	for _, typeURL := range resourceTypes { // clusters before endpoints
		items := byType[typeURL]
		h := fnv.New64a()
		var buf [8]byte
		for _, it := range items {
			h.Write([]byte(cachev3.GetResourceName(it)))
			binary.LittleEndian.PutUint64(buf[:], p.res.hashes[it.(proto.Message)])
			h.Write(buf[:])
		}
		sum := h.Sum64()
		tv, ok := n.versions[typeURL]
		// An updated cluster stays warming until Envoy receives a
		// ClusterLoadAssignment for it, and Envoy's EDS request after the
		// update repeats the version it holds: new clusters always come
		// with a new EDS version, even if no endpoint moved.
		if !ok || tv.hash != sum || (typeURL == resourcev3.EndpointType && clustersChanged) {
			tv = typeVersion{hash: sum, version: p.version(p.generation)}
			n.versions[typeURL] = tv
			clustersChanged = clustersChanged || (ok && typeURL == resourcev3.ClusterType)
		}
		snap.Resources[cachev3.GetResponseType(typeURL)] = cachev3.NewResources(tv.version, items)
	}
	// The snapshot is consistent by construction (check passed on the
	// whole build) and SetSnapshot only fails for an unknown type.
	if clustersChanged && n.last != nil {
		// Make before break: Envoy must get the changed clusters before
		// their endpoints, or it applies the endpoints to the old
		// clusters and the updated ones wait for EDS. The cache answers
		// the open watches of one snapshot in no set order, so the
		// clusters go out first with the endpoints Envoy has, and the
		// ordered ADS stream sends the new endpoints after them.
		first := *snap
		first.Resources[types.Endpoint] = n.last.Resources[types.Endpoint]
		_ = p.cache.SetSnapshot(context.Background(), key, &first)
	}
	_ = p.cache.SetSnapshot(context.Background(), key, snap)
	n.last = snap
}

// forNode selects the resources node gets, in a stable order.
func (r *resources) forNode(node *corev3.Node) map[string][]types.Resource {
	proxyless := isProxyless(node)
	out := map[string][]types.Resource{}
	clusters := map[string]bool{}
	for _, name := range r.order {
		if sel := r.listenerNodes[name]; len(sel) > 0 && !slices.Contains(sel, node.GetId()) && !slices.Contains(sel, node.GetCluster()) {
			continue
		}
		if proxyless {
			out[resourcev3.ListenerType] = append(out[resourcev3.ListenerType], r.apiListeners[name])
		} else {
			out[resourcev3.ListenerType] = append(out[resourcev3.ListenerType], r.envoyListeners[name])
		}
		out[resourcev3.RouteType] = append(out[resourcev3.RouteType], r.routes[name])
		for _, c := range r.listenerClusters[name] {
			clusters[c] = true
		}
	}
	if !proxyless && len(out[resourcev3.ListenerType]) > 0 {
		clusters[ExtProcCluster] = true
	}
	for _, c := range sortedKeys(clusters) {
		out[resourcev3.ClusterType] = append(out[resourcev3.ClusterType], r.clusters[c])
		if e, ok := r.endpoints[c]; ok {
			out[resourcev3.EndpointType] = append(out[resourcev3.EndpointType], e)
		}
	}
	return out
}

// hashMessage hashes m's deterministic encoding. Encoding fails only for
// a string that is not UTF-8, which check reports as a refusal.
func hashMessage(m proto.Message) (uint64, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return 0, fmt.Errorf("cannot encode: %w", err)
	}
	h := fnv.New64a()
	h.Write(b)
	return h.Sum64(), nil
}

// nackGuard stops NACK storms. go-control-plane's snapshot cache answers a
// request whose version differs from the snapshot's at once, and a NACK
// carries the last version the node accepted, so a rejected version would
// be re-sent immediately, forever. When the node has NACKed exactly the
// version the snapshot holds, the guard presents the request as already
// up to date: the watch then waits until the config changes.
type nackGuard struct {
	cachev3.SnapshotCache
	tracker *tracker
}

func (g *nackGuard) CreateWatch(req *cachev3.Request, sub cachev3.Subscription, ch chan cachev3.Response) (func(), error) {
	key := nodeKey(req.GetNode())
	typeURL := req.GetTypeUrl()
	if v := g.tracker.nacked(key, typeURL); v != "" && v != req.GetVersionInfo() {
		if snap, err := g.GetSnapshot(key); err == nil && snap.GetVersion(typeURL) == v {
			held := proto.Clone(req).(*discoveryv3.DiscoveryRequest)
			held.VersionInfo = v
			req = held
		}
	}
	return g.SnapshotCache.CreateWatch(req, sub, ch)
}
