package xds

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"go.yaml.in/yaml/v3"

	"github.com/infergate/infergate/config"
	"github.com/infergate/infergate/internal/ops"
	"github.com/infergate/infergate/policy"
)

// routingDoc is the part of the xds section the admin API reads and
// replaces; it has the same field names as infergate.yaml.
type routingDoc struct {
	ExtProc   config.XDSExtProc        `yaml:"ext_proc"`
	Listeners []config.XDSListener     `yaml:"listeners"`
	Policies  map[string]policy.Policy `yaml:"policies"`
	Pools     []config.XDSPool         `yaml:"pools"`
}

func docOf(x config.XDS) routingDoc {
	return routingDoc{ExtProc: x.ExtProc, Listeners: x.Listeners, Policies: x.Policies, Pools: x.Pools}
}

func (d routingDoc) into(x config.XDS) config.XDS {
	x.ExtProc, x.Listeners, x.Policies, x.Pools = d.ExtProc, d.Listeners, d.Policies, d.Pools
	return x
}

// maxBody bounds admin request bodies.
const maxBody = 8 << 20

func (s *Server) routes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/config", s.getConfig)
	mux.HandleFunc("PUT /v1/config", s.putConfig)
	mux.HandleFunc("GET /v1/versions", s.getVersions)
	mux.HandleFunc("GET /v1/versions/{version}", s.getVersion)
	mux.HandleFunc("POST /v1/rollback/{version}", s.rollback)
	mux.HandleFunc("PUT /v1/listeners/{listener}/routes/{route}", s.putRoute)
	mux.HandleFunc("DELETE /v1/listeners/{listener}/routes/{route}", s.deleteRoute)
	mux.HandleFunc("PUT /v1/policies/{name}", s.putPolicy)
	mux.HandleFunc("DELETE /v1/policies/{name}", s.deletePolicy)
	mux.HandleFunc("GET /v1/nodes", s.getNodes)
	mux.HandleFunc("GET /v1/resources", s.getResources)
	mux.HandleFunc("GET /v1/endpoints", s.getEndpoints)
	mux.HandleFunc("POST /v1/pools/{pool}/endpoints", s.registerEndpoint)
	mux.HandleFunc("POST /v1/pools/{pool}/endpoints/{address}/heartbeat", s.heartbeat)
	mux.HandleFunc("DELETE /v1/pools/{pool}/endpoints/{address}", s.deregisterEndpoint)
}

// decodeBody reads a JSON (or YAML) body strictly: an unknown field or a
// wrong type is an error naming its line.
func decodeBody(r *http.Request, v any) error {
	data, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		return fmt.Errorf("reading the body: %w", err)
	}
	if len(data) > maxBody {
		return fmt.Errorf("body is over %d bytes", maxBody)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return errors.New("body is empty")
		}
		var te *yaml.TypeError
		if errors.As(err, &te) {
			return fmt.Errorf("body: %s", te.Errors[0])
		}
		return fmt.Errorf("body: %v", err)
	}
	return nil
}

// writeDoc writes v as JSON with the YAML field names and durations as
// "30s", the way infergate.yaml spells them.
func writeDoc(w http.ResponseWriter, status int, v any) {
	y, err := yaml.Marshal(v)
	if err != nil {
		ops.WriteError(w, http.StatusInternalServerError, err.Error())
		return
	}
	var generic any
	if err := yaml.Unmarshal(y, &generic); err != nil {
		ops.WriteError(w, http.StatusInternalServerError, err.Error())
		return
	}
	ops.WriteJSON(w, status, generic)
}

type configView struct {
	Version       int        `yaml:"version"`
	Source        string     `yaml:"source"`
	At            time.Time  `yaml:"at"`
	Config        routingDoc `yaml:"config"`
	LastRejection *rejection `yaml:"last_rejection,omitempty"`
}

func (s *Server) getConfig(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	cur := s.history[len(s.history)-1]
	v := configView{Version: s.version, Source: cur.Source, At: cur.At, Config: docOf(s.model.routing), LastRejection: s.lastRejection}
	s.mu.Unlock()
	writeDoc(w, http.StatusOK, v)
}

// change applies edit to a copy of the current routing model; edit's error
// is the client's (404 or 400), a refused result is 422. The copy is taken
// and applied under one lock, so that a change made meanwhile (another
// admin call, the file watcher) is never silently undone.
func (s *Server) change(w http.ResponseWriter, note string, edit func(x *config.XDS) (int, error)) {
	s.mu.Lock()
	m := s.model
	m.routing = cloneRouting(m.routing)
	status, err := edit(&m.routing)
	if err != nil {
		s.mu.Unlock()
		ops.WriteError(w, status, err.Error())
		return
	}
	v, err := s.applyLocked(m, "admin", note, func(err error) error { return err })
	serving := s.version
	s.mu.Unlock()
	if err != nil {
		ops.WriteError(w, http.StatusUnprocessableEntity, "refused, version "+strconv.Itoa(serving)+" keeps serving: "+err.Error())
		return
	}
	ops.WriteJSON(w, http.StatusOK, map[string]any{"version": v})
}

// cloneRouting deep-copies the parts of the model the admin API edits, so
// that a refused change leaves the served model untouched.
func cloneRouting(x config.XDS) config.XDS {
	var c config.XDS
	y, err := yaml.Marshal(x)
	if err == nil && yaml.Unmarshal(y, &c) == nil {
		return c
	}
	return x
}

func (s *Server) putConfig(w http.ResponseWriter, r *http.Request) {
	var doc routingDoc
	if err := decodeBody(r, &doc); err != nil {
		ops.WriteError(w, http.StatusBadRequest, err.Error())
		return
	}
	s.change(w, "PUT config", func(x *config.XDS) (int, error) {
		*x = doc.into(*x)
		return 0, nil
	})
}

func (s *Server) putRoute(w http.ResponseWriter, r *http.Request) {
	lname, rname := r.PathValue("listener"), r.PathValue("route")
	var route config.XDSRoute
	if err := decodeBody(r, &route); err != nil {
		ops.WriteError(w, http.StatusBadRequest, err.Error())
		return
	}
	if route.Name == "" {
		route.Name = rname
	}
	if route.Name != rname {
		ops.WriteError(w, http.StatusBadRequest, fmt.Sprintf("body names route %q, the URL %q", route.Name, rname))
		return
	}
	vhost := r.URL.Query().Get("virtual_host")
	s.change(w, "PUT route "+lname+"/"+rname, func(x *config.XDS) (int, error) {
		l := findListener(x, lname)
		if l == nil {
			return http.StatusNotFound, fmt.Errorf("no listener named %q", lname)
		}
		for i := range l.VirtualHosts {
			vh := &l.VirtualHosts[i]
			for j := range vh.Routes {
				if vh.Routes[j].Name == rname {
					if vhost != "" && vhost != vh.Name {
						return http.StatusConflict, fmt.Errorf("route %q is in virtual host %q; delete it first to move it", rname, vh.Name)
					}
					vh.Routes[j] = route
					return 0, nil
				}
			}
		}
		for i := range l.VirtualHosts {
			vh := &l.VirtualHosts[i]
			if vhost == "" || vh.Name == vhost {
				// A new route goes first: it is usually more specific than
				// the catch-all routes already there.
				vh.Routes = append([]config.XDSRoute{route}, vh.Routes...)
				return 0, nil
			}
		}
		return http.StatusNotFound, fmt.Errorf("listener %q has no virtual host named %q", lname, vhost)
	})
}

func (s *Server) deleteRoute(w http.ResponseWriter, r *http.Request) {
	lname, rname := r.PathValue("listener"), r.PathValue("route")
	s.change(w, "DELETE route "+lname+"/"+rname, func(x *config.XDS) (int, error) {
		l := findListener(x, lname)
		if l == nil {
			return http.StatusNotFound, fmt.Errorf("no listener named %q", lname)
		}
		for i := range l.VirtualHosts {
			vh := &l.VirtualHosts[i]
			if j := slices.IndexFunc(vh.Routes, func(rt config.XDSRoute) bool { return rt.Name == rname }); j >= 0 {
				vh.Routes = slices.Delete(vh.Routes, j, j+1)
				return 0, nil
			}
		}
		return http.StatusNotFound, fmt.Errorf("listener %q has no route named %q", lname, rname)
	})
}

func findListener(x *config.XDS, name string) *config.XDSListener {
	for i := range x.Listeners {
		if x.Listeners[i].Name == name {
			return &x.Listeners[i]
		}
	}
	return nil
}

func (s *Server) putPolicy(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	var p policy.Policy
	if err := decodeBody(r, &p); err != nil {
		ops.WriteError(w, http.StatusBadRequest, err.Error())
		return
	}
	s.change(w, "PUT policy "+name, func(x *config.XDS) (int, error) {
		if x.Policies == nil {
			x.Policies = map[string]policy.Policy{}
		}
		x.Policies[name] = p
		return 0, nil
	})
}

func (s *Server) deletePolicy(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	s.change(w, "DELETE policy "+name, func(x *config.XDS) (int, error) {
		if _, ok := x.Policies[name]; !ok {
			return http.StatusNotFound, fmt.Errorf("no policy named %q", name)
		}
		delete(x.Policies, name)
		return 0, nil
	})
}

type revisionView struct {
	Version int       `json:"version"`
	Source  string    `json:"source"`
	At      time.Time `json:"at"`
	Note    string    `json:"note,omitempty"`
	Current bool      `json:"current"`
}

func (s *Server) getVersions(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	out := make([]revisionView, 0, len(s.history))
	for _, h := range s.history {
		out = append(out, revisionView{Version: h.Version, Source: h.Source, At: h.At, Note: h.Note, Current: h.Version == s.version})
	}
	s.mu.Unlock()
	ops.WriteJSON(w, http.StatusOK, map[string]any{"versions": out})
}

// findRevision finds a kept version; the status says why not.
func (s *Server) findRevision(r *http.Request) (revision, int, error) {
	v, err := strconv.Atoi(r.PathValue("version"))
	if err != nil {
		return revision{}, http.StatusBadRequest, fmt.Errorf("version %q is not a number", r.PathValue("version"))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, h := range s.history {
		if h.Version == v {
			return h, 0, nil
		}
	}
	return revision{}, http.StatusNotFound, fmt.Errorf("version %d is not in the history (the last %d versions are kept)", v, s.cfg.XDS.History)
}

func (s *Server) getVersion(w http.ResponseWriter, r *http.Request) {
	h, status, err := s.findRevision(r)
	if err != nil {
		ops.WriteError(w, status, err.Error())
		return
	}
	writeDoc(w, http.StatusOK, configView{Version: h.Version, Source: h.Source, At: h.At, Config: docOf(h.routing)})
}

// rollback re-applies a kept version as a new version, so that history
// only ever grows and every node sees a change.
func (s *Server) rollback(w http.ResponseWriter, r *http.Request) {
	h, status, err := s.findRevision(r)
	if err != nil {
		ops.WriteError(w, status, err.Error())
		return
	}
	s.change(w, fmt.Sprintf("rollback to %d", h.Version), func(x *config.XDS) (int, error) {
		*x = cloneRouting(h.routing)
		return 0, nil
	})
}

func (s *Server) getNodes(w http.ResponseWriter, _ *http.Request) {
	ops.WriteJSON(w, http.StatusOK, map[string]any{"nodes": s.Nodes()})
}

// getResources renders what a node with the given id, cluster and kind
// (?proxyless=true for gRPC) would receive, as YAML.
func (s *Server) getResources(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	node := &corev3.Node{Id: q.Get("node"), Cluster: q.Get("cluster"), UserAgentName: "envoy"}
	if q.Get("proxyless") == "true" {
		node.UserAgentName = "grpc"
	}
	s.mu.Lock()
	res := s.res
	s.mu.Unlock()
	byType := res.forNode(node)
	var msgs []types.Resource
	for _, t := range []string{resourcev3.ListenerType, resourcev3.RouteType, resourcev3.ClusterType, resourcev3.EndpointType} {
		msgs = append(msgs, byType[t]...)
	}
	out, err := RenderYAML(msgs)
	if err != nil {
		ops.WriteError(w, http.StatusInternalServerError, err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/yaml")
	w.Write(out)
}

func (s *Server) getEndpoints(w http.ResponseWriter, _ *http.Request) {
	ops.WriteJSON(w, http.StatusOK, map[string]any{"endpoints": s.endpoints.list()})
}

type registerRequest struct {
	Address string        `yaml:"address"`
	TTL     time.Duration `yaml:"ttl"`
}

// register adds addr to pool, or refreshes it, while the pool exists: the
// check and the put happen under s.mu, so a config change that removes the
// pool (and drops its registrations) cannot come in between and be undone.
func (s *Server) register(pool, addr string, ttl time.Duration) (expires time.Time, added, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !slices.ContainsFunc(s.model.routing.Pools, func(p config.XDSPool) bool { return p.Name == pool }) {
		return time.Time{}, false, false
	}
	expires, added = s.endpoints.put(pool, addr, ttl, time.Now())
	return expires, added, true
}

// registerEndpoint adds an engine to a pool, or refreshes it (a
// registration is also a heartbeat). It expires after ttl (default
// xds.heartbeat_ttl) without a heartbeat.
func (s *Server) registerEndpoint(w http.ResponseWriter, r *http.Request) {
	pool := r.PathValue("pool")
	var req registerRequest
	if err := decodeBody(r, &req); err != nil {
		ops.WriteError(w, http.StatusBadRequest, err.Error())
		return
	}
	addr, ok := canonicalEndpoint(req.Address)
	if !ok {
		ops.WriteError(w, http.StatusBadRequest, fmt.Sprintf("address %q is not ip:port (EDS carries IP addresses)", req.Address))
		return
	}
	req.Address = addr
	if req.TTL < 0 {
		ops.WriteError(w, http.StatusBadRequest, "ttl is negative")
		return
	}
	if req.TTL == 0 {
		req.TTL = s.cfg.XDS.HeartbeatTTL
	}
	expires, added, ok := s.register(pool, req.Address, req.TTL)
	if !ok {
		ops.WriteError(w, http.StatusNotFound, fmt.Sprintf("no pool named %q", pool))
		return
	}
	status := http.StatusOK
	if added {
		status = http.StatusCreated
		s.log.Info("engine registered", "pool", pool, "address", req.Address, "ttl", req.TTL)
		s.endpointsChanged()
	}
	ops.WriteJSON(w, status, registration{Pool: pool, Address: req.Address, ExpiresAt: expires})
}

// pathEndpoint is the address in a request's path, spelt as registered.
func pathEndpoint(r *http.Request) string {
	addr := r.PathValue("address")
	if c, ok := canonicalEndpoint(addr); ok {
		return c
	}
	return addr
}

func (s *Server) heartbeat(w http.ResponseWriter, r *http.Request) {
	pool, addr := r.PathValue("pool"), pathEndpoint(r)
	expires, ok := s.endpoints.refresh(pool, addr, time.Now())
	if !ok {
		ops.WriteError(w, http.StatusNotFound, fmt.Sprintf("%s is not registered in pool %q; register it again", addr, pool))
		return
	}
	ops.WriteJSON(w, http.StatusOK, registration{Pool: pool, Address: addr, ExpiresAt: expires})
}

func (s *Server) deregisterEndpoint(w http.ResponseWriter, r *http.Request) {
	pool, addr := r.PathValue("pool"), pathEndpoint(r)
	if !s.endpoints.remove(pool, addr) {
		ops.WriteError(w, http.StatusNotFound, fmt.Sprintf("%s is not registered in pool %q", addr, pool))
		return
	}
	s.log.Info("engine deregistered", "pool", pool, "address", addr)
	s.endpointsChanged()
	w.WriteHeader(http.StatusNoContent)
}
