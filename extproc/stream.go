package extproc

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/infergate/infergate/config"
	"github.com/infergate/infergate/envoy/routematch"
	"github.com/infergate/infergate/extproc/cache"
	"github.com/infergate/infergate/extproc/canonical"
	"github.com/infergate/infergate/internal/apierror"
	"github.com/infergate/infergate/policy"
)

// phase is where a request is in Envoy's fixed message order.
type phase int

const (
	wantRequestHeaders phase = iota
	wantRequestBody
	wantResponseHeaders
	wantResponseBody
	finished
)

var phaseNames = [...]string{"request headers", "request body", "response headers", "response body", "end of response"}

func (p phase) String() string { return phaseNames[p] }

// stream is the state of one HTTP request through Envoy.
type stream struct {
	s    *Server
	ctx  context.Context
	send func(*extprocv3.ProcessingResponse) error

	phase  phase
	policy policy.Policy
	method string
	path   string
	tenant string
	scope  string
	// clientModel is the x-infergate-model the client sent itself.
	clientModel string
	checks      []limitCheck
	// route is the matched route's policy. While its model routes may
	// still take the request (the body is not read yet), reqHeaders are
	// kept to match them and the rate limits wait for the final policy.
	route      *routePolicy
	reqHeaders headers

	// Request body, accumulated when Envoy streams it in chunks.
	body     []byte
	bodyOver bool
	// completedEarly: the request was decided on a body that trailers
	// follow (see requestBody).
	completedEarly bool

	// Cache decisions made on the request.
	noStore   bool // request Cache-Control: no-store
	noCache   bool // request Cache-Control: no-cache
	cacheable bool // the response may be stored under key
	bypass    string
	key       cache.Key
	query     *Query
	flight    *cache.Flight

	// Response state.
	status     int
	respHdr    headers
	storeNot   string        // why the response will not be stored ("" = it may be)
	freshFor   time.Duration // the response's s-maxage or max-age; 0 when it has neither
	sse        bool
	respBody   []byte
	respTail   []byte
	respOver   bool
	respChunks int
	// respBytes and respEvents (data: lines of an event stream) measure an
	// answer that reports no usage, to charge the token budget anyway.
	respBytes  int64
	respEvents int64
	charged    bool // the token budget was charged for this answer
}

// Process implements the ext_proc gRPC service: one stream per request.
func (s *Server) Process(srv extprocv3.ExternalProcessor_ProcessServer) (err error) {
	s.metrics.streams.Inc()
	defer s.metrics.streams.Dec()
	st := &stream{s: s, ctx: srv.Context(), send: srv.Send}
	defer st.finishFlight(nil)
	// A client gone mid-answer still used the tokens streamed so far.
	defer st.chargeTokens(0)
	defer func() {
		// A bug must cost one request, not the process and every stream
		// on it: Envoy applies its failure mode to this one.
		if r := recover(); r != nil {
			s.metrics.streamErrors.WithLabelValues("panic").Inc()
			s.log.Error("ext_proc stream panicked", "panic", r, "path", st.path, "stack", string(debug.Stack()))
			err = status.Error(codes.Internal, "ext_proc: internal error")
		}
	}()
	for {
		req, err := srv.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			if status.Code(err) == codes.Canceled || srv.Context().Err() != nil {
				return nil
			}
			s.metrics.streamErrors.WithLabelValues("receive").Inc()
			return err
		}
		start := time.Now()
		kind, err := st.handle(req)
		if err != nil {
			var pe *protocolError
			if errors.As(err, &pe) {
				s.metrics.streamErrors.WithLabelValues(pe.kind).Inc()
				s.log.Warn("ext_proc stream ended", "kind", pe.kind, "error", pe.msg, "path", st.path)
				return status.Error(pe.code, pe.msg)
			}
			s.metrics.streamErrors.WithLabelValues("send").Inc()
			return err
		}
		s.metrics.messageSeconds.WithLabelValues(kind).Observe(time.Since(start).Seconds())
		if st.phase == finished {
			// Nothing more will come that needs an answer; closing with OK
			// lets the rest of the request pass unprocessed.
			return nil
		}
	}
}

// protocolError ends a stream with a gRPC status: Envoy then applies its
// failure mode (status_on_error, or failure_mode_allow lets the request go
// on without ext_proc).
type protocolError struct {
	kind string
	code codes.Code
	msg  string
}

func (e *protocolError) Error() string { return e.msg }

func outOfOrder(got string, p phase) error {
	return &protocolError{kind: "out_of_order", code: codes.FailedPrecondition,
		msg: fmt.Sprintf("ext_proc: got %s while waiting for %s", got, p)}
}

// handle processes one message and sends its answer. It returns the message
// kind for the latency metric.
func (st *stream) handle(req *extprocv3.ProcessingRequest) (string, error) {
	switch r := req.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		if st.phase != wantRequestHeaders {
			return "", outOfOrder("request headers", st.phase)
		}
		return "request_headers", st.requestHeaders(r.RequestHeaders)
	case *extprocv3.ProcessingRequest_RequestBody:
		if st.phase == wantResponseHeaders && st.completedEarly {
			// Only a STREAMED request body goes on after one whole JSON
			// value; the request is then not the one looked up.
			if len(r.RequestBody.GetBody()) > 0 {
				st.storeNot = "request-changed"
			}
			return "request_body", st.send(requestBodyResponse(nil, false))
		}
		if st.phase != wantRequestBody {
			return "", outOfOrder("request body", st.phase)
		}
		return "request_body", st.requestBody(r.RequestBody)
	case *extprocv3.ProcessingRequest_RequestTrailers:
		if st.phase == wantResponseHeaders && st.completedEarly {
			return "request_trailers", st.send(requestTrailersResponse())
		}
		if st.phase != wantRequestBody {
			return "", outOfOrder("request trailers", st.phase)
		}
		// Trailers end the body: a buffered body arrived before them, or
		// there was none; either way the request is complete.
		return "request_trailers", st.requestComplete(endedOnTrailers)
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		// An upstream may answer before the request body was sent
		// (an early 413, say).
		if st.phase != wantResponseHeaders && st.phase != wantRequestBody {
			return "", outOfOrder("response headers", st.phase)
		}
		return "response_headers", st.responseHeaders(r.ResponseHeaders)
	case *extprocv3.ProcessingRequest_ResponseBody:
		if st.phase != wantResponseBody {
			return "", outOfOrder("response body", st.phase)
		}
		return "response_body", st.responseBody(r.ResponseBody)
	case *extprocv3.ProcessingRequest_ResponseTrailers:
		if st.phase != wantResponseBody {
			return "", outOfOrder("response trailers", st.phase)
		}
		if st.storeNot == "" && len(r.ResponseTrailers.GetTrailers().GetHeaders()) > 0 {
			// A cached answer is replayed without trailers. (Envoy before
			// 1.27 sent empty trailers after every body in SEND mode.)
			st.storeNot = "trailers"
		}
		st.responseComplete()
		st.phase = finished
		return "response_trailers", st.send(responseTrailersResponse())
	default:
		return "", &protocolError{kind: "unknown_message", code: codes.InvalidArgument,
			msg: fmt.Sprintf("ext_proc: message %T is not supported", r)}
	}
}

// requestHeaders reads the policy and the tenant, enforces rate limits
// (after the body instead, when the body's model may move the request to
// a model route) and, for a request without body, looks it up at once.
func (st *stream) requestHeaders(hm *extprocv3.HttpHeaders) error {
	rp, err := st.s.policies.streamPolicy(st.ctx)
	if err != nil {
		return &protocolError{kind: "bad_policy", code: codes.InvalidArgument, msg: err.Error()}
	}
	h := readHeaders(hm.GetHeaders())
	st.method, st.path = h[":method"], h[":path"]
	st.clientModel = h[policy.ModelHeader]
	st.usePolicy(rp.Policy, h)
	if routematch.OddEscape(st.path) {
		// Envoy routed the path as written; a server that decodes it
		// would serve another path, past this route's limits.
		return st.refuse(fmt.Sprintf("path %q holds an escape a server would decode after routing; send it unescaped", st.path), "infergate_odd_path_escape")
	}
	cc := directives(h[headerCacheControl])
	st.noStore, st.noCache = cc["no-store"], cc["no-cache"]

	if len(rp.models) > 0 && st.clientModel == "" && !hm.GetEndOfStream() {
		st.route, st.reqHeaders = rp, h
	} else if resp := st.enforceLimits(); resp != nil {
		st.phase = finished
		return st.send(resp)
	}
	if hm.GetEndOfStream() {
		return st.requestComplete(endedOnHeaders)
	}
	st.phase = wantRequestBody
	m := &mutation{}
	m.add(policy.PriorityHeader, strconv.Itoa(st.policy.Priority))
	return st.send(requestHeadersResponse(m))
}

// usePolicy makes p the stream's policy, with the tenant and cache scope
// it reads from the request headers h.
func (st *stream) usePolicy(p policy.Policy, h headers) {
	st.policy = p
	st.tenant = tenantOf(h, p)
	st.scope = tenantScope(st.tenant)
	if p.SharedCache {
		st.scope = cache.SharedScope
	}
}

// settleRoute applies the policy of the model route Envoy will take once
// the model header is set, if any, then the rate limits it deferred.
// It returns the 429 or 503 answer, or nil when the request may go on.
func (st *stream) settleRoute(model string) (switched bool, limited *extprocv3.ProcessingResponse) {
	rp, h := st.route, st.reqHeaders
	st.route, st.reqHeaders = nil, nil
	if mr := rp.modelRoute(model, st.path, h); mr != nil {
		st.usePolicy(mr.policy, h)
		switched = true
	}
	return switched, st.enforceLimits()
}

// tenantOf is the tenant header's value or, without one, a hash of the API
// key (so keys never reach logs, metrics or Redis); "" when neither is sent.
func tenantOf(h headers, p policy.Policy) string {
	if t := h[p.TenantHeader]; t != "" {
		return t
	}
	if k := h[p.APIKeyHeader]; k != "" {
		return APIKeyTenant(k)
	}
	return ""
}

// tenantScope is the cache scope of a tenant; the prefix keeps a tenant
// named like cache.SharedScope out of the shared scope.
func tenantScope(tenant string) string { return "t:" + tenant }

// APIKeyTenant is the tenant name of a caller known only by its API key:
// "key:" and 16 hex digits of the key's SHA-256. Purge by this name.
func APIKeyTenant(apiKey string) string {
	sum := sha256.Sum256([]byte(apiKey))
	return "key:" + hex.EncodeToString(sum[:8])
}

func (st *stream) requestBody(b *extprocv3.HttpBody) error {
	if !st.bodyOver {
		if len(st.body)+len(b.GetBody()) > st.s.cfg.MaxBodyBytes {
			st.bodyOver, st.body = true, nil
		} else {
			st.body = append(st.body, b.GetBody()...)
		}
	}
	if !b.GetEndOfStream() {
		// A BUFFERED body that trailers follow comes whole, but with
		// end_of_stream false. Envoy still holds the headers, so deciding
		// now lets the body's model pick the route. A first message that
		// is one whole JSON value is taken as such a body; anything else
		// is a chunk of a STREAMED body, passed on and decided at the end.
		if len(st.body) == len(b.GetBody()) && !st.bodyOver && json.Valid(st.body) {
			st.completedEarly = true
			return st.requestComplete(endedOnBody)
		}
		return st.send(requestBodyResponse(nil, false))
	}
	return st.requestComplete(endedOnBody)
}

// refuse answers the request 400 with msg, in the error shape of its
// API; details goes to Envoy's access log.
func (st *stream) refuse(msg, details string) error {
	st.phase = finished
	m := &mutation{}
	m.add(headerContentType, "application/json")
	return st.send(immediate(http.StatusBadRequest, m, apierror.Body(st.path, http.StatusBadRequest, msg, ""), details))
}

// requestEnd says which message completed the request.
type requestEnd int

const (
	endedOnHeaders requestEnd = iota
	endedOnBody
	endedOnTrailers
)

// requestComplete runs once the whole request is known: model routing, the
// exact cache, further stages, collapsing; then it answers the message that
// completed the request.
func (st *stream) requestComplete(end requestEnd) error {
	st.phase = wantResponseHeaders
	p := st.policy
	req := canonical.Parse(st.body)
	if st.bodyOver {
		req = canonical.Request{}
	}
	if req.Ambiguous != "" {
		// Routing, limits and the cache key would follow one reading of
		// the body and the upstream may serve another.
		return st.refuse("ambiguous JSON body: "+req.Ambiguous, "infergate_ambiguous_body")
	}
	if strings.ContainsFunc(req.Model, func(r rune) bool { return r < ' ' && r != '\t' || r == 0x7f }) {
		// The model travels on as a header, which cannot carry control
		// characters: Envoy would answer 500 for the mutation.
		return st.refuse(fmt.Sprintf("model %q holds control characters", req.Model), "infergate_bad_model_name")
	}
	if st.clientModel != "" && req.Model != "" && st.clientModel != req.Model {
		// Envoy chose the route, and this stream's policy, by the client's
		// header; rewriting the header would send the request to another
		// route under this one's limits.
		return st.refuse(fmt.Sprintf("header %s %q contradicts the body's model %q", policy.ModelHeader, st.clientModel, req.Model), "infergate_model_header_mismatch")
	}
	m := &mutation{}
	if req.Model != "" {
		m.add(policy.ModelHeader, req.Model)
	}
	if st.route != nil {
		switched, limited := st.settleRoute(req.Model)
		if limited != nil {
			st.phase = finished
			return st.send(limited)
		}
		if switched {
			m.add(policy.PriorityHeader, strconv.Itoa(st.policy.Priority))
		}
	}
	p = st.policy
	answer := func() error {
		switch end {
		case endedOnHeaders:
			m.add(policy.PriorityHeader, strconv.Itoa(p.Priority))
			return st.send(requestHeadersResponse(m))
		case endedOnBody:
			// The model header may pick another route: Envoy recomputes it
			// only when told to clear its route cache.
			return st.send(requestBodyResponse(m, req.Model != ""))
		}
		// Trailers answers cannot change headers, which have gone
		// upstream already.
		return st.send(requestTrailersResponse())
	}

	switch {
	case p.Cache == policy.CacheOff:
		st.bypass = "cache-off"
	case st.noStore:
		st.bypass = "no-store"
	case st.bodyOver:
		st.bypass = "body-too-large"
	case !req.Deterministic && !p.CacheNonDeterministic:
		st.bypass = "non-deterministic"
	}
	route := p.Route
	if st.bypass != "" {
		st.s.metrics.lookups.WithLabelValues(route, "bypass").Inc()
		return answer()
	}
	st.cacheable = true
	st.key = cache.NewKey(cache.Request{Method: st.method, Route: route, Path: st.path, Model: req.Model, Scope: st.scope, Body: req.Canonical})
	st.query = &Query{Policy: p, Method: st.method, Path: st.path, Scope: st.scope, Body: st.body, Request: req, Key: st.key}
	if st.noCache {
		// no-cache: go to the origin, but the fresh response may be stored.
		st.s.metrics.lookups.WithLabelValues(route, "bypass").Inc()
		return answer()
	}

	start := time.Now()
	if e, _, ok := st.s.store.Get(st.ctx, st.key); ok {
		st.s.metrics.lookupSeconds.WithLabelValues("hit").Observe(time.Since(start).Seconds())
		st.s.metrics.lookups.WithLabelValues(route, "hit").Inc()
		return st.serveEntry(&e, cacheStatus("hit", ttlParam(e.Remaining(time.Now())), keyParam(st.key)))
	}
	st.s.metrics.lookupSeconds.WithLabelValues("miss").Observe(time.Since(start).Seconds())
	if p.Cache == policy.CacheSemantic {
		for _, stage := range st.s.stages {
			if hit, ok := stage.Lookup(st.ctx, st.query); ok {
				st.s.metrics.lookups.WithLabelValues(route, "hit").Inc()
				status := cacheStatus("hit")
				if !hit.Entry.StoredAt.IsZero() {
					status = cacheStatus("hit", ttlParam(hit.Entry.Remaining(time.Now())))
				}
				return st.serveEntry(hit.Entry, status, hit.Header...)
			}
		}
	}
	if wait := st.s.cfg.Cache.CollapseWait; wait > 0 {
		fl, leader := st.s.flights.Join(st.key)
		if leader {
			st.flight = fl
		} else {
			// Envoy would otherwise time this message out while it waits.
			if err := st.send(extendTimeout(wait + config.CollapseMargin)); err != nil {
				return err
			}
			st.s.metrics.followers.Inc()
			e, ok := fl.Wait(st.ctx, wait)
			st.s.metrics.followers.Dec()
			if ok {
				st.s.metrics.lookups.WithLabelValues(route, "collapsed").Inc()
				return st.serveEntry(e, cacheStatus("fwd=miss", "fwd-status=200", "collapsed", ttlParam(e.Remaining(time.Now())), keyParam(st.key)))
			}
		}
	}
	st.s.metrics.lookups.WithLabelValues(route, "miss").Inc()
	return answer()
}

// serveEntry answers the request from a stored response; extra headers
// (from a Stage) come last and win.
func (st *stream) serveEntry(e *cache.Entry, cacheStatusValue string, extra ...cache.Header) error {
	st.phase = finished
	m := &mutation{}
	for _, h := range e.Header {
		m.add(h.Name, h.Value)
	}
	m.add(headerCacheStatus, cacheStatusValue)
	if !e.StoredAt.IsZero() {
		m.add(headerAge, strconv.FormatInt(e.Age(time.Now()), 10))
	}
	limitHeaders(m, st.checks)
	for _, h := range extra {
		m.add(h.Name, h.Value)
	}
	return st.send(immediate(e.Status, m, e.Body, "infergate_cache_hit"))
}

// finishFlight releases followers of the request this stream leads.
func (st *stream) finishFlight(e *cache.Entry) {
	if st.flight != nil {
		st.flight.Finish(e)
		st.flight = nil
	}
}
