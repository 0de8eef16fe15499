package xds

import (
	"net/netip"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/infergate/infergate/config"
)

// registration is one engine that registered itself into a pool.
type registration struct {
	Pool      string    `json:"pool"`
	Address   string    `json:"address"`
	ExpiresAt time.Time `json:"expires_at"`
}

// registry holds the endpoints engines registered over the admin API. An
// endpoint whose heartbeat stops is dropped once its TTL has passed.
type registry struct {
	mu    sync.Mutex
	pools map[string]map[string]lease // pool → address → lease
}

type lease struct {
	ttl     time.Duration
	expires time.Time
}

func newRegistry() *registry { return &registry{pools: map[string]map[string]lease{}} }

// put registers or refreshes an endpoint for ttl from now; added reports
// whether the set of endpoints changed (a known endpoint's does not).
func (r *registry) put(pool, addr string, ttl time.Duration, now time.Time) (expires time.Time, added bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p, ok := r.pools[pool]
	if !ok {
		p = map[string]lease{}
		r.pools[pool] = p
	}
	_, known := p[addr]
	p[addr] = lease{ttl: ttl, expires: now.Add(ttl)}
	return now.Add(ttl), !known
}

// refresh extends a known endpoint by its TTL; false if it is not
// registered (any more).
func (r *registry) refresh(pool, addr string, now time.Time) (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	l, ok := r.pools[pool][addr]
	if !ok {
		return time.Time{}, false
	}
	l.expires = now.Add(l.ttl)
	r.pools[pool][addr] = l
	return l.expires, true
}

// remove deregisters an endpoint; false if it was not registered.
func (r *registry) remove(pool, addr string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.pools[pool][addr]; !ok {
		return false
	}
	delete(r.pools[pool], addr)
	if len(r.pools[pool]) == 0 {
		delete(r.pools, pool)
	}
	return true
}

// expire drops endpoints whose expiry is before now and returns them.
func (r *registry) expire(now time.Time) []registration {
	r.mu.Lock()
	defer r.mu.Unlock()
	var gone []registration
	for pool, p := range r.pools {
		for addr, l := range p {
			if l.expires.Before(now) {
				delete(p, addr)
				gone = append(gone, registration{Pool: pool, Address: addr, ExpiresAt: l.expires})
			}
		}
		if len(p) == 0 {
			delete(r.pools, pool)
		}
	}
	return gone
}

// dropPoolsExcept deregisters the endpoints of every pool not in keep and
// returns them: an engine registered in a removed pool must register
// again, and is refused until the pool exists, instead of reappearing
// when a pool of that name is added back.
func (r *registry) dropPoolsExcept(keep []config.XDSPool) []registration {
	r.mu.Lock()
	defer r.mu.Unlock()
	var gone []registration
	for pool, p := range r.pools {
		if slices.ContainsFunc(keep, func(k config.XDSPool) bool { return k.Name == pool }) {
			continue
		}
		for addr, l := range p {
			gone = append(gone, registration{Pool: pool, Address: addr, ExpiresAt: l.expires})
		}
		delete(r.pools, pool)
	}
	return gone
}

// addresses returns each pool's registered addresses, sorted.
func (r *registry) addresses() map[string][]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string][]string, len(r.pools))
	for pool, p := range r.pools {
		for addr := range p {
			out[pool] = append(out[pool], addr)
		}
		sort.Strings(out[pool])
	}
	return out
}

// list returns every registration, ordered by pool and address.
func (r *registry) list() []registration {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := []registration{}
	for pool, p := range r.pools {
		for addr, l := range p {
			out = append(out, registration{Pool: pool, Address: addr, ExpiresAt: l.expires})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Pool != out[j].Pool {
			return out[i].Pool < out[j].Pool
		}
		return out[i].Address < out[j].Address
	})
	return out
}

// canonicalEndpoint accepts what EDS can carry, an IP address and a port,
// and spells it one way ("127.0.0.1:08080" is "127.0.0.1:8080"), so that
// one engine is one endpoint however it was written: grpc-go refuses a
// load assignment that names an address twice.
func canonicalEndpoint(addr string) (string, bool) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || ap.Port() == 0 || ap.Addr().Zone() != "" {
		return "", false
	}
	return ap.String(), true
}
