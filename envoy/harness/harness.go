// Package harness drives an ext_proc gRPC server exactly as Envoy's ext_proc
// HTTP filter does, so the project's end-to-end tests can run without an
// Envoy binary. A request goes through the real gRPC Process stream (one per
// HTTP request), every answer is applied with Envoy's rules (mutation
// checks, body modes, timeouts, failure modes, local replies), and a request
// that continues is forwarded to a real upstream over HTTP. The rules are in
// /work/shared/envoy-extproc-behaviour.md and follow Envoy's
// source/extensions/filters/http/ext_proc.
//
// Use Harness.Do from a test to get the final response plus the exact
// sequence of messages exchanged, or Harness.Handler to put the harness in
// front of an upstream as a mini-Envoy that plain HTTP clients can call.
package harness

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Config is what Envoy would know about the request path through ext_proc.
// NoHealthyUpstream is what Config.Route returns for a route none of whose
// clusters has an endpoint: Envoy's router answers 503 "no healthy
// upstream" itself, after the request phase, and the reply goes through
// ext_proc's response phase.
const NoHealthyUpstream = "envoy:no-healthy-upstream"

type Config struct {
	// Filter is the ext_proc filter config as the control plane would send
	// it (its grpc_service target is ignored: the harness dials the address
	// given to New). Nil means all defaults: request and response headers
	// sent, bodies NONE, trailers SKIP, 200 ms message timeout.
	Filter *extprocfilterv3.ExternalProcessor
	// PerRoute is the route's ExtProcPerRoute (typed_per_filter_config),
	// if any: disabled, processing_mode, attributes, failure_mode_allow and
	// grpc_initial_metadata overrides.
	PerRoute *extprocfilterv3.ExtProcPerRoute
	// Upstream is the base URL (http://host:port) requests are forwarded to
	// when Route is nil.
	Upstream string
	// Route picks the upstream base URL from the request headers and path,
	// like Envoy's route table. It is evaluated once on the original request
	// (Envoy caches the route before ext_proc runs) and again only if the
	// processor clears the route cache. An empty result is a 404 (no route);
	// NoHealthyUpstream is a route whose clusters have no endpoint.
	Route func(header http.Header, path string) string
	// Attributes supplies attribute values that Envoy would compute with
	// CEL and the harness cannot (for example "xds.route_name"). Requested
	// attributes found neither here nor among the built-in request
	// attributes are left out, as Envoy leaves out ones that fail.
	Attributes map[string]*structpb.Value
	// DynamicMetadata is the request's dynamic metadata by namespace; the
	// namespaces listed in metadata_options.forwarding_namespaces.untyped
	// ride in metadata_context on every message.
	DynamicMetadata map[string]*structpb.Struct
	// BufferLimit is the connection buffer limit
	// (per_connection_buffer_limit_bytes) that caps BUFFERED bodies.
	// Default 1 MiB.
	BufferLimit int
	// HTTPClient forwards requests upstream. Default: a client that does not
	// follow redirects.
	HTTPClient *http.Client
}

// Message is one message on the Process stream: exactly one of Sent and
// Received is set.
type Message struct {
	Sent     *extprocv3.ProcessingRequest
	Received *extprocv3.ProcessingResponse
}

// UpstreamRequest is what the upstream was sent.
type UpstreamRequest struct {
	Method  string
	URL     string
	Host    string
	Header  http.Header
	Body    []byte
	Trailer http.Header
}

// Result is what the client saw and how it came about.
type Result struct {
	Status  int
	Header  http.Header
	Body    []byte
	Trailer http.Header
	// Chunks is the body as it was written to the client, write by write:
	// a STREAMED response shows one entry per processed chunk.
	Chunks [][]byte
	// Reset is set when Envoy would reset the stream because an error came
	// after the response headers were already sent; the client sees a
	// truncated response.
	Reset bool
	// Messages is every message on the Process stream, in order.
	Messages []Message
	// Upstream is the request forwarded upstream, nil when none was sent.
	Upstream *UpstreamRequest
	// RouteCacheCleared reports that the processor cleared the route cache
	// and the route was recomputed from the mutated request.
	RouteCacheCleared bool
	// LocalReply is the local reply's details (Envoy's
	// response_code_details) when Envoy answered itself, such as
	// "ext_proc_error_gRPC_error_14" or "ext_proc_immediate_response"; empty
	// when the upstream answered.
	LocalReply string
	// RejectedHeaderMutations counts mutations ignored by the mutation rules.
	RejectedHeaderMutations int
}

// Sent returns the messages sent to the processor, in order.
func (r *Result) Sent() []*extprocv3.ProcessingRequest {
	var out []*extprocv3.ProcessingRequest
	for _, m := range r.Messages {
		if m.Sent != nil {
			out = append(out, m.Sent)
		}
	}
	return out
}

// Received returns the messages received from the processor, in order.
func (r *Result) Received() []*extprocv3.ProcessingResponse {
	var out []*extprocv3.ProcessingResponse
	for _, m := range r.Messages {
		if m.Received != nil {
			out = append(out, m.Received)
		}
	}
	return out
}

// Harness is a mini-Envoy with one ext_proc filter. It is safe for
// concurrent use.
type Harness struct {
	cfg      Config
	filter   *extprocfilterv3.ExternalProcessor
	conn     *grpc.ClientConn
	client   extprocv3.ExternalProcessorClient
	http     *http.Client
	checker  *mutationChecker
	forward  *forwardRules
	closers  sync.WaitGroup
	closeCtx context.Context
	stop     context.CancelFunc
}

// DefaultBufferLimit is Envoy's default per_connection_buffer_limit_bytes.
const DefaultBufferLimit = 1 << 20

// New validates cfg (the filter protos with their generated rules) and
// prepares a client for the ext_proc server at extprocAddr (host:port).
// Nothing is dialled until the first request, as in Envoy.
func New(extprocAddr string, cfg Config) (*Harness, error) {
	filter := cfg.Filter
	if filter == nil {
		filter = &extprocfilterv3.ExternalProcessor{}
	}
	if err := filter.ValidateAll(); err != nil {
		return nil, fmt.Errorf("harness: ext_proc filter config: %w", err)
	}
	if cfg.PerRoute != nil {
		if err := cfg.PerRoute.ValidateAll(); err != nil {
			return nil, fmt.Errorf("harness: ext_proc per-route config: %w", err)
		}
	}
	if filter.GetDisableClearRouteCache() && filter.GetRouteCacheAction() != extprocfilterv3.ExternalProcessor_DEFAULT {
		return nil, errors.New("harness: disable_clear_route_cache and route_cache_action cannot both be set")
	}
	if err := supported(filter, cfg.PerRoute); err != nil {
		return nil, err
	}
	if cfg.Route == nil && cfg.Upstream == "" {
		return nil, errors.New("harness: either Upstream or Route must be set")
	}
	checker, err := newMutationChecker(filter.GetMutationRules())
	if err != nil {
		return nil, fmt.Errorf("harness: %w", err)
	}
	forward, err := newForwardRules(filter.GetForwardRules())
	if err != nil {
		return nil, fmt.Errorf("harness: %w", err)
	}
	conn, err := grpc.NewClient(extprocAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("harness: ext_proc address %q: %w", extprocAddr, err)
	}
	if cfg.BufferLimit <= 0 {
		cfg.BufferLimit = DefaultBufferLimit
	}
	client := cfg.HTTPClient
	if client == nil {
		client = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	ctx, stop := context.WithCancel(context.Background())
	return &Harness{
		cfg:      cfg,
		filter:   filter,
		conn:     conn,
		client:   extprocv3.NewExternalProcessorClient(conn),
		http:     client,
		checker:  checker,
		forward:  forward,
		closeCtx: ctx,
		stop:     stop,
	}, nil
}

// Close waits for streams still closing (each bounded by its grace period,
// deferred_close_timeout in observability mode) and closes the gRPC
// connection.
func (h *Harness) Close() error {
	h.closers.Wait()
	h.stop()
	return h.conn.Close()
}

// Do sends req (a client request: URL, Host, Header, Body, Trailer) through
// the filter and the upstream and returns what the client would see. The
// error is only for a failure on the client's side (ctx cancelled, request
// body unreadable); every Envoy outcome, local replies included, is in the
// Result.
func (h *Harness) Do(ctx context.Context, req *http.Request) (*Result, error) {
	rec := &recorder{}
	res, err := h.serve(ctx, req, rec)
	if err != nil {
		return nil, err
	}
	rec.fill(res)
	return res, nil
}

// Handler serves HTTP as Envoy's listener would: each request goes through
// the filter and the upstream, and the response is streamed to the client
// as it is processed (an SSE stream stays a stream). A reset after the
// headers went out aborts the connection.
func (h *Harness) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sink := &writerSink{w: w}
		if _, err := h.serve(r.Context(), r, sink); err != nil {
			return
		}
		if sink.reset {
			panic(http.ErrAbortHandler)
		}
	})
}

// supported refuses the options whose Envoy behaviour the harness does not
// reproduce, so a test cannot pass against behaviour Envoy would not have,
// and the FULL_DUPLEX_STREAMED configs Envoy itself rejects.
func supported(filter *extprocfilterv3.ExternalProcessor, perRoute *extprocfilterv3.ExtProcPerRoute) error {
	if filter.GetSendBodyWithoutWaitingForHeaderResponse() {
		return errors.New("harness: send_body_without_waiting_for_header_response is not supported")
	}
	for _, m := range []*extprocfilterv3.ProcessingMode{filter.GetProcessingMode(), perRoute.GetOverrides().GetProcessingMode()} {
		if m.GetRequestBodyMode() == extprocfilterv3.ProcessingMode_GRPC || m.GetResponseBodyMode() == extprocfilterv3.ProcessingMode_GRPC {
			return errors.New("harness: body mode GRPC is not supported")
		}
		if m.GetRequestBodyMode() == extprocfilterv3.ProcessingMode_FULL_DUPLEX_STREAMED && m.GetRequestTrailerMode() != extprocfilterv3.ProcessingMode_SEND ||
			m.GetResponseBodyMode() == extprocfilterv3.ProcessingMode_FULL_DUPLEX_STREAMED && m.GetResponseTrailerMode() != extprocfilterv3.ProcessingMode_SEND {
			return errors.New("harness: FULL_DUPLEX_STREAMED needs the trailer mode of its direction set to SEND")
		}
	}
	return nil
}

// modes resolves the processing mode Envoy starts the request with: the
// filter's, replaced by the route's override, all SKIP when disabled there.
func (h *Harness) modes() *extprocfilterv3.ProcessingMode {
	if pr := h.cfg.PerRoute; pr != nil {
		if pr.GetDisabled() {
			return &extprocfilterv3.ProcessingMode{
				RequestHeaderMode:  extprocfilterv3.ProcessingMode_SKIP,
				ResponseHeaderMode: extprocfilterv3.ProcessingMode_SKIP,
			}
		}
		if m := pr.GetOverrides().GetProcessingMode(); m != nil {
			return proto.Clone(m).(*extprocfilterv3.ProcessingMode)
		}
	}
	if m := h.filter.GetProcessingMode(); m != nil {
		return proto.Clone(m).(*extprocfilterv3.ProcessingMode)
	}
	return &extprocfilterv3.ProcessingMode{}
}

func (h *Harness) failureModeAllow() bool {
	if v := h.cfg.PerRoute.GetOverrides().GetFailureModeAllow(); v != nil {
		return v.GetValue()
	}
	return h.filter.GetFailureModeAllow()
}

func (h *Harness) attributeNames(request bool) []string {
	o := h.cfg.PerRoute.GetOverrides()
	if request {
		if len(o.GetRequestAttributes()) > 0 {
			return o.GetRequestAttributes()
		}
		return h.filter.GetRequestAttributes()
	}
	if len(o.GetResponseAttributes()) > 0 {
		return o.GetResponseAttributes()
	}
	return h.filter.GetResponseAttributes()
}

func (h *Harness) forwardingNamespaces() []string {
	if mo := h.cfg.PerRoute.GetOverrides().GetMetadataOptions(); mo.GetForwardingNamespaces() != nil {
		return mo.GetForwardingNamespaces().GetUntyped()
	}
	return h.filter.GetMetadataOptions().GetForwardingNamespaces().GetUntyped()
}

// messageTimeout is message_timeout, default 200 ms.
func (h *Harness) messageTimeout() time.Duration {
	if d := h.filter.GetMessageTimeout(); d != nil {
		return d.AsDuration()
	}
	return 200 * time.Millisecond
}

func (h *Harness) statusOnError() int {
	if s := h.filter.GetStatusOnError(); s != nil && s.GetCode() != 0 {
		return int(s.GetCode())
	}
	return http.StatusInternalServerError
}

func wrapTrue() *wrapperspb.BoolValue { return wrapperspb.Bool(true) }
