package extproc

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/metadata"

	"github.com/infergate/infergate/config"
	"github.com/infergate/infergate/policy"
)

// These benchmarks measure the server's own work per request (no gRPC, no
// network): what ext_proc adds to a request on the hit and the miss path.

func benchServer(b testing.TB) (*Server, context.Context) {
	b.Helper()
	cfg := config.Default().ExtProc
	s, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = s.store.Local().Close() })
	p := policy.Policy{Route: "embed"}
	p.Normalize()
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs(policy.MetadataKey, p.Encode()))
	return s, ctx
}

func headersMsg(eos bool, kv ...string) *extprocv3.ProcessingRequest {
	hm := &corev3.HeaderMap{}
	for i := 0; i+1 < len(kv); i += 2 {
		hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: kv[i], RawValue: []byte(kv[i+1])})
	}
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{
		RequestHeaders: &extprocv3.HttpHeaders{Headers: hm, EndOfStream: eos}}}
}

var benchRequestHeaders = headersMsg(false, ":method", "POST", ":path", "/v1/embeddings", ":authority", "infergate.local",
	"content-type", "application/json", "x-tenant-id", "acme", "x-request-id", "0f0e9a52-5b4c-4f0a-9a53-3e1c2d6f7a10")

var benchResponseHeaders = &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{
	ResponseHeaders: &extprocv3.HttpHeaders{Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
		{Key: ":status", RawValue: []byte("200")}, {Key: "content-type", RawValue: []byte("application/json")},
		{Key: "content-length", RawValue: []byte("2200")}}}}}}

func bodyMsg(body []byte, response bool) *extprocv3.ProcessingRequest {
	hb := &extprocv3.HttpBody{Body: body, EndOfStream: true}
	if response {
		return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: hb}}
	}
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: hb}}
}

// embeddingResponse is about the size of a 512-float embedding answer
// trimmed to 100 dimensions: a realistic stored body.
var embeddingResponse = func() []byte {
	b := []byte(`{"object":"list","data":[{"object":"embedding","index":0,"embedding":[`)
	for i := range 100 {
		if i > 0 {
			b = append(b, ',')
		}
		b = fmt.Appendf(b, "%.17f", 0.01*float64(i))
	}
	return append(b, `]}],"model":"use-lite","usage":{"prompt_tokens":8,"total_tokens":8}}`...)
}()

func runStream(s *Server, ctx context.Context, msgs ...*extprocv3.ProcessingRequest) error {
	st := &stream{s: s, ctx: ctx, send: func(*extprocv3.ProcessingResponse) error { return nil }}
	defer st.finishFlight(nil)
	for _, m := range msgs {
		if _, err := st.handle(m); err != nil {
			return err
		}
		if st.phase == finished {
			break
		}
	}
	return nil
}

func BenchmarkProcessHit(b *testing.B) {
	s, ctx := benchServer(b)
	req := bodyMsg([]byte(`{"model":"use-lite","input":"the quick brown fox jumps over the lazy dog"}`), false)
	if err := runStream(s, ctx, benchRequestHeaders, req, benchResponseHeaders, bodyMsg(embeddingResponse, true)); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	lat := make([]time.Duration, 0, b.N)
	for b.Loop() {
		start := time.Now()
		if err := runStream(s, ctx, benchRequestHeaders, req); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	reportP99(b, lat)
}

func BenchmarkProcessMiss(b *testing.B) {
	s, ctx := benchServer(b)
	resp := bodyMsg(embeddingResponse, true)
	b.ReportAllocs()
	lat := make([]time.Duration, 0, b.N)
	i := 0
	for b.Loop() {
		i++
		req := bodyMsg(fmt.Appendf(nil, `{"model":"use-lite","input":"sentence number %d"}`, i), false)
		start := time.Now()
		if err := runStream(s, ctx, benchRequestHeaders, req, benchResponseHeaders, resp); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	reportP99(b, lat)
}

// reportP99 adds the 99th percentile of the per-request times.
func reportP99(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1e3, "p99-µs")
}
