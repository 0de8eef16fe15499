package extproc

import (
	"context"
	"fmt"
	"sync"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/infergate/infergate/envoy/routematch"
	"github.com/infergate/infergate/policy"
)

// routePolicy is a route's policy as the stream uses it: decoded, with
// its model routes' matches compiled.
type routePolicy struct {
	policy.Policy
	models []modelRoute
}

type modelRoute struct {
	model  string
	match  *routematch.Matcher
	policy policy.Policy
}

// policyCache keeps decoded route policies by their encoding: a route
// sends the same string on every request, and its model routes may hold
// regular expressions worth compiling once.
type policyCache struct {
	mu sync.Mutex
	m  map[string]*routePolicy
}

// maxCachedPolicies bounds the cache against a client that reaches the
// gRPC port directly with made-up policies; a config has far fewer.
const maxCachedPolicies = 4096

var defaultRoutePolicy = &routePolicy{Policy: policy.Default()}

// streamPolicy is the route's policy from the stream's gRPC metadata; a
// route without one gets the defaults.
func (c *policyCache) streamPolicy(ctx context.Context) (*routePolicy, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	v := md.Get(policy.MetadataKey)
	if len(v) == 0 {
		return defaultRoutePolicy, nil
	}
	c.mu.Lock()
	rp, ok := c.m[v[0]]
	c.mu.Unlock()
	if ok {
		return rp, nil
	}
	rp, err := compilePolicy(v[0])
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if c.m == nil || len(c.m) >= maxCachedPolicies {
		c.m = map[string]*routePolicy{}
	}
	c.m[v[0]] = rp
	c.mu.Unlock()
	return rp, nil
}

func compilePolicy(encoded string) (*routePolicy, error) {
	p, err := policy.Decode(encoded)
	if err != nil {
		return nil, err
	}
	rp := &routePolicy{Policy: p}
	for i, mr := range p.ModelRoutes {
		var rm routev3.RouteMatch
		if err := protojson.Unmarshal(mr.Match, &rm); err != nil {
			return nil, fmt.Errorf("policy: model_routes[%d].match: %w", i, err)
		}
		m, err := routematch.Compile(&rm)
		if err != nil {
			return nil, fmt.Errorf("policy: model_routes[%d].%w", i, err)
		}
		rp.models = append(rp.models, modelRoute{model: mr.Model, match: m, policy: mr.Policy})
	}
	return rp, nil
}

// modelRoute is the first model route Envoy will take for a request to
// path with headers h once its model header says model; nil when Envoy
// keeps the request on the route it matched.
func (rp *routePolicy) modelRoute(model, path string, h headers) *modelRoute {
	values := func(name string) []string {
		if v, ok := h[name]; ok {
			return []string{v}
		}
		return nil
	}
	for i := range rp.models {
		if mr := &rp.models[i]; mr.model == model && mr.match.Matches(values, path) {
			return mr
		}
	}
	return nil
}
