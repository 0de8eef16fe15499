package extproc

import (
	"errors"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
)

// FuzzStream feeds the state machine arbitrary message sequences (kinds,
// bodies, header values, end-of-stream flags): it must never panic, and
// every error it returns must be a protocol error that ends the stream
// with a gRPC status.
func FuzzStream(f *testing.F) {
	f.Add([]byte{0, 1, 3, 4}, []byte(`{"model":"m","input":"x"}`), "200", "text/event-stream")
	f.Add([]byte{1, 0}, []byte("\xff\x00"), "abc", "")
	f.Add([]byte{0, 3, 4, 4, 5}, []byte("data: [DONE]\n\n"), "200", "text/event-stream")
	f.Add([]byte{0, 2, 3, 5}, []byte(`{"usage":{"total_tokens":9}}`), "429", "application/json; charset=utf-8")
	f.Fuzz(func(t *testing.T, kinds []byte, payload []byte, status, contentType string) {
		s, ctx := benchServer(t)
		st := &stream{s: s, ctx: ctx, send: func(*extprocv3.ProcessingResponse) error { return nil }}
		defer st.finishFlight(nil)
		for i, k := range kinds {
			eos := i == len(kinds)-1 || k&0x80 != 0
			var req *extprocv3.ProcessingRequest
			switch k % 7 {
			case 0:
				req = headersMsg(eos, ":method", "POST", ":path", "/v1/chat/completions", "cache-control", contentType, "x-tenant-id", status)
			case 1:
				req = &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: &extprocv3.HttpBody{Body: payload, EndOfStream: eos}}}
			case 2:
				req = &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestTrailers{RequestTrailers: &extprocv3.HttpTrailers{}}}
			case 3:
				req = &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{
					EndOfStream: eos,
					Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
						{Key: ":status", RawValue: []byte(status)}, {Key: "content-type", RawValue: []byte(contentType)},
						{Key: "content-length", RawValue: []byte(status)}, {Key: "cache-control", RawValue: payload}}}}}}
			case 4:
				req = &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: &extprocv3.HttpBody{Body: payload, EndOfStream: eos}}}
			case 5:
				req = &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseTrailers{ResponseTrailers: &extprocv3.HttpTrailers{}}}
			default:
				req = &extprocv3.ProcessingRequest{}
			}
			_, err := st.handle(req)
			if err != nil {
				var pe *protocolError
				if !errors.As(err, &pe) {
					t.Fatalf("message %d: error %v is not a protocol error", i, err)
				}
				return
			}
			if st.phase == finished {
				return
			}
		}
	})
}
