package harness

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
)

// chunkSize bounds one read from a body, like one read from Envoy's socket.
const chunkSize = 32 << 10

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
	body, mutated, err := f.exchangeBody(d, body, *trailers == nil, hdrs)
	if err != nil {
		return err
	}
	if mutated {
		if cl, ok := hdrs.get("content-length"); ok {
			if n, err := strconv.Atoi(cl); err == nil && n != len(body) {
				return f.mutationFailed(&mutationError{fmt.Sprintf(
					"mismatch between content-length %d and the length %d of the mutated body", n, len(body))})
			}
		}
	}
	if err := out.headers(hdrs); err != nil {
		return err
	}
	return out.data(body)
}

// exchangeBody sends body as one message and applies the answer. The
// headers wait for it (BUFFERED and BUFFERED_PARTIAL), so its header
// mutation still applies to them; mutated reports a body mutation.
func (f *filter) exchangeBody(d *direction, body []byte, eos bool, hdrs *headerMap) (_ []byte, mutated bool, _ error) {
	sent, err := f.send(d, bodyRequest(d, body, eos))
	if err != nil || !sent {
		return body, false, err
	}
	resp, err := f.await(d, kindBody)
	if err != nil || resp == nil {
		return body, false, err
	}
	cr := bodyCommon(d, resp)
	if err := f.applyHeaderMutation(cr.GetHeaderMutation(), hdrs, false); err != nil {
		return body, false, err
	}
	if bm := cr.GetBodyMutation(); bm != nil {
		body, mutated = mutateBody(bm, body), true
	}
	f.routeCache(d, cr)
	return body, mutated, nil
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
	part, _, err = f.exchangeBody(d, part, !over && *trailers == nil, hdrs)
	if err != nil {
		return err
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

// readChunks reads in.body on its own goroutine, one item per read, so a
// body keeps flowing while answers are awaited. The last item has end set;
// readTrailers runs before it is delivered.
func readChunks(in *message, readTrailers func(), stop <-chan struct{}) <-chan chunkItem {
	items := make(chan chunkItem)
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
	return items
}

// streamedBody is STREAMED mode. As in Envoy, each chunk is sent as soon as
// it is read, without waiting for the answers to earlier chunks; answers
// come back one per chunk, in order, and each processed chunk is passed on
// when its answer arrives. The message timer restarts on every send and
// stops on every answer.
func (f *filter) streamedBody(d *direction, in *message, out emitter, readTrailers func(), trailers **headerMap) error {
	stop := make(chan struct{})
	defer close(stop)
	items := readChunks(in, readTrailers, stop)

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
			f.routeCache(d, cr)
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

func headersRequest(d *direction, h *corev3.HeaderMap, eos bool) *extprocv3.ProcessingRequest {
	hh := &extprocv3.HttpHeaders{Headers: h, EndOfStream: eos}
	if d.request {
		return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: hh}}
	}
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: hh}}
}

func trailersRequest(d *direction, h *corev3.HeaderMap) *extprocv3.ProcessingRequest {
	t := &extprocv3.HttpTrailers{Trailers: h}
	if d.request {
		return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestTrailers{RequestTrailers: t}}
	}
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseTrailers{ResponseTrailers: t}}
}

func headersCommon(d *direction, resp *extprocv3.ProcessingResponse) *extprocv3.CommonResponse {
	if d.request {
		return resp.GetRequestHeaders().GetResponse()
	}
	return resp.GetResponseHeaders().GetResponse()
}

func trailersMutation(d *direction, resp *extprocv3.ProcessingResponse) *extprocv3.HeaderMutation {
	if d.request {
		return resp.GetRequestTrailers().GetHeaderMutation()
	}
	return resp.GetResponseTrailers().GetHeaderMutation()
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
