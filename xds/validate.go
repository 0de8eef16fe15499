package xds

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"regexp"
	"runtime"
	"sort"
	"sync"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/infergate/infergate/envoy/validate"
)

// check validates every resource of a build before any of it is served:
// the generated validation rules of each message (recursing into every
// Any), then what those rules cannot see — references between resources,
// regular expressions, the filter chain's shape and the ext_proc modes.
// Each problem names its resource. On the way it hashes every resource
// (for per-node versions), on all cores, since a large route table makes
// this the bulk of a change's cost.
func check(r *resources) error {
	type job struct {
		kind, name string
		msg        proto.Message
		err        error
		hash       uint64
		routes     []*builtRoute // for a route table, the routes not yet validated
	}
	var jobs []*job
	skeletons := map[string]*job{}
	for _, name := range r.order {
		jobs = append(jobs, &job{kind: "listener", name: name, msg: r.envoyListeners[name]},
			&job{kind: "api listener", name: name, msg: r.apiListeners[name]})
		// A route table is validated as its skeleton (virtual hosts
		// without routes) plus each route on its own: the same rules,
		// but an unchanged route is not validated again, and a large
		// table spreads over all cores.
		sk := &job{kind: "route config", name: name, msg: skeleton(r.routes[name])}
		skeletons[name] = sk
		jobs = append(jobs, sk)
		var batch []*builtRoute
		for _, vh := range r.routes[name].GetVirtualHosts() {
			for _, rt := range vh.GetRoutes() {
				br := r.builtRoutes[routeKey(name, vh.GetName(), rt.GetName())]
				if br.validated {
					continue
				}
				if batch = append(batch, br); len(batch) == 256 {
					jobs = append(jobs, &job{kind: "route config", name: name, routes: batch})
					batch = nil
				}
			}
		}
		if len(batch) > 0 {
			jobs = append(jobs, &job{kind: "route config", name: name, routes: batch})
		}
	}
	for _, name := range sortedKeys(r.clusters) {
		jobs = append(jobs, &job{kind: "cluster", name: name, msg: r.clusters[name]})
	}
	for _, name := range sortedKeys(r.endpoints) {
		jobs = append(jobs, &job{kind: "endpoints", name: name, msg: r.endpoints[name]})
	}
	next := make(chan *job)
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), len(jobs)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range next {
				var errs []error
				if j.msg != nil {
					var herr error
					j.hash, herr = hashMessage(j.msg)
					errs = append(errs, validate.Message(j.msg), herr)
				}
				for _, br := range j.routes {
					h, err := hashMessage(br.route)
					if err = errors.Join(validate.Message(br.route), err); err != nil {
						errs = append(errs, fmt.Errorf("route %q: %w", br.route.GetName(), err))
						continue
					}
					br.hash, br.validated = h, true
				}
				j.err = errors.Join(errs...)
			}
		}()
	}
	for _, j := range jobs {
		next <- j
	}
	close(next)
	wg.Wait()

	var errs []error
	add := func(kind, name string, err error) {
		if err != nil {
			errs = append(errs, fmt.Errorf("%s %q: %w", kind, name, err))
		}
	}
	r.hashes = make(map[proto.Message]uint64, len(jobs))
	for _, j := range jobs {
		add(j.kind, j.name, j.err)
		if j.msg != nil && j.kind != "route config" {
			r.hashes[j.msg] = j.hash
		}
	}
	for _, name := range r.order {
		rc := r.routes[name]
		r.hashes[rc] = routeTableHash(rc, skeletons[name].hash, r.builtRoutes)
		add("listener", name, checkListener(r.envoyListeners[name].GetFilterChains()[0].GetFilters()[0].GetTypedConfig(), r))
		add("api listener", name, checkListener(r.apiListeners[name].GetApiListener().GetApiListener(), r))
		add("route config", name, checkRoutes(rc, r))
	}
	return errors.Join(errs...)
}

// skeleton copies a route table without its routes.
func skeleton(rc *routev3.RouteConfiguration) *routev3.RouteConfiguration {
	kept := make([][]*routev3.Route, len(rc.GetVirtualHosts()))
	for i, vh := range rc.GetVirtualHosts() {
		kept[i], vh.Routes = vh.Routes, nil
	}
	c := proto.Clone(rc).(*routev3.RouteConfiguration)
	for i, vh := range rc.GetVirtualHosts() {
		vh.Routes = kept[i]
	}
	return c
}

// routeTableHash combines the skeleton's hash with its routes' hashes, in
// order, instead of encoding the whole table again. Each virtual host's
// route count goes in too: without it, moving a host's last route to the
// front of the next host would leave the hash, and so the version Envoy
// holds, unchanged.
func routeTableHash(rc *routev3.RouteConfiguration, skeleton uint64, built map[string]*builtRoute) uint64 {
	h := fnv.New64a()
	var buf [8]byte
	binary.LittleEndian.PutUint64(buf[:], skeleton)
	h.Write(buf[:])
	for _, vh := range rc.GetVirtualHosts() {
		binary.LittleEndian.PutUint64(buf[:], uint64(len(vh.GetRoutes())))
		h.Write(buf[:])
		for _, rt := range vh.GetRoutes() {
			binary.LittleEndian.PutUint64(buf[:], built[routeKey(rc.GetName(), vh.GetName(), rt.GetName())].hash)
			h.Write(buf[:])
		}
	}
	return h.Sum64()
}

// checkListener checks the HCM: RDS names a route config of this build,
// the router is the last filter, and the ext_proc filter is coherent.
func checkListener(a *anypb.Any, r *resources) error {
	hcm := &hcmv3.HttpConnectionManager{}
	if err := a.UnmarshalTo(hcm); err != nil {
		return fmt.Errorf("network filter is not an HttpConnectionManager: %w", err)
	}
	var errs []error
	if name := hcm.GetRds().GetRouteConfigName(); r.routes[name] == nil {
		errs = append(errs, fmt.Errorf("RDS names route config %q, which is not served", name))
	}
	filters := hcm.GetHttpFilters()
	if len(filters) == 0 || !filters[len(filters)-1].GetTypedConfig().MessageIs(&routerv3.Router{}) {
		errs = append(errs, errors.New("the last HTTP filter must be the router"))
	}
	for i, f := range filters {
		msg, err := f.GetTypedConfig().UnmarshalNew()
		if err != nil {
			errs = append(errs, fmt.Errorf("http_filters[%d] %q: typed_config %q does not resolve: %w", i, f.GetName(), f.GetTypedConfig().GetTypeUrl(), err))
			continue
		}
		if _, ok := msg.(*routerv3.Router); ok && i != len(filters)-1 {
			errs = append(errs, fmt.Errorf("http_filters[%d]: the router must be the last filter", i))
		}
		if ep, ok := msg.(*extprocv3.ExternalProcessor); ok {
			if err := checkExtProc(ep, r); err != nil {
				errs = append(errs, fmt.Errorf("http_filters[%d] %q: %w", i, f.GetName(), err))
			}
		}
	}
	return errors.Join(errs...)
}

// checkExtProc applies Envoy's own consistency rules for ext_proc (see
// shared/envoy-extproc-behaviour.md) and checks that its cluster exists.
func checkExtProc(ep *extprocv3.ExternalProcessor, r *resources) error {
	var errs []error
	if c := ep.GetGrpcService().GetEnvoyGrpc().GetClusterName(); r.clusters[c] == nil {
		errs = append(errs, fmt.Errorf("grpc_service names cluster %q, which is not served", c))
	}
	m := ep.GetProcessingMode()
	full := extprocv3.ProcessingMode_FULL_DUPLEX_STREAMED
	if m.GetRequestBodyMode() == full && m.GetRequestTrailerMode() != extprocv3.ProcessingMode_SEND {
		errs = append(errs, errors.New("request body FULL_DUPLEX_STREAMED needs request trailer mode SEND"))
	}
	if m.GetResponseBodyMode() == full && m.GetResponseTrailerMode() != extprocv3.ProcessingMode_SEND {
		errs = append(errs, errors.New("response body FULL_DUPLEX_STREAMED needs response trailer mode SEND"))
	}
	if (m.GetRequestBodyMode() == full || m.GetResponseBodyMode() == full) && ep.GetAllowModeOverride() {
		errs = append(errs, errors.New("allow_mode_override cannot be used with FULL_DUPLEX_STREAMED"))
	}
	if m.GetRequestHeaderMode() == extprocv3.ProcessingMode_SKIP && m.GetRequestBodyMode() == extprocv3.ProcessingMode_NONE &&
		m.GetResponseHeaderMode() == extprocv3.ProcessingMode_SKIP && m.GetResponseBodyMode() == extprocv3.ProcessingMode_NONE {
		errs = append(errs, errors.New("processing_mode sends nothing to the server"))
	}
	if t, max := ep.GetMessageTimeout(), ep.GetMaxMessageTimeout(); t == nil || t.AsDuration() <= 0 {
		errs = append(errs, errors.New("message_timeout must be set and positive"))
	} else if max != nil && t.AsDuration() > max.AsDuration() {
		errs = append(errs, fmt.Errorf("message_timeout %s is over max_message_timeout %s", t.AsDuration(), max.AsDuration()))
	}
	return errors.Join(errs...)
}

// checkRoutes checks every route's clusters exist and its regular
// expressions compile (RE2, which Go's regexp implements).
func checkRoutes(rc *routev3.RouteConfiguration, r *resources) error {
	var errs []error
	for _, vh := range rc.GetVirtualHosts() {
		for _, rt := range vh.GetRoutes() {
			where := fmt.Sprintf("virtual host %q route %q", vh.GetName(), rt.GetName())
			fail := func(format string, args ...any) {
				errs = append(errs, fmt.Errorf("%s: %s", where, fmt.Sprintf(format, args...)))
			}
			act := rt.GetRoute()
			clusters := []string{act.GetCluster()}
			if wc := act.GetWeightedClusters(); wc != nil {
				clusters = clusters[:0]
				for _, c := range wc.GetClusters() {
					clusters = append(clusters, c.GetName())
				}
			}
			for _, c := range clusters {
				if r.clusters[c] == nil {
					fail("cluster %q is not served", c)
				}
			}
			if re := rt.GetMatch().GetSafeRegex(); re != nil {
				if _, err := regexp.Compile(re.GetRegex()); err != nil {
					fail("path regex: %v", err)
				}
			}
			for _, h := range rt.GetMatch().GetHeaders() {
				if re, ok := h.GetStringMatch().GetMatchPattern().(*matcherv3.StringMatcher_SafeRegex); ok {
					if _, err := regexp.Compile(re.SafeRegex.GetRegex()); err != nil {
						fail("header %q regex: %v", h.GetName(), err)
					}
				}
			}
		}
	}
	return errors.Join(errs...)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
