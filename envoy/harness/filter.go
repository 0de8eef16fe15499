package harness

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// filterName is the key Envoy puts attributes under.
const filterName = "envoy.filters.http.ext_proc"

// msgKind is the oneof case a response must carry to answer what was sent.
type msgKind int

const (
	kindHeaders msgKind = iota
	kindBody
	kindTrailers
)

// direction is Envoy's ProcessorState: decoding (request) or encoding
// (response), each with its own modes.
type direction struct {
	request      bool
	sendHeaders  bool
	sendTrailers bool
	bodyMode     extprocfilterv3.ProcessingMode_BodySendMode
	attrsSent    bool
}

func (d *direction) setMode(m *extprocfilterv3.ProcessingMode) {
	if d.request {
		d.sendHeaders = m.GetRequestHeaderMode() != extprocfilterv3.ProcessingMode_SKIP
		d.sendTrailers = m.GetRequestTrailerMode() == extprocfilterv3.ProcessingMode_SEND
		d.bodyMode = m.GetRequestBodyMode()
		return
	}
	d.sendHeaders = m.GetResponseHeaderMode() != extprocfilterv3.ProcessingMode_SKIP
	d.sendTrailers = m.GetResponseTrailerMode() == extprocfilterv3.ProcessingMode_SEND
	d.bodyMode = m.GetResponseBodyMode()
}

// message is one direction of an HTTP exchange as it enters the filter.
type message struct {
	headers *headerMap
	// body is nil when the headers carried end_of_stream.
	body io.Reader
	// length is the known body length or -1.
	length int64
	// trailers is read after the body ends.
	trailers func() http.Header
}

// emitter takes what leaves the filter in one direction.
type emitter interface {
	headers(h *headerMap) error
	data(p []byte) error
	trailers(h *headerMap) error
}

// filter is one HTTP request's ext_proc filter instance.
type filter struct {
	h   *Harness
	ctx context.Context
	res *Result

	dec, enc direction
	complete bool // Envoy's processing_complete_
	observe  bool
	failOpen bool

	stream   extprocv3.ExternalProcessor_ProcessClient
	cancel   context.CancelFunc
	recv     chan recvResult
	recvDone chan struct{}
	sentAny  bool
	timeout  time.Duration
	// deadline is when the message timer fires; timerArmed is false
	// between an answer and the next send.
	deadline   time.Time
	timerArmed bool

	isGRPC       bool
	route        string
	routeCleared bool
	reqHeaders   *headerMap
	respHeaders  *headerMap
}

func (h *Harness) newFilter(ctx context.Context) *filter {
	f := &filter{
		h:        h,
		ctx:      ctx,
		res:      &Result{},
		dec:      direction{request: true},
		observe:  h.filter.GetObservabilityMode(),
		failOpen: h.failureModeAllow(),
		timeout:  h.messageTimeout(),
	}
	m := h.modes()
	f.dec.setMode(m)
	f.enc.setMode(m)
	return f
}

// serve runs one request through the request phase, the upstream and the
// response phase, writing what the client sees to out.
func (h *Harness) serve(ctx context.Context, req *http.Request, out sink) (*Result, error) {
	f := h.newFilter(ctx)
	defer f.finish()

	in := requestMessage(req)
	f.reqHeaders = in.headers
	f.isGRPC = strings.HasPrefix(req.Header.Get("Content-Type"), "application/grpc")
	f.route = h.route(in.headers)

	up := &upstreamCollector{}
	err := f.runDirection(&f.dec, in, up)
	var resp *message
	var lr *localReply
	switch {
	case errors.As(err, &lr) && lr.encode:
		resp = lr.asMessage()
		f.res.LocalReply = lr.details
	case errors.As(err, &lr):
		f.writeLocalReply(lr, out)
		return f.res, nil
	case err != nil:
		return nil, err
	default:
		var closeBody func()
		resp, closeBody, err = f.forward(up)
		if err != nil {
			return nil, err
		}
		defer closeBody()
	}

	err = f.runDirection(&f.enc, resp, &responseEmitter{out: out})
	switch {
	case errors.As(err, &lr) && out.headersSent():
		out.markReset()
		f.res.Reset = true
		f.res.LocalReply = lr.details
	case errors.As(err, &lr):
		f.writeLocalReply(lr, out)
	case err != nil && f.ctx.Err() != nil:
		return nil, err
	case err != nil:
		// The upstream body broke mid-stream: Envoy resets the client.
		out.markReset()
		f.res.Reset = true
		f.res.LocalReply = "upstream_reset_after_response_started"
	}
	return f.res, nil
}

// runDirection is Envoy's decodeHeaders/decodeData/decodeTrailers (or the
// encode side) for one direction.
func (f *filter) runDirection(d *direction, in *message, out emitter) error {
	hdrs := in.headers
	if !d.request {
		f.respHeaders = hdrs
	}
	noBody := in.body == nil
	var replacement []byte
	replaced := false

	var trailers *headerMap
	readTrailers := func() {
		if in.trailers == nil {
			return
		}
		if t := in.trailers(); len(t) > 0 {
			trailers = &headerMap{}
			trailers.appendHTTPHeader(t)
		}
	}

	if d.sendHeaders && !f.complete {
		sent, err := f.send(d, headersRequest(d, hdrs.proto(f.h.forward), noBody))
		if err != nil {
			return err
		}
		f.dropContentLength(d, hdrs)
		if sent && f.duplex(d) {
			return f.fullDuplex(d, in, out, true, readTrailers, &trailers)
		}
		if sent {
			resp, err := f.await(d, kindHeaders)
			if err != nil {
				return err
			}
			if resp != nil {
				cr := headersCommon(d, resp)
				replacing := cr.GetStatus() == extprocv3.CommonResponse_CONTINUE_AND_REPLACE
				if err := f.applyHeaderMutation(cr.GetHeaderMutation(), hdrs, replacing); err != nil {
					return err
				}
				f.routeCache(d, cr)
				if replacing {
					if bm := cr.GetBodyMutation(); bm != nil {
						hdrs.remove("content-length")
						replaced = true
						replacement = mutateBody(bm, nil)
					}
					d.bodyMode = extprocfilterv3.ProcessingMode_NONE
					d.sendTrailers = false
				}
			}
		}
	} else {
		f.dropContentLength(d, hdrs)
	}
	if !noBody && f.duplex(d) {
		return f.fullDuplex(d, in, out, false, readTrailers, &trailers)
	}

	mode := d.bodyMode
	if f.complete {
		mode = extprocfilterv3.ProcessingMode_NONE
	}
	if f.observe && mode != extprocfilterv3.ProcessingMode_STREAMED {
		// Observability mode only sends STREAMED bodies.
		mode = extprocfilterv3.ProcessingMode_NONE
	}
	switch {
	case noBody:
		if err := out.headers(hdrs); err != nil {
			return err
		}
	case replaced:
		if _, err := io.Copy(io.Discard, in.body); err != nil {
			return err
		}
		readTrailers()
		if err := out.headers(hdrs); err != nil {
			return err
		}
		if err := out.data(replacement); err != nil {
			return err
		}
	case mode == extprocfilterv3.ProcessingMode_BUFFERED:
		if err := f.bufferedBody(d, in, hdrs, out, readTrailers, &trailers); err != nil {
			return err
		}
	case mode == extprocfilterv3.ProcessingMode_BUFFERED_PARTIAL:
		if err := f.partialBody(d, in, hdrs, out, readTrailers, &trailers); err != nil {
			return err
		}
	case mode == extprocfilterv3.ProcessingMode_STREAMED:
		if err := out.headers(hdrs); err != nil {
			return err
		}
		if err := f.streamedBody(d, in, out, readTrailers, &trailers); err != nil {
			return err
		}
	default:
		if err := out.headers(hdrs); err != nil {
			return err
		}
		if err := pipe(in.body, out); err != nil {
			return err
		}
		readTrailers()
	}

	if trailers == nil {
		return nil
	}
	if d.sendTrailers && !f.complete {
		sent, err := f.send(d, trailersRequest(d, trailers.proto(f.h.forward)))
		if err != nil {
			return err
		}
		if sent {
			resp, err := f.await(d, kindTrailers)
			if err != nil {
				return err
			}
			if resp != nil {
				if err := f.applyHeaderMutation(trailersMutation(d, resp), trailers, false); err != nil {
					return err
				}
			}
		}
	}
	return out.trailers(trailers)
}

// dropContentLength mirrors shouldRemoveContentLength: a body the processor
// may resize chunk by chunk cannot keep its content-length.
func (f *filter) dropContentLength(d *direction, hdrs *headerMap) {
	if f.complete || f.h.filter.GetAllowContentLengthHeader() {
		return
	}
	switch d.bodyMode {
	case extprocfilterv3.ProcessingMode_STREAMED, extprocfilterv3.ProcessingMode_BUFFERED_PARTIAL,
		extprocfilterv3.ProcessingMode_FULL_DUPLEX_STREAMED:
		hdrs.remove("content-length")
	}
}

func (f *filter) applyHeaderMutation(mut *extprocv3.HeaderMutation, hdrs *headerMap, replacing bool) error {
	if mut == nil {
		return nil
	}
	rejected, err := applyHeaderMutation(mut, hdrs, replacing, f.h.checker)
	f.res.RejectedHeaderMutations += rejected
	if err != nil {
		return f.mutationFailed(err)
	}
	return nil
}

// mutationFailed is any answer Envoy cannot apply: a 500 whatever
// failure_mode_allow says.
func (f *filter) mutationFailed(err error) error {
	f.complete = true
	f.closeStream(true)
	return &localReply{status: http.StatusInternalServerError, details: err.Error()}
}

// routeCache applies route_cache_action / clear_route_cache to a headers
// or body response. Only the request direction can change the route, and
// only a response with a header mutation can clear it, whatever the action.
func (f *filter) routeCache(d *direction, cr *extprocv3.CommonResponse) {
	if !d.request || cr == nil || cr.GetHeaderMutation() == nil {
		return
	}
	action := f.h.filter.GetRouteCacheAction()
	if f.h.filter.GetDisableClearRouteCache() {
		action = extprocfilterv3.ExternalProcessor_RETAIN
	}
	clear := false
	switch action {
	case extprocfilterv3.ExternalProcessor_CLEAR:
		clear = true
	case extprocfilterv3.ExternalProcessor_DEFAULT:
		clear = cr.GetClearRouteCache()
	}
	if clear {
		f.routeCleared = true
		f.res.RouteCacheCleared = true
	}
}

// attributes evaluates the requested attributes the way Envoy's CEL
// activation would for the common request and response attributes; the test
// supplies the others in Config.Attributes.
func (f *filter) attributes(names []string) *structpb.Struct {
	out := &structpb.Struct{Fields: map[string]*structpb.Value{}}
	for _, name := range names {
		if v, ok := f.h.cfg.Attributes[name]; ok {
			out.Fields[name] = v
			continue
		}
		if v := f.builtinAttribute(name); v != nil {
			out.Fields[name] = v
		}
	}
	return out
}

func (f *filter) builtinAttribute(name string) *structpb.Value {
	get := func(m *headerMap, k string) (string, bool) {
		if m == nil {
			return "", false
		}
		return m.get(k)
	}
	str := func(s string, ok bool) *structpb.Value {
		if !ok {
			return nil
		}
		return structpb.NewStringValue(s)
	}
	switch name {
	case "request.path":
		return str(get(f.reqHeaders, ":path"))
	case "request.url_path":
		p, ok := get(f.reqHeaders, ":path")
		if i := strings.IndexByte(p, '?'); i >= 0 {
			p = p[:i]
		}
		return str(p, ok)
	case "request.query":
		p, ok := get(f.reqHeaders, ":path")
		q := ""
		if i := strings.IndexByte(p, '?'); i >= 0 {
			q = p[i+1:]
		}
		return str(q, ok)
	case "request.host":
		return str(get(f.reqHeaders, ":authority"))
	case "request.method":
		return str(get(f.reqHeaders, ":method"))
	case "request.scheme":
		return str(get(f.reqHeaders, ":scheme"))
	case "request.id":
		return str(get(f.reqHeaders, "x-request-id"))
	case "request.protocol":
		return structpb.NewStringValue("HTTP/1.1")
	case "response.code":
		s, ok := get(f.respHeaders, ":status")
		n, err := strconv.Atoi(s)
		if !ok || err != nil {
			return nil
		}
		return structpb.NewNumberValue(float64(n))
	}
	return nil
}
