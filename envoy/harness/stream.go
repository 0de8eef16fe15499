package harness

import (
	"context"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
)

type recvResult struct {
	resp *extprocv3.ProcessingResponse
	err  error
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
			pr.Attributes = map[string]*structpb.Struct{filterName: f.attributes(names)}
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
	recv, done, observe := make(chan recvResult, 16), make(chan struct{}), f.observe
	f.stream, f.cancel, f.recv, f.recvDone = stream, cancel, recv, done
	go func() {
		defer close(done)
		for {
			r, err := stream.Recv()
			if observe {
				// Envoy ignores answers in observability mode.
				if err != nil {
					return
				}
				continue
			}
			select {
			case recv <- recvResult{r, err}:
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
func (f *filter) receive(r recvResult, d *direction, wants ...msgKind) (resp *extprocv3.ProcessingResponse, done bool, err error) {
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
	if slices.Contains(wants, kindHeaders) && resp.GetModeOverride() != nil && f.modeOverrideAllowed(resp.GetModeOverride()) {
		f.dec.setMode(resp.GetModeOverride())
		f.enc.setMode(resp.GetModeOverride())
	}
	if ir := resp.GetImmediateResponse(); ir != nil {
		if f.h.filter.GetDisableImmediateResponse() {
			return nil, true, f.spurious()
		}
		f.complete = true
		f.closeStream(true)
		return nil, true, immediateReply(ir)
	}
	if !answers(resp, d, wants) {
		return nil, true, f.spurious()
	}
	return resp, true, nil
}

func answers(resp *extprocv3.ProcessingResponse, d *direction, wants []msgKind) bool {
	var request bool
	var kind msgKind
	switch resp.GetResponse().(type) {
	case *extprocv3.ProcessingResponse_RequestHeaders:
		request, kind = true, kindHeaders
	case *extprocv3.ProcessingResponse_RequestBody:
		request, kind = true, kindBody
	case *extprocv3.ProcessingResponse_RequestTrailers:
		request, kind = true, kindTrailers
	case *extprocv3.ProcessingResponse_ResponseHeaders:
		kind = kindHeaders
	case *extprocv3.ProcessingResponse_ResponseBody:
		kind = kindBody
	case *extprocv3.ProcessingResponse_ResponseTrailers:
		kind = kindTrailers
	default:
		return false
	}
	return request == d.request && slices.Contains(wants, kind)
}

// modeOverrideAllowed: only with allow_mode_override, never when body is
// sent without waiting or either direction runs FULL_DUPLEX_STREAMED, never
// into FULL_DUPLEX_STREAMED or GRPC, and only modes in
// allowed_override_modes when that list is set (request_header_mode is not
// compared).
func (f *filter) modeOverrideAllowed(m *extprocfilterv3.ProcessingMode) bool {
	cfg := f.h.filter
	if !cfg.GetAllowModeOverride() || cfg.GetSendBodyWithoutWaitingForHeaderResponse() {
		return false
	}
	streaming := func(b extprocfilterv3.ProcessingMode_BodySendMode) bool {
		return b == extprocfilterv3.ProcessingMode_FULL_DUPLEX_STREAMED || b == extprocfilterv3.ProcessingMode_GRPC
	}
	if streaming(f.dec.bodyMode) || streaming(f.enc.bodyMode) ||
		streaming(m.GetRequestBodyMode()) || streaming(m.GetResponseBodyMode()) {
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

// spurious is Envoy's answer to a response it did not ask for (or an
// ImmediateResponse under disable_immediate_response): Filter::onReceiveMessage
// closes the stream and, since envoyproxy/envoy#39994, follows
// failure_mode_allow: the rest of the request passes unprocessed, or the
// client gets a 500.
func (f *filter) spurious() error {
	f.complete = true
	f.closeStream(true)
	if f.failOpen {
		return nil
	}
	return &localReply{status: http.StatusInternalServerError, details: "ext_proc_error_spurious_message"}
}

// grpcFailed is Envoy's onGrpcError:
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
