package xdsproxy

import (
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/infergate/infergate/envoy/harness"
)

// table is one listener's routing state: the route configuration, the
// clusters' endpoints and an ext_proc processor per route. It is built
// whole on every applied change and swapped in atomically.
type table struct {
	routes    *routeConfig
	upstreams map[string]*upstream
	procs     map[*route]*processor
	// noRoute runs the listener-level ext_proc config for requests no
	// route matches; the harness answers them 404 as Envoy's router does.
	noRoute *processor
	// removeHeaders is the listener's early header removal.
	removeHeaders []string
	paths         pathRules
}

// upstream is one cluster's endpoints, picked round robin.
type upstream struct {
	addrs []string
	next  atomic.Uint64
}

// match is Envoy's route selection: the virtual host by Host, then the
// first route of it whose match succeeds.
func (t *table) match(h http.Header, path string) *route {
	vh := t.routes.virtualHost(strings.ToLower(h.Get("Host")))
	if vh == nil {
		return nil
	}
	for _, r := range vh.routes {
		if r.match.Matches(h.Values, path) {
			return r
		}
	}
	return nil
}

// pick chooses a cluster by weight among those with endpoints, then an
// endpoint of it, and returns its base URL; "" when none can be reached.
func (t *table) pick(r *route) string {
	var total uint64
	for _, c := range r.clusters {
		if u := t.upstreams[c.name]; u != nil && len(u.addrs) > 0 {
			total += c.weight
		}
	}
	if total == 0 {
		return ""
	}
	n := rand.Uint64N(total)
	for _, c := range r.clusters {
		u := t.upstreams[c.name]
		if u == nil || len(u.addrs) == 0 {
			continue
		}
		if n < c.weight {
			i := u.next.Add(1) - 1
			return "http://" + u.addrs[i%uint64(len(u.addrs))]
		}
		n -= c.weight
	}
	return ""
}

// virtualHost picks by domain as Envoy does: an exact domain first, then
// the longest suffix wildcard ("*.example.com"), then the longest prefix
// wildcard ("api.*"), then "*". A wildcard never matches an empty part.
func (rc *routeConfig) virtualHost(host string) *virtualHost {
	var best *virtualHost
	bestKind, bestLen := -1, -1
	for _, vh := range rc.vhosts {
		for _, d := range vh.domains {
			kind := -1
			switch {
			case d == "*":
				kind = 0
			case strings.HasPrefix(d, "*"):
				if len(host) > len(d)-1 && strings.HasSuffix(host, d[1:]) {
					kind = 2
				}
			case strings.HasSuffix(d, "*"):
				if len(host) > len(d)-1 && strings.HasPrefix(host, d[:len(d)-1]) {
					kind = 1
				}
			case d == host:
				kind = 3
			}
			if kind > bestKind || kind == bestKind && kind >= 0 && len(d) > bestLen {
				best, bestKind, bestLen = vh, kind, len(d)
			}
		}
	}
	return best
}

// processor is a harness (one ext_proc filter config with one route's
// per-route config) shared by requests and by table builds while its
// config stays the same. A retired processor is closed once its last
// request is done.
type processor struct {
	key     string
	h       *harness.Harness
	handler http.Handler
	// closing counts the close in the proxy's background work, so that
	// Serve returns only after every gRPC connection is closed.
	closing *sync.WaitGroup

	mu      sync.Mutex
	users   int
	retired bool
}

func newProcessor(key string, h *harness.Harness, closing *sync.WaitGroup) *processor {
	return &processor{key: key, h: h, handler: h.Handler(), closing: closing}
}

// acquire counts a request in; false when the processor was retired, and
// the caller must look up the current table again.
func (p *processor) acquire() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.retired {
		return false
	}
	p.users++
	return true
}

func (p *processor) release() {
	p.mu.Lock()
	p.users--
	last := p.retired && p.users == 0
	p.mu.Unlock()
	if last {
		p.close()
	}
}

func (p *processor) retire() {
	p.mu.Lock()
	already := p.retired
	p.retired = true
	idle := p.users == 0
	p.mu.Unlock()
	if !already && idle {
		p.close()
	}
}

// close runs in the background: the harness waits for its streams'
// grace periods.
func (p *processor) close() {
	p.closing.Add(1)
	go func() {
		defer p.closing.Done()
		_ = p.h.Close()
	}()
}
