package harness

import (
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
)

// duplex reports whether this direction runs FULL_DUPLEX_STREAMED now.
// Observability mode sends only STREAMED bodies, so it never does.
func (f *filter) duplex(d *direction) bool {
	return d.bodyMode == extprocfilterv3.ProcessingMode_FULL_DUPLEX_STREAMED && !f.complete && !f.observe
}

// fullDuplex is FULL_DUPLEX_STREAMED for one direction. Body chunks and
// trailers go to the processor as they arrive, without waiting for any
// answer (not even the headers answer); the processor answers with the
// headers, then any number of streamed_response body chunks, then the
// trailers, each passed on as it arrives. There is no message timeout, and
// once body has been sent failure_mode_allow no longer applies.
// headersSent says the headers message went out and its answer is due.
func (f *filter) fullDuplex(d *direction, in *message, out emitter, headersSent bool, readTrailers func(), trailers **headerMap) error {
	hdrs := in.headers
	headersPending := headersSent
	if !headersPending {
		if err := out.headers(hdrs); err != nil {
			return err
		}
	}
	readerDone := in.body == nil
	bodyDone := in.body == nil
	trailersPending := false
	var items <-chan chunkItem
	stop := make(chan struct{})
	defer close(stop)
	if in.body != nil {
		items = readChunks(in, readTrailers, stop)
	}

	// passThrough handles the rest once processing is over: headers if
	// still held, then whatever the body still delivers.
	passThrough := func() error {
		if headersPending {
			headersPending = false
			if err := out.headers(hdrs); err != nil {
				return err
			}
		}
		return nil
	}

	for !readerDone || (!f.complete && (headersPending || !bodyDone || trailersPending)) {
		var itemCh <-chan chunkItem
		if !readerDone {
			itemCh = items
		}
		var recvCh <-chan recvResult
		if !f.complete {
			recvCh = f.recv
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
			if f.complete {
				if err := passThrough(); err != nil {
					return err
				}
				if len(it.data) > 0 {
					if err := out.data(it.data); err != nil {
						return err
					}
				}
				break
			}
			eos := it.end && *trailers == nil
			if len(it.data) > 0 || eos {
				if _, err := f.send(d, bodyRequest(d, it.data, eos)); err != nil {
					return err
				}
				f.failOpen = false
			}
			if it.end && *trailers != nil && !f.complete {
				if _, err := f.send(d, trailersRequest(d, (*trailers).proto(f.h.forward))); err != nil {
					return err
				}
				trailersPending = true
			}
		case r := <-recvCh:
			wants := []msgKind{kindBody, kindTrailers}
			if headersPending {
				wants = []msgKind{kindHeaders}
			}
			resp, done, err := f.receive(r, d, wants...)
			if err != nil {
				return err
			}
			if !done {
				break
			}
			if resp == nil {
				if err := passThrough(); err != nil {
					return err
				}
				break
			}
			if err := f.duplexAnswer(d, resp, hdrs, &headersPending, &bodyDone, &trailersPending, out, trailers); err != nil {
				return err
			}
		}
	}
	f.timerArmed = false
	if err := passThrough(); err != nil {
		return err
	}
	if *trailers != nil {
		return out.trailers(*trailers)
	}
	return nil
}

// duplexAnswer applies one answer in FULL_DUPLEX_STREAMED mode.
func (f *filter) duplexAnswer(d *direction, resp *extprocv3.ProcessingResponse, hdrs *headerMap,
	headersPending, bodyDone, trailersPending *bool, out emitter, trailers **headerMap) error {
	switch {
	case *headersPending:
		cr := headersCommon(d, resp)
		if err := f.applyHeaderMutation(cr.GetHeaderMutation(), hdrs, false); err != nil {
			return err
		}
		f.routeCache(d, cr)
		*headersPending = false
		return out.headers(hdrs)
	case resp.GetRequestTrailers() != nil || resp.GetResponseTrailers() != nil:
		// Only after the trailers message went out (so after the reader
		// delivered them) may *trailers be read here.
		if !*trailersPending {
			return f.grpcFailed("ext_proc_error_spurious_message")
		}
		if err := f.applyHeaderMutation(trailersMutation(d, resp), *trailers, false); err != nil {
			return err
		}
		*trailersPending = false
		*bodyDone = true
		return nil
	}
	sr := bodyCommon(d, resp).GetBodyMutation().GetStreamedResponse()
	if sr == nil || *bodyDone {
		// Only streamed_response is accepted in this mode.
		return f.grpcFailed("ext_proc_error_spurious_message")
	}
	if sr.GetEndOfStream() {
		*bodyDone = true
	}
	f.routeCache(d, bodyCommon(d, resp))
	if len(sr.GetBody()) == 0 {
		return nil
	}
	return out.data(sr.GetBody())
}
