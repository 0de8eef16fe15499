// Package policy is the per-route policy that the xDS control plane puts
// into each route and the ext_proc server reads back on every request: the
// one contract between the two, kept free of dependencies so that both can
// import it.
//
// On the wire the policy travels as ExtProcPerRoute.overrides
// .grpc_initial_metadata of the route, under the key MetadataKey, as compact
// JSON; Envoy sends it as gRPC metadata on the ext_proc stream of every
// request that matched the route. Decode(Encode(p)) == p for every valid p.
package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"
)

// MetadataKey is the gRPC metadata key (lower case, as gRPC requires) under
// which the encoded policy reaches the ext_proc server.
const MetadataKey = "x-infergate-policy"

// ModelHeader is the request header the ext_proc server sets from the
// "model" field of the request body (clearing the route cache in the same
// response), so that routes can match on the model with a header match.
const ModelHeader = "x-infergate-model"

// PriorityHeader is the request header the ext_proc server sets from the
// policy's Priority, overwriting the client's; the engine's queue orders
// requests by it.
const PriorityHeader = "x-infergate-priority"

// Cache modes.
const (
	CacheOff      = "off"      // neither cache is read or written
	CacheExact    = "exact"    // exact-match response cache only
	CacheSemantic = "semantic" // exact cache, then the semantic cache
)

// Defaults, applied by Normalize to fields left at their zero value.
const (
	DefaultCache             = CacheExact
	DefaultTTL               = 5 * time.Minute
	DefaultSemanticThreshold = 0.80
	DefaultTenantHeader      = "x-tenant-id"
	DefaultAPIKeyHeader      = "authorization"
	DefaultTokenWindow       = time.Minute
	DefaultPriority          = 5
	MinPriority              = 1
	MaxPriority              = 9
)

// Policy is what one route asks of the ext_proc server. The zero value of
// every field means "the default" (see Normalize); YAML names are the ones
// used in infergate.yaml under xds.policies.
type Policy struct {
	// Route is the name of the route the policy belongs to; the control
	// plane fills it in (it scopes cache keys and rate limits).
	Route string `yaml:"-"`
	// Cache is off, exact or semantic. Default exact.
	Cache string `yaml:"cache"`
	// TTL is how long a cached response may be served. Default 5m.
	TTL time.Duration `yaml:"ttl"`
	// SemanticThreshold is the cosine similarity, in (0, 1], above which a
	// semantic-cache candidate is considered (then verified by the guard).
	// Default 0.80: with the guard, 63% hits and 0.6% false hits on the
	// development pairs, 57.5% and 0% on the held-out pairs (BENCHMARKS.md).
	SemanticThreshold float64 `yaml:"semantic_threshold"`
	// TenantHeader names the request header that identifies the tenant.
	// Default x-tenant-id.
	TenantHeader string `yaml:"tenant_header"`
	// APIKeyHeader names the header whose value identifies the caller when
	// the tenant header is absent. Default authorization.
	APIKeyHeader string `yaml:"api_key_header"`
	// SharedCache lets every tenant of the route read and write the same
	// cache entries (a public FAQ bot, say); otherwise entries are scoped
	// to the tenant. Rate limits stay per tenant either way. Default false.
	SharedCache bool `yaml:"shared_cache"`
	// CacheNonDeterministic also caches requests whose answer may differ
	// on every call (temperature > 0 without a seed, n > 1). Default false.
	CacheNonDeterministic bool `yaml:"cache_nondeterministic"`
	// RequestsPerSecond is the sustained request rate per tenant; 0 means
	// no request-rate limit. Default 0.
	RequestsPerSecond float64 `yaml:"requests_per_second"`
	// Burst is how many requests a tenant may send at once above the rate.
	// Default: RequestsPerSecond rounded up (at least 1) when a rate is set.
	Burst int `yaml:"burst"`
	// TokenBudget is how many tokens a tenant may use per TokenWindow; 0
	// means no token budget. Default 0.
	TokenBudget int64 `yaml:"token_budget"`
	// TokenWindow is the period of the token budget. Default 1m.
	TokenWindow time.Duration `yaml:"token_window"`
	// Priority orders requests in the engine's queue, from MinPriority
	// (lowest) to MaxPriority (highest). Default 5.
	Priority int `yaml:"priority"`
	// ModelRoutes are the routes Envoy may switch this request to once
	// the body's model is known; the control plane fills them in.
	ModelRoutes []ModelRoute `yaml:"-" json:"-"`
}

// ModelRoute is a route that matches on the model, which Envoy can choose
// only after the ext_proc server has read the body, set ModelHeader and
// cleared the route cache. The control plane lists with each route's
// policy the model routes before it in its virtual host. For a request
// whose client sent no ModelHeader, the ext_proc server applies the
// policy of the first of them whose model is the body's and whose Match
// fits the request: the route Envoy then takes.
type ModelRoute struct {
	Model string
	// Match is the route's Envoy RouteMatch in proto JSON, without its
	// ModelHeader matcher (this package stays free of Envoy's types).
	Match json.RawMessage
	// Policy is the route's own, with Route set and no ModelRoutes.
	Policy Policy
}

// Default is the policy of a route that names none.
func Default() Policy {
	var p Policy
	p.Normalize()
	return p
}

// Normalize replaces every zero field by its default.
func (p *Policy) Normalize() {
	if p.Cache == "" {
		p.Cache = DefaultCache
	}
	if p.TTL == 0 {
		p.TTL = DefaultTTL
	}
	if p.SemanticThreshold == 0 {
		p.SemanticThreshold = DefaultSemanticThreshold
	}
	if p.TenantHeader == "" {
		p.TenantHeader = DefaultTenantHeader
	}
	if p.APIKeyHeader == "" {
		p.APIKeyHeader = DefaultAPIKeyHeader
	}
	if p.Burst == 0 && p.RequestsPerSecond > 0 {
		p.Burst = int(math.Max(1, math.Ceil(p.RequestsPerSecond)))
	}
	if p.TokenWindow == 0 {
		p.TokenWindow = DefaultTokenWindow
	}
	if p.Priority == 0 {
		p.Priority = DefaultPriority
	}
}

// Validate reports every field out of range, by its YAML name.
func (p Policy) Validate() error {
	var errs []error
	switch p.Cache {
	case CacheOff, CacheExact, CacheSemantic:
	default:
		errs = append(errs, fmt.Errorf("cache: %q is not one of off, exact, semantic", p.Cache))
	}
	if p.TTL < 0 {
		errs = append(errs, fmt.Errorf("ttl: %s is negative", p.TTL))
	}
	if !(p.SemanticThreshold > 0 && p.SemanticThreshold <= 1) {
		errs = append(errs, fmt.Errorf("semantic_threshold: %v is not in (0, 1]", p.SemanticThreshold))
	}
	if !validHeaderName(p.TenantHeader) {
		errs = append(errs, fmt.Errorf("tenant_header: %q is not a lower-case header name", p.TenantHeader))
	}
	if !validHeaderName(p.APIKeyHeader) {
		errs = append(errs, fmt.Errorf("api_key_header: %q is not a lower-case header name", p.APIKeyHeader))
	} else if p.APIKeyHeader == p.TenantHeader {
		// Envoy removes a client's tenant header: the API key would go
		// with it, and every caller would share one tenant.
		errs = append(errs, fmt.Errorf("api_key_header: %q is also the tenant_header", p.APIKeyHeader))
	}
	if p.RequestsPerSecond < 0 || math.IsNaN(p.RequestsPerSecond) || math.IsInf(p.RequestsPerSecond, 0) {
		errs = append(errs, fmt.Errorf("requests_per_second: %v is not a finite number >= 0", p.RequestsPerSecond))
	}
	if p.Burst < 0 {
		errs = append(errs, fmt.Errorf("burst: %d is negative", p.Burst))
	}
	if p.TokenBudget < 0 {
		errs = append(errs, fmt.Errorf("token_budget: %d is negative", p.TokenBudget))
	}
	if p.TokenWindow < 0 {
		errs = append(errs, fmt.Errorf("token_window: %s is negative", p.TokenWindow))
	}
	if p.Priority < MinPriority || p.Priority > MaxPriority {
		errs = append(errs, fmt.Errorf("priority: %d is not in %d..%d", p.Priority, MinPriority, MaxPriority))
	}
	return errors.Join(errs...)
}

// validHeaderName accepts the lower-case token characters Envoy and gRPC
// accept in a header name.
func validHeaderName(s string) bool {
	if s == "" || strings.HasPrefix(s, ":") {
		return false
	}
	for _, c := range s {
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_', c == '.':
		default:
			return false
		}
	}
	return true
}

// wire is the JSON form: short stable names, durations as Go duration
// strings so that a human reading Envoy's config dump understands them.
type wire struct {
	Route             string           `json:"route,omitempty"`
	Cache             string           `json:"cache"`
	TTL               string           `json:"ttl"`
	SemanticThreshold float64          `json:"semantic_threshold"`
	TenantHeader      string           `json:"tenant_header"`
	APIKeyHeader      string           `json:"api_key_header"`
	SharedCache       bool             `json:"shared_cache,omitempty"`
	CacheNonDet       bool             `json:"cache_nondeterministic,omitempty"`
	RequestsPerSecond float64          `json:"rps,omitempty"`
	Burst             int              `json:"burst,omitempty"`
	TokenBudget       int64            `json:"token_budget,omitempty"`
	TokenWindow       string           `json:"token_window"`
	Priority          int              `json:"priority"`
	ModelRoutes       []wireModelRoute `json:"model_routes,omitempty"`
}

type wireModelRoute struct {
	Model  string          `json:"model"`
	Match  json.RawMessage `json:"match"`
	Policy wire            `json:"policy"`
}

// Encode returns the compact JSON carried under MetadataKey. Normalize and
// Validate the policy first; Encode writes what it is given.
func (p Policy) Encode() string {
	b, err := json.Marshal(p.wire())
	if err != nil {
		// Only NaN or Inf floats, or a Match that is not JSON, make
		// json.Marshal fail; Validate refuses them.
		return "{}"
	}
	return string(b)
}

func (p Policy) wire() wire {
	w := wire{
		Route:             p.Route,
		Cache:             p.Cache,
		TTL:               p.TTL.String(),
		SemanticThreshold: p.SemanticThreshold,
		TenantHeader:      p.TenantHeader,
		APIKeyHeader:      p.APIKeyHeader,
		SharedCache:       p.SharedCache,
		CacheNonDet:       p.CacheNonDeterministic,
		RequestsPerSecond: p.RequestsPerSecond,
		Burst:             p.Burst,
		TokenBudget:       p.TokenBudget,
		TokenWindow:       p.TokenWindow.String(),
		Priority:          p.Priority,
	}
	for _, mr := range p.ModelRoutes {
		w.ModelRoutes = append(w.ModelRoutes, wireModelRoute{Model: mr.Model, Match: mr.Match, Policy: mr.Policy.wire()})
	}
	return w
}

// Decode parses what Encode wrote, fills in defaults for absent fields and
// validates the result. Unknown fields are ignored, so that a newer control
// plane can add fields without breaking an older ext_proc server.
func Decode(s string) (Policy, error) {
	var w wire
	if err := json.Unmarshal([]byte(s), &w); err != nil {
		return Policy{}, fmt.Errorf("policy: %w", err)
	}
	p, err := w.policy()
	if err != nil {
		return Policy{}, err
	}
	for i, mr := range w.ModelRoutes {
		mp, err := mr.Policy.policy()
		if err != nil {
			return Policy{}, fmt.Errorf("model_routes[%d]: %w", i, err)
		}
		if mr.Model == "" || len(mr.Match) == 0 {
			return Policy{}, fmt.Errorf("policy: model_routes[%d]: model and match are required", i)
		}
		p.ModelRoutes = append(p.ModelRoutes, ModelRoute{Model: mr.Model, Match: mr.Match, Policy: mp})
	}
	return p, nil
}

// policy is w's own policy, defaulted and validated; its model routes are
// left to Decode, as they nest only one level.
func (w wire) policy() (Policy, error) {
	p := Policy{
		Route:                 w.Route,
		Cache:                 w.Cache,
		SemanticThreshold:     w.SemanticThreshold,
		TenantHeader:          w.TenantHeader,
		APIKeyHeader:          w.APIKeyHeader,
		SharedCache:           w.SharedCache,
		CacheNonDeterministic: w.CacheNonDet,
		RequestsPerSecond:     w.RequestsPerSecond,
		Burst:                 w.Burst,
		TokenBudget:           w.TokenBudget,
		Priority:              w.Priority,
	}
	var err error
	if p.TTL, err = parseDuration("ttl", w.TTL); err != nil {
		return Policy{}, err
	}
	if p.TokenWindow, err = parseDuration("token_window", w.TokenWindow); err != nil {
		return Policy{}, err
	}
	p.Normalize()
	if err := p.Validate(); err != nil {
		return Policy{}, fmt.Errorf("policy: %w", err)
	}
	return p, nil
}

func parseDuration(field, s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("policy: %s: %w", field, err)
	}
	return d, nil
}
