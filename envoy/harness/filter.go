package harness

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
)

// filterName is the key Envoy puts attributes under.
const filterName = "envoy.filters.http.ext_proc"

// chunkSize bounds one read from a body, like one read from Envoy's socket.
const chunkSize = 32 << 10

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

func (d *direction) name() string {
	if d.request {
		return "request"
	}
	return "response"
}

// localReply is Envoy answering the client itself. It travels as an error
// through the phase that produced it.
type localReply struct {
	status     int
	body       []byte
	headers    *extprocv3.HeaderMutation
	grpcStatus *uint32
	details    string
	// encode marks replies made by the router or the filter manager
	// (no route, upstream failure, request too large): Envoy runs them
	// through the response phase of ext_proc. Replies made by ext_proc
	// itself are not processed again.
	encode bool
}

func (l *localReply) Error() string { return fmt.Sprintf("local reply %d: %s", l.status, l.details) }

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

type recvResult struct {
	resp *extprocv3.ProcessingResponse
	err  error
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

	if d.sendHeaders && !f.complete {
		req := &extprocv3.HttpHeaders{Headers: hdrs.proto(f.h.forward), EndOfStream: noBody}
		pr := &extprocv3.ProcessingRequest{}
		if d.request {
			pr.Request = &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: req}
		} else {
			pr.Request = &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: req}
		}
		sent, err := f.send(d, pr)
		if err != nil {
			return err
		}
		f.dropContentLength(d, hdrs)
		if sent {
			resp, err := f.await(d, kindHeaders)
			if err != nil {
				return err
			}
			if resp != nil {
				cr := resp.GetRequestHeaders().GetResponse()
				if !d.request {
					cr = resp.GetResponseHeaders().GetResponse()
				}
				replacing := cr.GetStatus() == extprocv3.CommonResponse_CONTINUE_AND_REPLACE
				if err := f.applyHeaderMutation(cr.GetHeaderMutation(), hdrs, replacing); err != nil {
					return err
				}
				f.routeCache(d, cr, true)
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
		tr := &extprocv3.HttpTrailers{Trailers: trailers.proto(f.h.forward)}
		pr := &extprocv3.ProcessingRequest{}
		if d.request {
			pr.Request = &extprocv3.ProcessingRequest_RequestTrailers{RequestTrailers: tr}
		} else {
			pr.Request = &extprocv3.ProcessingRequest_ResponseTrailers{ResponseTrailers: tr}
		}
		sent, err := f.send(d, pr)
		if err != nil {
			return err
		}
		if sent {
			resp, err := f.await(d, kindTrailers)
			if err != nil {
				return err
			}
			if resp != nil {
				mut := resp.GetRequestTrailers().GetHeaderMutation()
				if !d.request {
					mut = resp.GetResponseTrailers().GetHeaderMutation()
				}
				if err := f.applyHeaderMutation(mut, trailers, false); err != nil {
					return err
				}
			}
		}
	}
	return out.trailers(trailers)
}

// bufferedBody is BUFFERED mode: the whole body in one message, headers held
// until its answer so a body response may still change them.
func (f *filter) bufferedBody(d *direction, in *message, hdrs *headerMap, out emitter, readTrailers func(), trailers **headerMap) error {
	body, over, err := readUpTo(in.body, f.h.cfg.BufferLimit)
	if err != nil {
		return err
	}
	if over {
		return f.overLimit(d)
	}
	readTrailers()
	sent, err := f.send(d, bodyRequest(d, body, *trailers == nil))
	if err != nil {
		return err
	}
	if sent {
		resp, err := f.await(d, kindBody)
		if err != nil {
			return err
		}
		if resp != nil {
			cr := bodyCommon(d, resp)
			if err := f.applyHeaderMutation(cr.GetHeaderMutation(), hdrs, false); err != nil {
				return err
			}
			if bm := cr.GetBodyMutation(); bm != nil {
				body = mutateBody(bm, body)
				if cl, ok := hdrs.get("content-length"); ok {
					if n, err := strconv.Atoi(cl); err == nil && n != len(body) {
						return f.mutationFailed(&mutationError{fmt.Sprintf(
							"mismatch between content-length %d and the length %d of the mutated body", n, len(body))})
					}
				}
			}
			f.routeCache(d, cr, false)
		}
	}
	if err := out.headers(hdrs); err != nil {
		return err
	}
	return out.data(body)
}

// partialBody is BUFFERED_PARTIAL mode: what arrived up to the buffer limit
// (or the end) goes in one message; the rest passes unprocessed.
func (f *filter) partialBody(d *direction, in *message, hdrs *headerMap, out emitter, readTrailers func(), trailers **headerMap) error {
	part, over, err := readUpTo(in.body, f.h.cfg.BufferLimit)
	if err != nil {
		return err
	}
	var rest []byte
	if over {
		// readUpTo read one byte past the limit to learn that more follows.
		part, rest = part[:f.h.cfg.BufferLimit], part[f.h.cfg.BufferLimit:]
	} else {
		readTrailers()
	}
	sent, err := f.send(d, bodyRequest(d, part, !over && *trailers == nil))
	if err != nil {
		return err
	}
	if sent {
		resp, err := f.await(d, kindBody)
		if err != nil {
			return err
		}
		if resp != nil {
			cr := bodyCommon(d, resp)
			if bm := cr.GetBodyMutation(); bm != nil {
				part = mutateBody(bm, part)
			}
			f.routeCache(d, cr, false)
		}
	}
	if err := out.headers(hdrs); err != nil {
		return err
	}
	if err := out.data(part); err != nil {
		return err
	}
	if over {
		if err := out.data(rest); err != nil {
			return err
		}
		if err := pipe(in.body, out); err != nil {
			return err
		}
		readTrailers()
	}
	return nil
}

// chunkItem is one read from a streamed body.
type chunkItem struct {
	data []byte
	end  bool
	err  error
}

// streamedBody is STREAMED mode. As in Envoy, each chunk is sent as soon as
// it is read, without waiting for the answers to earlier chunks; answers
// come back one per chunk, in order, and each processed chunk is passed on
// when its answer arrives. The message timer restarts on every send and
// stops on every answer.
func (f *filter) streamedBody(d *direction, in *message, out emitter, readTrailers func(), trailers **headerMap) error {
	items := make(chan chunkItem)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		remaining := in.length
		for {
			buf := make([]byte, chunkSize)
			n, err := in.body.Read(buf)
			if remaining >= 0 {
				remaining -= int64(n)
			}
			it := chunkItem{data: buf[:n], end: err == io.EOF || remaining == 0}
			if err != nil && err != io.EOF {
				it = chunkItem{err: err}
			}
			if it.end {
				readTrailers()
			}
			if n == 0 && !it.end && it.err == nil {
				continue
			}
			select {
			case items <- it:
			case <-stop:
				return
			}
			if it.end || it.err != nil {
				return
			}
		}
	}()

	emit := func(p []byte) error {
		if len(p) == 0 {
			return nil
		}
		return out.data(p)
	}
	var queue [][]byte
	flush := func() error {
		for _, p := range queue {
			if err := emit(p); err != nil {
				return err
			}
		}
		queue = nil
		return nil
	}
	readerDone := false
	for !readerDone || len(queue) > 0 {
		var itemCh <-chan chunkItem
		if !readerDone {
			itemCh = items
		}
		var recvCh <-chan recvResult
		var timerC <-chan time.Time
		var timer *time.Timer
		if len(queue) > 0 {
			recvCh = f.recv
			if f.timerArmed {
				timer = time.NewTimer(time.Until(f.deadline))
				timerC = timer.C
			}
		}
		select {
		case <-f.ctx.Done():
			f.complete = true
			f.closeStream(true)
			return f.ctx.Err()
		case it := <-itemCh:
			if it.err != nil {
				return it.err
			}
			readerDone = it.end
			// A body of unknown length ends with an empty end_of_stream
			// chunk, as a chunked HTTP/1 body does in Envoy; with trailers
			// to follow no chunk carries end_of_stream.
			eos := it.end && *trailers == nil
			if len(it.data) == 0 && !eos {
				break
			}
			sent := false
			if !f.complete {
				var err error
				if sent, err = f.send(d, bodyRequest(d, it.data, eos)); err != nil {
					return err
				}
			}
			if !sent || f.observe {
				if err := flush(); err != nil {
					return err
				}
				if err := emit(it.data); err != nil {
					return err
				}
				break
			}
			queue = append(queue, it.data)
		case r := <-recvCh:
			resp, done, err := f.receive(r, d, kindBody)
			if err != nil {
				return err
			}
			if !done {
				break
			}
			if resp == nil {
				if err := flush(); err != nil {
					return err
				}
				break
			}
			chunk := queue[0]
			queue = queue[1:]
			cr := bodyCommon(d, resp)
			if bm := cr.GetBodyMutation(); bm != nil {
				chunk = mutateBody(bm, chunk)
			}
			f.routeCache(d, cr, false)
			if err := emit(chunk); err != nil {
				return err
			}
		case <-timerC:
			if err := f.messageTimedOut(); err != nil {
				return err
			}
			if err := flush(); err != nil {
				return err
			}
		}
		if timer != nil {
			timer.Stop()
		}
	}
	return nil
}

// overLimit is the filter manager's answer to a BUFFERED body over the
// buffer limit. The 413 is a filter-manager reply, so it still goes through
// ext_proc's response phase; the 500 happens in that phase.
func (f *filter) overLimit(d *direction) error {
	if d.request {
		return &localReply{status: http.StatusRequestEntityTooLarge, body: []byte("Payload Too Large"),
			details: "request_payload_too_large", encode: true}
	}
	f.complete = true
	f.closeStream(true)
	return &localReply{status: http.StatusInternalServerError, body: []byte("Internal Server Error"),
		details: "response_payload_too_large"}
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

// routeCache applies route_cache_action / clear_route_cache. Only the
// request direction can change the route.
func (f *filter) routeCache(d *direction, cr *extprocv3.CommonResponse, headersResponse bool) {
	if !d.request || cr == nil {
		return
	}
	action := f.h.filter.GetRouteCacheAction()
	if f.h.filter.GetDisableClearRouteCache() {
		action = extprocfilterv3.ExternalProcessor_RETAIN
	}
	clear := false
	switch action {
	case extprocfilterv3.ExternalProcessor_CLEAR:
		clear = headersResponse
	case extprocfilterv3.ExternalProcessor_DEFAULT:
		clear = cr.GetClearRouteCache() && cr.GetHeaderMutation() != nil
	}
	if clear {
		f.routeCleared = true
		f.res.RouteCacheCleared = true
	}
}

// send puts one message on the stream, opening it first if needed. sent is
// false when processing is already complete (the caller continues
// unprocessed); err is a local reply.
func (f *filter) send(d *direction, pr *extprocv3.ProcessingRequest) (sent bool, err error) {
	if f.complete {
		return false, nil
	}
	if f.stream == nil {
		if err := f.open(); err != nil {
			return false, f.grpcFailed(grpcErrorDetails(err))
		}
	}
	pr.MetadataContext = f.metadataContext()
	if !d.attrsSent {
		if names := f.h.attributeNames(d.request); len(names) > 0 {
			pr.Attributes = map[string]*structpb.Struct{filterName: f.attributes(d, names)}
			d.attrsSent = true
		}
	}
	if !f.sentAny {
		pr.ProtocolConfig = &extprocv3.ProtocolConfiguration{
			RequestBodyMode:                         f.h.modes().GetRequestBodyMode(),
			ResponseBodyMode:                        f.h.modes().GetResponseBodyMode(),
			SendBodyWithoutWaitingForHeaderResponse: f.h.filter.GetSendBodyWithoutWaitingForHeaderResponse(),
		}
		f.sentAny = true
	}
	if f.observe {
		pr.ObservabilityMode = true
	}
	f.res.Messages = append(f.res.Messages, Message{Sent: proto.Clone(pr).(*extprocv3.ProcessingRequest)})
	f.deadline = time.Now().Add(f.timeout)
	f.timerArmed = true
	if err := f.stream.Send(pr); err != nil && err != io.EOF {
		return false, f.grpcFailed(grpcErrorDetails(err))
	}
	// On io.EOF the stream is already over; Recv reports how, in await.
	return true, nil
}

// open starts the Process stream with the initial metadata Envoy would
// send: the filter's grpc_service.initial_metadata merged with the route's
// grpc_initial_metadata.
func (f *filter) open() error {
	md := metadata.MD{}
	for _, hv := range f.h.filter.GetGrpcService().GetInitialMetadata() {
		md.Set(strings.ToLower(hv.GetKey()), headerValue(hv))
	}
	for _, hv := range f.h.cfg.PerRoute.GetOverrides().GetGrpcInitialMetadata() {
		md.Set(strings.ToLower(hv.GetKey()), headerValue(hv))
	}
	ctx, cancel := context.WithCancel(metadata.NewOutgoingContext(f.h.closeCtx, md))
	stream, err := f.h.client.Process(ctx)
	if err != nil {
		cancel()
		return err
	}
	f.stream, f.cancel = stream, cancel
	f.recv = make(chan recvResult, 16)
	f.recvDone = make(chan struct{})
	go func() {
		defer close(f.recvDone)
		for {
			r, err := stream.Recv()
			if f.observe {
				// Envoy ignores answers in observability mode.
				if err != nil {
					return
				}
				continue
			}
			select {
			case f.recv <- recvResult{r, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	return nil
}

func grpcErrorDetails(err error) string {
	return "ext_proc_error_gRPC_error_" + strconv.Itoa(int(status.Code(err)))
}

func headerValue(hv *corev3.HeaderValue) string {
	if hv.GetValue() != "" {
		return hv.GetValue()
	}
	return string(hv.GetRawValue())
}

// await waits for the answer to the last message. A nil response with a nil
// error means processing is over and the request continues unprocessed.
func (f *filter) await(d *direction, want msgKind) (*extprocv3.ProcessingResponse, error) {
	if f.observe {
		return nil, nil
	}
	for {
		timer := time.NewTimer(time.Until(f.deadline))
		var r recvResult
		select {
		case <-f.ctx.Done():
			timer.Stop()
			f.complete = true
			f.closeStream(true)
			return nil, f.ctx.Err()
		case <-timer.C:
			return nil, f.messageTimedOut()
		case r = <-f.recv:
			timer.Stop()
		}
		if resp, done, err := f.receive(r, d, want); done {
			return resp, err
		}
	}
}

// receive is Envoy's onReceiveMessage for one result off the stream. done
// is false when the message only moved the timer and the answer is still
// to come; otherwise resp is the answer, or nil when processing is over
// (the rest passes unprocessed) or err is a local reply.
func (f *filter) receive(r recvResult, d *direction, want msgKind) (resp *extprocv3.ProcessingResponse, done bool, err error) {
	f.timerArmed = false
	if r.err == io.EOF {
		// The server closed the stream with OK: the rest of the request
		// passes unprocessed.
		f.complete = true
		f.closeStream(false)
		return nil, true, nil
	}
	if r.err != nil {
		return nil, true, f.grpcFailed(grpcErrorDetails(r.err))
	}
	resp = r.resp
	f.res.Messages = append(f.res.Messages, Message{Received: resp})
	if t := resp.GetOverrideMessageTimeout(); t != nil {
		f.overrideTimeout(t)
		return nil, false, nil
	}
	if want == kindHeaders && resp.GetModeOverride() != nil && f.modeOverrideAllowed(resp.GetModeOverride()) {
		f.dec.setMode(resp.GetModeOverride())
		f.enc.setMode(resp.GetModeOverride())
	}
	if ir := resp.GetImmediateResponse(); ir != nil {
		if f.h.filter.GetDisableImmediateResponse() {
			return nil, true, f.grpcFailed("ext_proc_error_spurious_message")
		}
		f.complete = true
		f.closeStream(true)
		return nil, true, immediateReply(ir)
	}
	if !answers(resp, d, want) {
		return nil, true, f.grpcFailed("ext_proc_error_spurious_message")
	}
	return resp, true, nil
}

func answers(resp *extprocv3.ProcessingResponse, d *direction, want msgKind) bool {
	switch resp.GetResponse().(type) {
	case *extprocv3.ProcessingResponse_RequestHeaders:
		return d.request && want == kindHeaders
	case *extprocv3.ProcessingResponse_RequestBody:
		return d.request && want == kindBody
	case *extprocv3.ProcessingResponse_RequestTrailers:
		return d.request && want == kindTrailers
	case *extprocv3.ProcessingResponse_ResponseHeaders:
		return !d.request && want == kindHeaders
	case *extprocv3.ProcessingResponse_ResponseBody:
		return !d.request && want == kindBody
	case *extprocv3.ProcessingResponse_ResponseTrailers:
		return !d.request && want == kindTrailers
	}
	return false
}

// modeOverrideAllowed: only with allow_mode_override, never when body is
// sent without waiting, and only modes in
// allowed_override_modes when that list is set (request_header_mode is not
// compared).
func (f *filter) modeOverrideAllowed(m *extprocfilterv3.ProcessingMode) bool {
	cfg := f.h.filter
	if !cfg.GetAllowModeOverride() || cfg.GetSendBodyWithoutWaitingForHeaderResponse() {
		return false
	}
	if !supportedBodyModes(m) {
		// FULL_DUPLEX_STREAMED and GRPC are refused in New; an override
		// into them is ignored rather than run with the wrong behaviour.
		return false
	}
	allowed := cfg.GetAllowedOverrideModes()
	if len(allowed) == 0 {
		return true
	}
	for _, a := range allowed {
		if a.GetResponseHeaderMode() == m.GetResponseHeaderMode() &&
			a.GetRequestBodyMode() == m.GetRequestBodyMode() &&
			a.GetResponseBodyMode() == m.GetResponseBodyMode() &&
			a.GetRequestTrailerMode() == m.GetRequestTrailerMode() &&
			a.GetResponseTrailerMode() == m.GetResponseTrailerMode() {
			return true
		}
	}
	return false
}

// overrideTimeout restarts the message timer with the server's value when it
// is between 1 ms and max_message_timeout; otherwise it is ignored.
func (f *filter) overrideTimeout(t *durationpb.Duration) {
	d := t.AsDuration()
	maxTimeout := f.h.filter.GetMaxMessageTimeout().AsDuration()
	if d < time.Millisecond || d > maxTimeout {
		return
	}
	f.deadline = time.Now().Add(d)
	f.timerArmed = true
}

func (f *filter) messageTimedOut() error {
	f.complete = true
	f.closeStream(true)
	if f.failOpen {
		return nil
	}
	return &localReply{status: http.StatusGatewayTimeout, details: "ext_proc_error_per-message_timeout_exceeded"}
}

// grpcFailed is Envoy's onGrpcError (also used for spurious messages):
// status_on_error, or carry on unprocessed under failure_mode_allow.
func (f *filter) grpcFailed(details string) error {
	f.complete = true
	f.closeStream(true)
	if f.failOpen {
		return nil
	}
	return &localReply{status: f.h.statusOnError(), details: details}
}

// closeStream half-closes the stream. abort also cancels it (Envoy resets
// the stream when it gives up on it); otherwise the server gets a grace
// period (deferred_close_timeout in observability mode) to finish.
func (f *filter) closeStream(abort bool) {
	if f.stream == nil {
		return
	}
	stream, cancel, done := f.stream, f.cancel, f.recvDone
	f.stream = nil
	_ = stream.CloseSend()
	if abort {
		cancel()
		return
	}
	grace := time.Second
	if f.observe {
		grace = 5 * time.Second
		if d := f.h.filter.GetDeferredCloseTimeout(); d != nil {
			grace = d.AsDuration()
		}
	}
	f.h.closers.Add(1)
	go func() {
		defer f.h.closers.Done()
		defer cancel()
		t := time.NewTimer(grace)
		defer t.Stop()
		select {
		case <-done:
		case <-t.C:
		case <-f.h.closeCtx.Done():
		}
	}()
}

func (f *filter) finish() {
	f.closeStream(false)
}

func (f *filter) metadataContext() *corev3.Metadata {
	md := &corev3.Metadata{}
	for _, ns := range f.h.forwardingNamespaces() {
		if s, ok := f.h.cfg.DynamicMetadata[ns]; ok {
			if md.FilterMetadata == nil {
				md.FilterMetadata = map[string]*structpb.Struct{}
			}
			md.FilterMetadata[ns] = s
		}
	}
	return md
}

// attributes evaluates the requested attributes the way Envoy's CEL
// activation would for the common request and response attributes; the test
// supplies the others in Config.Attributes.
func (f *filter) attributes(d *direction, names []string) *structpb.Struct {
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

func bodyRequest(d *direction, body []byte, eos bool) *extprocv3.ProcessingRequest {
	b := &extprocv3.HttpBody{Body: body, EndOfStream: eos}
	if d.request {
		return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: b}}
	}
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: b}}
}

func bodyCommon(d *direction, resp *extprocv3.ProcessingResponse) *extprocv3.CommonResponse {
	if d.request {
		return resp.GetRequestBody().GetResponse()
	}
	return resp.GetResponseBody().GetResponse()
}

func mutateBody(bm *extprocv3.BodyMutation, body []byte) []byte {
	switch m := bm.GetMutation().(type) {
	case *extprocv3.BodyMutation_Body:
		return append([]byte(nil), m.Body...)
	case *extprocv3.BodyMutation_ClearBody:
		if m.ClearBody {
			return nil
		}
	case *extprocv3.BodyMutation_StreamedResponse:
		return append([]byte(nil), m.StreamedResponse.GetBody()...)
	}
	return body
}

// immediateReply is sendImmediateResponse: status default 200, also when
// invalid.
func immediateReply(ir *extprocv3.ImmediateResponse) *localReply {
	code := http.StatusOK
	if ir.GetStatus() != nil {
		code = int(ir.GetStatus().GetCode())
	}
	if !validHTTPStatus(code) {
		code = http.StatusOK
	}
	lr := &localReply{status: code, body: ir.GetBody(), headers: ir.GetHeaders(), details: ir.GetDetails()}
	if lr.details == "" {
		lr.details = "ext_proc_immediate_response"
	}
	lr.details = strings.Join(strings.Fields(lr.details), "_")
	if gs := ir.GetGrpcStatus(); gs != nil {
		s := gs.GetStatus()
		lr.grpcStatus = &s
	}
	return lr
}

// writeLocalReply is Envoy's sendLocalReply: text/plain body for HTTP, a
// trailers-only answer with grpc-status and grpc-message for gRPC.
func (f *filter) writeLocalReply(lr *localReply, out sink) {
	f.res.LocalReply = lr.details
	hdrs := lr.headerMap(f.isGRPC)
	if lr.headers != nil {
		rejected, _ := applyHeaderMutation(lr.headers, hdrs, false, permissiveChecker())
		f.res.RejectedHeaderMutations += rejected
	}
	code, _ := strconv.Atoi(mustGet(hdrs, ":status"))
	out.writeHeader(code, hdrs.httpHeader())
	if !f.isGRPC && len(lr.body) > 0 {
		_ = out.write(lr.body)
	}
}

func (lr *localReply) headerMap(grpcRequest bool) *headerMap {
	hdrs := &headerMap{}
	if grpcRequest {
		hdrs.add(":status", "200")
		hdrs.add("content-type", "application/grpc")
		gs := httpToGRPC(lr.status)
		if lr.grpcStatus != nil {
			gs = *lr.grpcStatus
		}
		hdrs.add("grpc-status", strconv.Itoa(int(gs)))
		if len(lr.body) > 0 {
			hdrs.add("grpc-message", percentEncode(string(lr.body)))
		}
		return hdrs
	}
	hdrs.add(":status", strconv.Itoa(lr.status))
	if len(lr.body) > 0 {
		hdrs.add("content-length", strconv.Itoa(len(lr.body)))
		hdrs.add("content-type", "text/plain")
	}
	return hdrs
}

// asMessage turns a router or filter-manager reply into the response that
// then goes through ext_proc's response phase.
func (lr *localReply) asMessage() *message {
	hdrs := lr.headerMap(false)
	m := &message{headers: hdrs, length: int64(len(lr.body))}
	if len(lr.body) > 0 {
		m.body = bytes.NewReader(lr.body)
	}
	return m
}

func mustGet(m *headerMap, k string) string {
	v, _ := m.get(k)
	return v
}

// httpToGRPC is Envoy's Grpc::Utility::httpToGrpcStatus.
func httpToGRPC(code int) uint32 {
	switch code {
	case 400:
		return uint32(codes.Internal)
	case 401:
		return uint32(codes.Unauthenticated)
	case 403:
		return uint32(codes.PermissionDenied)
	case 404:
		return uint32(codes.Unimplemented)
	case 429, 502, 503, 504:
		return uint32(codes.Unavailable)
	}
	return uint32(codes.Unknown)
}

func percentEncode(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < ' ' || c > '~' || c == '%' {
			fmt.Fprintf(&b, "%%%02X", c)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

func readUpTo(r io.Reader, limit int) (body []byte, over bool, err error) {
	body, err = io.ReadAll(io.LimitReader(r, int64(limit)+1))
	if err != nil {
		return nil, false, err
	}
	if len(body) > limit {
		return body, true, nil
	}
	return body, false, nil
}

func pipe(r io.Reader, out emitter) error {
	buf := make([]byte, chunkSize)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if werr := out.data(append([]byte(nil), buf[:n]...)); werr != nil {
				return werr
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}
