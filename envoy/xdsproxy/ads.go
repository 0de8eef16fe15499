package xdsproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// subscription is the SotW state of one resource type on the ADS stream.
type subscription struct {
	// wildcard types (LDS, CDS) ask for everything; the others name what
	// the applied listeners and clusters reference.
	wildcard bool
	names    []string
	// version is the last version applied (and ACKed), sent again in a
	// NACK and after a reconnect; nonce the last response's.
	version string
	nonce   string
}

func newSubscriptions() map[string]*subscription {
	return map[string]*subscription{
		resourcev3.ListenerType: {wildcard: true},
		resourcev3.RouteType:    {},
		resourcev3.ClusterType:  {wildcard: true},
		resourcev3.EndpointType: {},
	}
}

// request is the DiscoveryRequest for one type, subscribing, ACKing or
// (with errDetail) NACKing.
func (p *Proxy) request(typeURL string, errDetail error) *discoveryv3.DiscoveryRequest {
	s := p.subs[typeURL]
	req := &discoveryv3.DiscoveryRequest{
		Node:          p.node,
		TypeUrl:       typeURL,
		VersionInfo:   s.version,
		ResponseNonce: s.nonce,
		ResourceNames: s.names,
	}
	if errDetail != nil {
		req.ErrorDetail = &statuspb.Status{Code: int32(codes.InvalidArgument), Message: errDetail.Error()}
	}
	return req
}

// followADS keeps an ADS stream open until ctx is done, reconnecting with
// a capped backoff.
func (p *Proxy) followADS(ctx context.Context) {
	const maxBackoff = 5 * time.Second
	backoff := 100 * time.Millisecond
	for {
		start := time.Now()
		err := p.stream(ctx)
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > maxBackoff {
			backoff = 100 * time.Millisecond
		}
		p.log.Warn("ADS stream ended; the last applied config keeps serving", "ads", p.cfg.ADS, "error", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, maxBackoff)
	}
}

// stream runs one ADS stream: it subscribes, then applies each response
// and answers it, changing the RDS and EDS subscriptions as listeners and
// clusters come and go.
func (p *Proxy) stream(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := discoveryv3.NewAggregatedDiscoveryServiceClient(p.conn).StreamAggregatedResources(ctx)
	if err != nil {
		return err
	}
	p.mu.Lock()
	var first []*discoveryv3.DiscoveryRequest
	for _, typeURL := range []string{resourcev3.ListenerType, resourcev3.ClusterType, resourcev3.RouteType, resourcev3.EndpointType} {
		sub := p.subs[typeURL]
		sub.nonce = "" // nonces belong to a stream
		if sub.wildcard || len(sub.names) > 0 {
			first = append(first, p.request(typeURL, nil))
		}
	}
	p.mu.Unlock()
	for _, req := range first {
		if err := s.Send(req); err != nil {
			return err
		}
	}
	for {
		resp, err := s.Recv()
		if err != nil {
			return err
		}
		for _, req := range p.handle(resp) {
			if err := s.Send(req); err != nil {
				return err
			}
		}
	}
}

// handle applies one response and returns the requests that answer it:
// the ACK or NACK, then any changed subscription.
func (p *Proxy) handle(resp *discoveryv3.DiscoveryResponse) []*discoveryv3.DiscoveryRequest {
	p.mu.Lock()
	defer p.mu.Unlock()
	typeURL := resp.GetTypeUrl()
	sub := p.subs[typeURL]
	if sub == nil {
		p.log.Warn("ignoring a response for a type never asked for", "type", typeURL)
		return nil
	}
	sub.nonce = resp.GetNonce()
	routeNames, endpointNames := p.subs[resourcev3.RouteType].names, p.subs[resourcev3.EndpointType].names
	err := p.applyLocked(typeURL, resp.GetResources())
	if err != nil {
		p.log.Warn("NACK: config not applied, the last applied keeps serving", "type", typeURL, "version", resp.GetVersionInfo(), "error", err)
		return []*discoveryv3.DiscoveryRequest{p.request(typeURL, err)}
	}
	sub.version = resp.GetVersionInfo()
	p.log.Debug("ACK", "type", typeURL, "version", sub.version)
	out := []*discoveryv3.DiscoveryRequest{p.request(typeURL, nil)}
	// A subscription left with no names is not sent: an empty list would
	// read as a wildcard. Resources no longer named are dropped anyway.
	if rn := p.subs[resourcev3.RouteType].names; !slices.Equal(rn, routeNames) && len(rn) > 0 {
		out = append(out, p.request(resourcev3.RouteType, nil))
	}
	if en := p.subs[resourcev3.EndpointType].names; !slices.Equal(en, endpointNames) && len(en) > 0 {
		out = append(out, p.request(resourcev3.EndpointType, nil))
	}
	return out
}

// applyLocked decodes and validates every resource of a response and
// applies them all, or none: any error is the NACK's detail.
func (p *Proxy) applyLocked(typeURL string, resources []*anypb.Any) error {
	switch typeURL {
	case resourcev3.ListenerType:
		confs := map[string]*listenerConf{}
		err := decodeAll(typeURL, resources, func() *listenerv3.Listener { return &listenerv3.Listener{} },
			func(l *listenerv3.Listener) (string, error) {
				c, err := decodeListener(l)
				confs[l.GetName()] = c
				return l.GetName(), err
			})
		if err != nil {
			return err
		}
		return p.applyListenersLocked(confs)
	case resourcev3.RouteType:
		routes := map[string]*routeConfig{}
		err := decodeAll(typeURL, resources, func() *routev3.RouteConfiguration { return &routev3.RouteConfiguration{} },
			func(rc *routev3.RouteConfiguration) (string, error) {
				c, err := decodeRouteConfig(rc)
				routes[rc.GetName()] = c
				return rc.GetName(), err
			})
		if err != nil {
			return err
		}
		// Responses for named types may carry only some names: keep the
		// others, drop what is no longer subscribed.
		for name, rc := range routes {
			p.routes[name] = rc
		}
		dropUnsubscribed(p.routes, p.subs[resourcev3.RouteType].names)
	case resourcev3.ClusterType:
		clusters := map[string]*clusterConf{}
		err := decodeAll(typeURL, resources, func() *clusterv3.Cluster { return &clusterv3.Cluster{} },
			func(c *clusterv3.Cluster) (string, error) {
				cc, err := decodeCluster(c)
				clusters[c.GetName()] = cc
				return c.GetName(), err
			})
		if err != nil {
			return err
		}
		p.clusters = clusters
		var names []string
		for _, c := range clusters {
			if c.edsName != "" && !slices.Contains(names, c.edsName) {
				names = append(names, c.edsName)
			}
		}
		slices.Sort(names)
		p.subs[resourcev3.EndpointType].names = names
		dropUnsubscribed(p.endpoints, names)
	case resourcev3.EndpointType:
		endpoints := map[string][]string{}
		err := decodeAll(typeURL, resources, func() *endpointv3.ClusterLoadAssignment { return &endpointv3.ClusterLoadAssignment{} },
			func(la *endpointv3.ClusterLoadAssignment) (string, error) {
				addrs, err := endpointAddresses(la)
				endpoints[la.GetClusterName()] = addrs
				return la.GetClusterName(), err
			})
		if err != nil {
			return err
		}
		for name, addrs := range endpoints {
			p.endpoints[name] = addrs
		}
		dropUnsubscribed(p.endpoints, p.subs[resourcev3.EndpointType].names)
	}
	p.refreshLocked()
	return nil
}

// dropUnsubscribed forgets the resources of a named type no longer named.
func dropUnsubscribed[V any](m map[string]V, names []string) {
	for name := range m {
		if !slices.Contains(names, name) {
			delete(m, name)
		}
	}
}

// envoyResource is a generated Envoy resource with its validation rules.
type envoyResource interface {
	proto.Message
	ValidateAll() error
}

// decodeAll unpacks each resource (unwrapping a discovery Resource),
// checks its own validation rules and hands it to use, whose decoders
// validate in depth every packed config the proxy acts on; configs it
// ignores (an optional filter, protocol options) are not looked into, so
// an extension this binary does not link is no reason to refuse. All
// errors are joined, each naming its resource.
func decodeAll[M envoyResource](typeURL string, resources []*anypb.Any, newM func() M, use func(M) (string, error)) error {
	var errs []string
	seen := map[string]bool{}
	for i, a := range resources {
		if a.GetTypeUrl() == resourcev3.APITypePrefix+"envoy.service.discovery.v3.Resource" {
			wrapped := &discoveryv3.Resource{}
			if err := a.UnmarshalTo(wrapped); err != nil {
				errs = append(errs, fmt.Sprintf("resource %d: %v", i, err))
				continue
			}
			a = wrapped.GetResource()
		}
		if a.GetTypeUrl() != typeURL {
			errs = append(errs, fmt.Sprintf("resource %d: type %s in a %s response", i, a.GetTypeUrl(), typeURL))
			continue
		}
		m := newM()
		if err := a.UnmarshalTo(m); err != nil {
			errs = append(errs, fmt.Sprintf("resource %d: %v", i, err))
			continue
		}
		if err := m.ValidateAll(); err != nil {
			errs = append(errs, fmt.Sprintf("resource %d: %v", i, err))
			continue
		}
		name, err := use(m)
		if seen[name] {
			err = errors.Join(err, errors.New("the name is used twice"))
		}
		seen[name] = true
		if err != nil {
			errs = append(errs, fmt.Sprintf("%q: %v", name, err))
		}
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "; "))
	}
	return nil
}

// applyListenersLocked makes the LDS state of the world current: new and
// moved listeners are bound first (a failed bind refuses the whole update,
// nothing changes), then removed and moved ones drain, and the RDS
// subscription follows the route configurations now named.
func (p *Proxy) applyListenersLocked(confs map[string]*listenerConf) error {
	bound := map[string]net.Listener{}
	for _, name := range sortedKeys(confs) {
		c := confs[name]
		if fe := p.frontends[name]; fe != nil && fe.conf.address == c.address {
			continue
		}
		ln, err := net.Listen("tcp", c.address)
		if err != nil {
			for _, l := range bound {
				l.Close()
			}
			return fmt.Errorf("listener %q: cannot bind %s: %w", name, c.address, err)
		}
		bound[name] = ln
	}
	for name, fe := range p.frontends {
		if _, keep := confs[name]; !keep || bound[name] != nil {
			p.log.Info("listener removed", "listener", name)
			fe.stop()
			delete(p.frontends, name)
		}
	}
	var names []string
	for name, c := range confs {
		if ln := bound[name]; ln != nil {
			p.frontends[name] = &frontend{p: p, conf: c, ln: ln}
		} else {
			p.frontends[name].conf = c
		}
		if c.rdsName != "" && !slices.Contains(names, c.rdsName) {
			names = append(names, c.rdsName)
		}
	}
	slices.Sort(names)
	p.subs[resourcev3.RouteType].names = names
	dropUnsubscribed(p.routes, names)
	p.refreshLocked()
	return nil
}
