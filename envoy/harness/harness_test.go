package harness_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mutationrulesv3 "github.com/envoyproxy/go-control-plane/envoy/config/common/mutation_rules/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/infergate/infergate/envoy/harness"
	"github.com/infergate/infergate/envoy/harness/harnesstest"
)

const (
	send     = extprocfilterv3.ProcessingMode_SEND
	skip     = extprocfilterv3.ProcessingMode_SKIP
	none     = extprocfilterv3.ProcessingMode_NONE
	buffered = extprocfilterv3.ProcessingMode_BUFFERED
	partial  = extprocfilterv3.ProcessingMode_BUFFERED_PARTIAL
	streamed = extprocfilterv3.ProcessingMode_STREAMED
)

// echoUpstream answers with the request body, the request's method and path
// in headers, and x-upstream: yes.
func echoUpstream(t *testing.T) (*httptest.Server, func() []*http.Request) {
	t.Helper()
	var mu sync.Mutex
	var seen []*http.Request
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		mu.Lock()
		seen = append(seen, r)
		mu.Unlock()
		w.Header().Set("X-Upstream", "yes")
		w.Header().Set("X-Upstream-Path", r.URL.RequestURI())
		w.Header().Set("Content-Type", "text/plain")
		w.Write(body)
	}))
	t.Cleanup(srv.Close)
	return srv, func() []*http.Request {
		mu.Lock()
		defer mu.Unlock()
		return append([]*http.Request(nil), seen...)
	}
}

func staticUpstream(t *testing.T, body string) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, body)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func newHarness(t *testing.T, extproc string, cfg harness.Config) *harness.Harness {
	t.Helper()
	h, err := harness.New(extproc, cfg)
	if err != nil {
		t.Fatalf("harness.New: %v", err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func do(t *testing.T, h *harness.Harness, method, path, body string, header http.Header) *harness.Result {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://svc.local"+path, r)
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	res, err := h.Do(context.Background(), req)
	if err != nil {
		t.Fatalf("Do: %v", err)
	}
	return res
}

func mode(reqH, respH extprocfilterv3.ProcessingMode_HeaderSendMode, reqB, respB extprocfilterv3.ProcessingMode_BodySendMode, reqT, respT extprocfilterv3.ProcessingMode_HeaderSendMode) *extprocfilterv3.ProcessingMode {
	return &extprocfilterv3.ProcessingMode{
		RequestHeaderMode: reqH, ResponseHeaderMode: respH,
		RequestBodyMode: reqB, ResponseBodyMode: respB,
		RequestTrailerMode: reqT, ResponseTrailerMode: respT,
	}
}

func kinds(res *harness.Result) []string {
	var out []string
	for _, m := range res.Sent() {
		out = append(out, harnesstest.Kind(m))
	}
	return out
}

func eq[T comparable](t *testing.T, what string, got, want T) {
	t.Helper()
	if got != want {
		t.Errorf("%s = %v, want %v", what, got, want)
	}
}

func setHeader(key, value string) *extprocv3.HeaderMutation {
	return &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{
		{Header: &corev3.HeaderValue{Key: key, RawValue: []byte(value)}},
	}}
}

func TestOneStreamPerRequestWithMessagesInEnvoyOrder(t *testing.T) {
	up, _ := echoUpstream(t)
	srv := harnesstest.Start(t, harnesstest.ContinueAll())
	h := newHarness(t, srv.Addr, harness.Config{
		Upstream: up.URL,
		Filter:   &extprocfilterv3.ExternalProcessor{ProcessingMode: mode(send, send, buffered, buffered, send, send)},
	})
	req, _ := http.NewRequest("POST", "http://svc.local/v1/chat?x=1", strings.NewReader(`{"q":1}`))
	req.Header.Set("Content-Type", "application/json")
	req.Trailer = http.Header{"X-Checksum": {"abc"}}
	res, err := h.Do(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	eq(t, "status", res.Status, 200)
	eq(t, "body", string(res.Body), `{"q":1}`)
	got := strings.Join(kinds(res), ",")
	eq(t, "message order", got, "request_headers,request_body,request_trailers,response_headers,response_body")
	res2 := do(t, h, "GET", "/", "", nil)
	eq(t, "second status", res2.Status, 200)
	eq(t, "streams", srv.Streams(), 2)
}

func TestHeadersCarryPseudoHeadersRawValueAndEndOfStream(t *testing.T) {
	up := staticUpstream(t, "model list")
	srv := harnesstest.Start(t, harnesstest.ContinueAll())
	h := newHarness(t, srv.Addr, harness.Config{Upstream: up.URL})
	res := do(t, h, "GET", "/models?id=7", "", http.Header{"X-Tenant": {"acme"}})
	sent := res.Sent()
	if len(sent) != 2 {
		t.Fatalf("sent %d messages, want request_headers and response_headers", len(sent))
	}
	rh := sent[0].GetRequestHeaders()
	eq(t, "request end_of_stream", rh.GetEndOfStream(), true)
	want := map[string]string{":method": "GET", ":path": "/models?id=7", ":authority": "svc.local", ":scheme": "http", "x-tenant": "acme"}
	for k, v := range want {
		got, ok := harnesstest.Header(sent[0], k)
		if !ok || got != v {
			t.Errorf("request header %s = %q (present %v), want %q", k, got, ok, v)
		}
	}
	for _, hv := range rh.GetHeaders().GetHeaders() {
		if hv.GetValue() != "" {
			t.Errorf("header %s uses value %q; Envoy sends raw_value only", hv.GetKey(), hv.GetValue())
		}
	}
	st, _ := harnesstest.Header(sent[1], ":status")
	eq(t, "response :status", st, "200")
	eq(t, "response end_of_stream", sent[1].GetResponseHeaders().GetEndOfStream(), false)
}

func TestDefaultModesSendHeadersOnly(t *testing.T) {
	up, _ := echoUpstream(t)
	srv := harnesstest.Start(t, harnesstest.ContinueAll())
	h := newHarness(t, srv.Addr, harness.Config{Upstream: up.URL})
	req, _ := http.NewRequest("POST", "http://svc.local/x", strings.NewReader("body"))
	req.Trailer = http.Header{"X-T": {"1"}}
	res, err := h.Do(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	eq(t, "messages", strings.Join(kinds(res), ","), "request_headers,response_headers")
	eq(t, "body", string(res.Body), "body")
}

func TestProtocolConfigOnlyInFirstMessage(t *testing.T) {
	up, _ := echoUpstream(t)
	srv := harnesstest.Start(t, harnesstest.ContinueAll())
	h := newHarness(t, srv.Addr, harness.Config{Upstream: up.URL,
		Filter: &extprocfilterv3.ExternalProcessor{ProcessingMode: mode(send, send, buffered, streamed, skip, skip)}})
	res := do(t, h, "POST", "/", "abc", nil)
	sent := res.Sent()
	pc := sent[0].GetProtocolConfig()
	if pc == nil {
		t.Fatal("first message has no protocol_config")
	}
	eq(t, "request_body_mode", pc.GetRequestBodyMode(), buffered)
	eq(t, "response_body_mode", pc.GetResponseBodyMode(), streamed)
	for i, m := range sent[1:] {
		if m.GetProtocolConfig() != nil {
			t.Errorf("message %d (%s) repeats protocol_config", i+1, harnesstest.Kind(m))
		}
	}
}

func TestAttributesInFirstMessageOfEachDirection(t *testing.T) {
	up, _ := echoUpstream(t)
	srv := harnesstest.Start(t, harnesstest.ContinueAll())
	h := newHarness(t, srv.Addr, harness.Config{
		Upstream: up.URL,
		Filter: &extprocfilterv3.ExternalProcessor{
			ProcessingMode:     mode(send, send, buffered, buffered, skip, skip),
			RequestAttributes:  []string{"xds.route_name", "request.path", "request.method"},
			ResponseAttributes: []string{"response.code"},
		},
		Attributes: map[string]*structpb.Value{"xds.route_name": structpb.NewStringValue("chat")},
	})
	res := do(t, h, "POST", "/v1/chat", "hi", nil)
	sent := res.Sent()
	eq(t, "messages", strings.Join(kinds(res), ","), "request_headers,request_body,response_headers,response_body")
	reqAttrs := sent[0].GetAttributes()["envoy.filters.http.ext_proc"].GetFields()
	eq(t, "xds.route_name", reqAttrs["xds.route_name"].GetStringValue(), "chat")
	eq(t, "request.path", reqAttrs["request.path"].GetStringValue(), "/v1/chat")
	eq(t, "request.method", reqAttrs["request.method"].GetStringValue(), "POST")
	eq(t, "request_body attributes", len(sent[1].GetAttributes()), 0)
	respAttrs := sent[2].GetAttributes()["envoy.filters.http.ext_proc"].GetFields()
	eq(t, "response.code", respAttrs["response.code"].GetNumberValue(), 200.0)
	eq(t, "response_body attributes", len(sent[3].GetAttributes()), 0)
}

func TestMetadataContextOnEveryMessage(t *testing.T) {
	up, _ := echoUpstream(t)
	srv := harnesstest.Start(t, harnesstest.ContinueAll())
	meta, _ := structpb.NewStruct(map[string]any{"tenant": "acme"})
	h := newHarness(t, srv.Addr, harness.Config{
		Upstream: up.URL,
		Filter: &extprocfilterv3.ExternalProcessor{
			ProcessingMode: mode(send, send, buffered, none, skip, skip),
			MetadataOptions: &extprocfilterv3.MetadataOptions{ForwardingNamespaces: &extprocfilterv3.MetadataOptions_MetadataNamespaces{
				Untyped: []string{"infergate"}}},
		},
		DynamicMetadata: map[string]*structpb.Struct{"infergate": meta, "other": meta},
	})
	res := do(t, h, "POST", "/", "x", nil)
	for _, m := range res.Sent() {
		fm := m.GetMetadataContext().GetFilterMetadata()
		eq(t, harnesstest.Kind(m)+" tenant", fm["infergate"].GetFields()["tenant"].GetStringValue(), "acme")
		if _, ok := fm["other"]; ok {
			t.Errorf("%s forwards namespace not listed in forwarding_namespaces", harnesstest.Kind(m))
		}
	}
}

func TestGrpcInitialMetadataArrivesAsStreamMetadata(t *testing.T) {
	up, _ := echoUpstream(t)
	srv := harnesstest.Start(t, harnesstest.ContinueAll())
	h := newHarness(t, srv.Addr, harness.Config{
		Upstream: up.URL,
		PerRoute: &extprocfilterv3.ExtProcPerRoute{Override: &extprocfilterv3.ExtProcPerRoute_Overrides{
			Overrides: &extprocfilterv3.ExtProcOverrides{GrpcInitialMetadata: []*corev3.HeaderValue{
				{Key: "x-infergate-route", Value: "chat"}}}}},
	})
	do(t, h, "GET", "/", "", nil)
	md := srv.Metadata()
	if len(md) != 1 {
		t.Fatalf("%d streams, want 1", len(md))
	}
	eq(t, "x-infergate-route", strings.Join(md[0].Get("x-infergate-route"), ","), "chat")
}

func TestForwardRulesFilterHeadersSent(t *testing.T) {
	up, _ := echoUpstream(t)
	srv := harnesstest.Start(t, harnesstest.ContinueAll())
	h := newHarness(t, srv.Addr, harness.Config{
		Upstream: up.URL,
		Filter: &extprocfilterv3.ExternalProcessor{ForwardRules: &extprocfilterv3.HeaderForwardingRules{
			DisallowedHeaders: &matcherv3.ListStringMatcher{Patterns: []*matcherv3.StringMatcher{
				{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "authorization"}}}}}},
	})
	res := do(t, h, "GET", "/", "", http.Header{"Authorization": {"Bearer s3cret"}, "X-Keep": {"1"}})
	if _, ok := harnesstest.Header(res.Sent()[0], "authorization"); ok {
		t.Error("authorization was forwarded despite disallowed_headers")
	}
	if _, ok := harnesstest.Header(res.Sent()[0], "x-keep"); !ok {
		t.Error("x-keep was not forwarded")
	}
	eq(t, "upstream still gets authorization", (*res.Upstream).Header.Get("Authorization"), "Bearer s3cret")
}

func TestBufferedBodyArrivesWholeInOneMessage(t *testing.T) {
	up, _ := echoUpstream(t)
	srv := harnesstest.Start(t, harnesstest.ContinueAll())
	h := newHarness(t, srv.Addr, harness.Config{Upstream: up.URL,
		Filter: &extprocfilterv3.ExternalProcessor{ProcessingMode: mode(send, send, buffered, none, skip, skip)}})
	body := strings.Repeat("x", 100<<10)
	res := do(t, h, "POST", "/", body, nil)
	sent := res.Sent()
	eq(t, "messages", strings.Join(kinds(res), ","), "request_headers,request_body,response_headers")
	eq(t, "body length", len(sent[1].GetRequestBody().GetBody()), len(body))
	eq(t, "end_of_stream", sent[1].GetRequestBody().GetEndOfStream(), true)
	eq(t, "headers end_of_stream", sent[0].GetRequestHeaders().GetEndOfStream(), false)
}

func TestBufferedRequestOverLimitIs413WithoutUpstream(t *testing.T) {
	up, seen := echoUpstream(t)
	srv := harnesstest.Start(t, harnesstest.ContinueAll())
	h := newHarness(t, srv.Addr, harness.Config{Upstream: up.URL, BufferLimit: 1024,
		Filter: &extprocfilterv3.ExternalProcessor{ProcessingMode: mode(send, send, buffered, none, skip, skip)}})
	res := do(t, h, "POST", "/", strings.Repeat("x", 2048), nil)
	eq(t, "status", res.Status, 413)
	eq(t, "upstream calls", len(seen()), 0)
	if res.Upstream != nil {
		t.Error("request went upstream")
	}
}

func TestBufferedResponseOverLimitIs500(t *testing.T) {
	up := staticUpstream(t, strings.Repeat("y", 4096))
	srv := harnesstest.Start(t, harnesstest.ContinueAll())
	h := newHarness(t, srv.Addr, harness.Config{Upstream: up.URL, BufferLimit: 1024,
		Filter: &extprocfilterv3.ExternalProcessor{ProcessingMode: mode(send, send, none, buffered, skip, skip)}})
	res := do(t, h, "GET", "/", "", nil)
	eq(t, "status", res.Status, 500)
	eq(t, "reset", res.Reset, false)
}

func TestBufferedBodyMutationMustAgreeWithContentLength(t *testing.T) {
	up, _ := echoUpstream(t)
	cases := []struct {
		name      string
		fixLength bool
		status    int
		body      string
	}{
		{"length left stale is 500", false, 500, ""},
		{"length fixed by the server passes", true, 200, "replaced!"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := harnesstest.Start(t, harnesstest.Loop(func(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
				if req.GetRequestBody() == nil {
					return harnesstest.Continue(req)
				}
				cr := &extprocv3.CommonResponse{BodyMutation: &extprocv3.BodyMutation{
					Mutation: &extprocv3.BodyMutation_Body{Body: []byte("replaced!")}}}
				if tc.fixLength {
					cr.HeaderMutation = setHeader("content-length", "9")
				}
				return harnesstest.Reply(req, cr)
			}))
			h := newHarness(t, srv.Addr, harness.Config{Upstream: up.URL,
				Filter: &extprocfilterv3.ExternalProcessor{ProcessingMode: mode(send, send, buffered, none, skip, skip)}})
			res := do(t, h, "POST", "/", "original", nil)
			eq(t, "status", res.Status, tc.status)
			if tc.status == 200 {
				eq(t, "upstream body", string(res.Upstream.Body), tc.body)
				eq(t, "client body", string(res.Body), tc.body)
			}
		})
	}
}

func TestBufferedPartialSendsAtLimitAndPassesTheRest(t *testing.T) {
	up, _ := echoUpstream(t)
	srv := harnesstest.Start(t, harnesstest.ContinueAll())
	h := newHarness(t, srv.Addr, harness.Config{Upstream: up.URL, BufferLimit: 1000,
		Filter: &extprocfilterv3.ExternalProcessor{ProcessingMode: mode(send, send, partial, none, skip, skip)}})
	body := strings.Repeat("a", 1000) + strings.Repeat("b", 500)
	res := do(t, h, "POST", "/", body, nil)
	sent := res.Sent()
	eq(t, "messages", strings.Join(kinds(res), ","), "request_headers,request_body,response_headers")
	eq(t, "partial length", len(sent[1].GetRequestBody().GetBody()), 1000)
	eq(t, "partial end_of_stream", sent[1].GetRequestBody().GetEndOfStream(), false)
	eq(t, "upstream got all", string(res.Upstream.Body), body)
}

// In BUFFERED_PARTIAL mode Envoy holds the headers until the partial body
// is answered, and applies that answer's header mutation to them.
func TestBufferedPartialBodyResponseMutatesHeaders(t *testing.T) {
	up, _ := echoUpstream(t)
	srv := harnesstest.Start(t, harnesstest.Loop(func(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
		if req.GetRequestBody() != nil {
			return harnesstest.Reply(req, &extprocv3.CommonResponse{HeaderMutation: setHeader("x-from-body", "seen")})
		}
		return harnesstest.Continue(req)
	}))
	h := newHarness(t, srv.Addr, harness.Config{Upstream: up.URL, BufferLimit: 1000,
		Filter: &extprocfilterv3.ExternalProcessor{ProcessingMode: mode(send, skip, partial, none, skip, skip)}})
	res := do(t, h, "POST", "/", strings.Repeat("a", 1500), nil)
	eq(t, "upstream header", res.Upstream.Header.Get("x-from-body"), "seen")
}

func TestStreamedBodyOneMessagePerChunkAndSSEStaysStreamed(t *testing.T) {
	events := []string{"data: one\n\n", "data: two\n\n", "data: three\n\n"}
	// The upstream sends the next event only once the processor has seen
	// the previous one, so the test proves chunks are processed as they
	// arrive rather than after the upstream finished.
	next := make(chan struct{}, len(events))
	var gateByClient atomic.Bool
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		for i, e := range events {
			if i > 0 {
				select {
				case <-next:
				case <-r.Context().Done():
					return
				}
			}
			io.WriteString(w, e)
			w.(http.Flusher).Flush()
		}
	}))
	defer up.Close()
	srv := harnesstest.Start(t, harnesstest.Loop(func(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
		if b := req.GetResponseBody(); b != nil {
			if len(b.GetBody()) > 0 && !gateByClient.Load() {
				next <- struct{}{}
			}
			return harnesstest.Reply(req, &extprocv3.CommonResponse{BodyMutation: &extprocv3.BodyMutation{
				Mutation: &extprocv3.BodyMutation_Body{Body: bytes.ToUpper(b.GetBody())}}})
		}
		return harnesstest.Continue(req)
	}))
	h := newHarness(t, srv.Addr, harness.Config{Upstream: up.URL,
		Filter: &extprocfilterv3.ExternalProcessor{ProcessingMode: mode(send, send, none, streamed, skip, skip)}})

	res := do(t, h, "GET", "/stream", "", nil)
	var bodies []string
	var ends []bool
	for _, m := range res.Sent() {
		if b := m.GetResponseBody(); b != nil {
			if len(b.GetBody()) > 0 {
				bodies = append(bodies, string(b.GetBody()))
			}
			ends = append(ends, b.GetEndOfStream())
		}
	}
	eq(t, "chunks sent", strings.Join(bodies, "|"), strings.Join(events, "|"))
	for i, end := range ends {
		eq(t, fmt.Sprintf("end_of_stream on body message %d", i), end, i == len(ends)-1)
	}
	eq(t, "client writes", len(res.Chunks), 3)
	eq(t, "body", string(res.Body), "DATA: ONE\n\nDATA: TWO\n\nDATA: THREE\n\n")
	eq(t, "content-length dropped", res.Header.Get("Content-Length"), "")

	// Through the handler a client reads the first event while the
	// upstream is still waiting to send the second.
	gateByClient.Store(true)
	for len(next) > 0 {
		<-next
	}
	front := httptest.NewServer(h.Handler())
	defer front.Close()
	resp, err := http.Get(front.URL + "/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, 64)
	n, err := resp.Body.Read(buf)
	if err != nil {
		t.Fatalf("reading first event: %v", err)
	}
	eq(t, "first event", string(buf[:n]), "DATA: ONE\n\n")
	next <- struct{}{}
	next <- struct{}{}
	rest, _ := io.ReadAll(resp.Body)
	eq(t, "rest", string(rest), "DATA: TWO\n\nDATA: THREE\n\n")
}

func TestContinueAndReplaceReplacesBodyAndSkipsRestOfDirection(t *testing.T) {
	up, _ := echoUpstream(t)
	srv := harnesstest.Start(t, harnesstest.Loop(func(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
		if req.GetRequestHeaders() != nil {
			return harnesstest.Reply(req, &extprocv3.CommonResponse{
				Status:         extprocv3.CommonResponse_CONTINUE_AND_REPLACE,
				HeaderMutation: setHeader("x-replaced", "1"),
				BodyMutation:   &extprocv3.BodyMutation{Mutation: &extprocv3.BodyMutation_Body{Body: []byte("new body")}},
			})
		}
		return harnesstest.Continue(req)
	}))
	h := newHarness(t, srv.Addr, harness.Config{Upstream: up.URL,
		Filter: &extprocfilterv3.ExternalProcessor{ProcessingMode: mode(send, send, buffered, none, send, skip)}})
	req, _ := http.NewRequest("POST", "http://svc.local/", strings.NewReader("old"))
	req.Trailer = http.Header{"X-T": {"1"}}
	res, err := h.Do(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	eq(t, "messages", strings.Join(kinds(res), ","), "request_headers,response_headers")
	eq(t, "upstream body", string(res.Upstream.Body), "new body")
	eq(t, "upstream header", res.Upstream.Header.Get("X-Replaced"), "1")
	eq(t, "content-length dropped", res.Upstream.Header.Get("Content-Length"), "")
}

func TestHeaderMutationsSetAppendRemove(t *testing.T) {
	up, _ := echoUpstream(t)
	srv := harnesstest.Start(t, harnesstest.Loop(func(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
		if req.GetRequestHeaders() != nil {
			return harnesstest.Reply(req, &extprocv3.CommonResponse{HeaderMutation: &extprocv3.HeaderMutation{
				SetHeaders: []*corev3.HeaderValueOption{
					{Header: &corev3.HeaderValue{Key: "x-set", RawValue: []byte("new")}},
					{Header: &corev3.HeaderValue{Key: "x-multi", RawValue: []byte("b")}, Append: wrapperspb.Bool(true)},
					{Header: &corev3.HeaderValue{Key: ":path", RawValue: []byte("/rewritten")}},
					{Header: &corev3.HeaderValue{Key: "x-value-only", Value: "ignored"}},
					{Header: &corev3.HeaderValue{Key: "x-absent", RawValue: []byte("added")},
						AppendAction: corev3.HeaderValueOption_ADD_IF_ABSENT},
					{Header: &corev3.HeaderValue{Key: "x-set", RawValue: []byte("not-added")},
						AppendAction: corev3.HeaderValueOption_ADD_IF_ABSENT},
					{Header: &corev3.HeaderValue{Key: "x-missing", RawValue: []byte("not-added")},
						AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS},
				},
				RemoveHeaders: []string{"x-drop"},
			}})
		}
		if req.GetResponseHeaders() != nil {
			return harnesstest.Reply(req, &extprocv3.CommonResponse{HeaderMutation: setHeader("x-cache", "miss")})
		}
		return harnesstest.Continue(req)
	}))
	h := newHarness(t, srv.Addr, harness.Config{Upstream: up.URL})
	res := do(t, h, "GET", "/orig", "", http.Header{"X-Set": {"old"}, "X-Multi": {"a"}, "X-Drop": {"1"}})
	u := res.Upstream
	eq(t, "x-set", u.Header.Get("X-Set"), "new")
	eq(t, "x-multi", strings.Join(u.Header.Values("X-Multi"), ","), "a,b")
	eq(t, "x-drop removed", u.Header.Get("X-Drop"), "")
	eq(t, "path rewritten", res.Header.Get("X-Upstream-Path"), "/rewritten")
	_, present := u.Header["X-Value-Only"]
	eq(t, "value without raw_value sets an empty header", present && u.Header.Get("X-Value-Only") == "", true)
	eq(t, "add if absent adds", u.Header.Get("X-Absent"), "added")
	eq(t, "add if absent keeps existing", strings.Join(u.Header.Values("X-Set"), ","), "new")
	eq(t, "overwrite if exists skips missing", u.Header.Get("X-Missing"), "")
	eq(t, "response header", res.Header.Get("X-Cache"), "miss")
}

func TestRefusedHeaderMutations(t *testing.T) {
	up, _ := echoUpstream(t)
	cases := []struct {
		name     string
		mutation *extprocv3.HeaderMutation
		rules    *mutationrulesv3.HeaderMutationRules
		status   int
		rejected int
	}{
		{"method is ignored by default", setHeader(":method", "DELETE"), nil, 200, 1},
		{"authority is ignored by default", setHeader(":authority", "evil"), nil, 200, 1},
		{"scheme is ignored by default", setHeader(":scheme", "https"), nil, 200, 1},
		{"host is ignored by default", setHeader("host", "evil"), nil, 200, 1},
		{"x-envoy is ignored by default", setHeader("x-envoy-original-path", "/x"), nil, 200, 1},
		{"removing a pseudo header is ignored", &extprocv3.HeaderMutation{RemoveHeaders: []string{":path"}}, nil, 200, 1},
		{"disallow_is_error makes it 500", setHeader(":method", "DELETE"),
			&mutationrulesv3.HeaderMutationRules{DisallowIsError: wrapperspb.Bool(true)}, 500, 1},
		{"allow_all_routing permits it", setHeader(":authority", "other.local"),
			&mutationrulesv3.HeaderMutationRules{AllowAllRouting: wrapperspb.Bool(true)}, 200, 0},
		{"value and raw_value together is 500", &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{
			{Header: &corev3.HeaderValue{Key: "x-a", Value: "1", RawValue: []byte("1")}}}}, nil, 500, 1},
		{"invalid value is 500", setHeader("x-a", "bad\r\nvalue"), nil, 500, 1},
		{"a control character is 500", setHeader("x-a", "a\x01b"), nil, 500, 1},
		{"a tab is a valid value", setHeader("x-a", "a\tb"), nil, 200, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := harnesstest.Start(t, harnesstest.Loop(func(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
				if req.GetRequestHeaders() != nil {
					return harnesstest.Reply(req, &extprocv3.CommonResponse{HeaderMutation: tc.mutation})
				}
				return harnesstest.Continue(req)
			}))
			h := newHarness(t, srv.Addr, harness.Config{Upstream: up.URL,
				Filter: &extprocfilterv3.ExternalProcessor{MutationRules: tc.rules}})
			res := do(t, h, "GET", "/", "", nil)
			eq(t, "status", res.Status, tc.status)
			eq(t, "rejected mutations", res.RejectedHeaderMutations, tc.rejected)
			if tc.status == 200 && tc.rejected > 0 {
				eq(t, "method kept", res.Upstream.Method, "GET")
				eq(t, "authority kept", res.Upstream.Host, "svc.local")
			}
		})
	}
}

func TestClearRouteCacheRecomputesRouteOnlyWithHeaderMutation(t *testing.T) {
	small, _ := echoUpstream(t)
	large := staticUpstream(t, "from large pool")
	route := func(h http.Header, path string) string {
		if h.Get("X-Model") == "large" {
			return large.URL
		}
		return small.URL
	}
	cases := []struct {
		name        string
		clear       bool
		withHeader  bool
		disable     bool
		wantBody    string
		wantCleared bool
	}{
		{"header from body plus clear_route_cache picks the new route", true, true, false, "from large pool", true},
		{"clear_route_cache without a header mutation does nothing", true, false, false, `{"model":"large"}`, false},
		{"header mutation without clear_route_cache keeps the cached route", false, true, false, `{"model":"large"}`, false},
		{"disable_clear_route_cache ignores it", true, true, true, `{"model":"large"}`, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := harnesstest.Start(t, harnesstest.Loop(func(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
				if b := req.GetRequestBody(); b != nil {
					cr := &extprocv3.CommonResponse{ClearRouteCache: tc.clear}
					if tc.withHeader && strings.Contains(string(b.GetBody()), "large") {
						cr.HeaderMutation = setHeader("x-model", "large")
					}
					return harnesstest.Reply(req, cr)
				}
				return harnesstest.Continue(req)
			}))
			h := newHarness(t, srv.Addr, harness.Config{Route: route,
				Filter: &extprocfilterv3.ExternalProcessor{
					ProcessingMode:         mode(send, skip, buffered, none, skip, skip),
					DisableClearRouteCache: tc.disable,
				}})
			res := do(t, h, "POST", "/v1/chat", `{"model":"large"}`, nil)
			eq(t, "body", string(res.Body), tc.wantBody)
			eq(t, "route cache cleared", res.RouteCacheCleared, tc.wantCleared)
		})
	}
}

func TestImmediateResponseIsALocalReply(t *testing.T) {
	up, seen := echoUpstream(t)
	cases := []struct {
		name       string
		ir         *extprocv3.ImmediateResponse
		grpcClient bool
		status     int
		body       string
		header     [2]string
	}{
		{"status, headers and body", &extprocv3.ImmediateResponse{
			Status:  &typev3.HttpStatus{Code: typev3.StatusCode_TooManyRequests},
			Headers: setHeader("retry-after", "3"), Body: []byte("slow down")},
			false, 429, "slow down", [2]string{"Retry-After", "3"}},
		{"status defaults to 200", &extprocv3.ImmediateResponse{Body: []byte("cached")}, false, 200, "cached",
			[2]string{"Content-Type", "text/plain"}},
		{"invalid status becomes 200", &extprocv3.ImmediateResponse{Status: &typev3.HttpStatus{Code: typev3.StatusCode_Continue}},
			false, 200, "", [2]string{}},
		{"grpc_status for a gRPC request", &extprocv3.ImmediateResponse{
			Status: &typev3.HttpStatus{Code: typev3.StatusCode_Forbidden}, Body: []byte("no way"),
			GrpcStatus: &extprocv3.GrpcStatus{Status: uint32(codes.PermissionDenied)}},
			true, 200, "", [2]string{"Grpc-Status", "7"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := harnesstest.Start(t, harnesstest.Loop(func(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
				return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ImmediateResponse{ImmediateResponse: tc.ir}}
			}))
			h := newHarness(t, srv.Addr, harness.Config{Upstream: up.URL})
			hdr := http.Header{}
			if tc.grpcClient {
				hdr.Set("Content-Type", "application/grpc")
			}
			before := len(seen())
			res := do(t, h, "GET", "/", "", hdr)
			eq(t, "status", res.Status, tc.status)
			eq(t, "body", string(res.Body), tc.body)
			if tc.header[0] != "" {
				eq(t, tc.header[0], res.Header.Get(tc.header[0]), tc.header[1])
			}
			eq(t, "upstream calls", len(seen())-before, 0)
			if tc.grpcClient {
				eq(t, "grpc-message", res.Header.Get("Grpc-Message"), "no way")
			}
		})
	}
}

func TestImmediateResponseWhenDisabledIsSpurious(t *testing.T) {
	up, _ := echoUpstream(t)
	srv := harnesstest.Start(t, harnesstest.Loop(func(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ImmediateResponse{
			ImmediateResponse: &extprocv3.ImmediateResponse{Body: []byte("cached")}}}
	}))
	for _, failOpen := range []bool{true, false} {
		h := newHarness(t, srv.Addr, harness.Config{Upstream: up.URL,
			Filter: &extprocfilterv3.ExternalProcessor{DisableImmediateResponse: true, FailureModeAllow: failOpen}})
		res := do(t, h, "GET", "/", "", nil)
		// Envoy treats it as spurious: failing open, the request passes
		// unprocessed; failing closed, the client gets a 500.
		if failOpen {
			eq(t, "status", res.Status, 200)
			eq(t, "went upstream", res.Upstream != nil, true)
			eq(t, "local reply", res.LocalReply, "")
		} else {
			eq(t, "status", res.Status, 500)
			eq(t, "went upstream", res.Upstream != nil, false)
		}
	}
}

func TestMessageTimeout(t *testing.T) {
	up, _ := echoUpstream(t)
	// The server answers request headers after a second, first asking for
	// more time when extend is set; the message timeout is Envoy's 200 ms
	// default.
	script := func(extend time.Duration) harnesstest.Script {
		return func(s *harnesstest.Stream) error {
			for {
				req, err := s.Recv()
				if err != nil {
					return nil
				}
				if req.GetRequestHeaders() != nil {
					if extend > 0 {
						s.Send(&extprocv3.ProcessingResponse{OverrideMessageTimeout: durationpb.New(extend)})
					}
					select {
					case <-time.After(time.Second):
					case <-s.Context().Done():
						return nil
					}
				}
				if s.Send(harnesstest.Continue(req)) != nil {
					return nil
				}
			}
		}
	}
	cases := []struct {
		name     string
		extend   time.Duration
		max      time.Duration
		failOpen bool
		status   int
		upstream bool
	}{
		{"no answer in time is 504", 0, 0, false, 504, false},
		{"override_message_timeout up to the max extends it", 5 * time.Second, 10 * time.Second, false, 200, true},
		{"override above max_message_timeout is ignored", 20 * time.Second, 10 * time.Second, false, 504, false},
		{"failure_mode_allow continues unprocessed", 0, 0, true, 200, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := harnesstest.Start(t, script(tc.extend))
			f := &extprocfilterv3.ExternalProcessor{FailureModeAllow: tc.failOpen}
			if tc.max > 0 {
				f.MaxMessageTimeout = durationpb.New(tc.max)
			}
			h := newHarness(t, srv.Addr, harness.Config{Upstream: up.URL, Filter: f})
			res := do(t, h, "GET", "/", "", nil)
			eq(t, "status", res.Status, tc.status)
			eq(t, "went upstream", res.Upstream != nil, tc.upstream)
		})
	}
}

func TestServerUnreachableOrStreamError(t *testing.T) {
	up, _ := echoUpstream(t)
	failing := harnesstest.Start(t, func(s *harnesstest.Stream) error {
		s.Recv()
		return status.Error(codes.Internal, "boom")
	})
	cases := []struct {
		name     string
		addr     string
		failOpen bool
		onError  typev3.StatusCode
		status   int
		upstream bool
	}{
		{"stream error is status_on_error (500)", failing.Addr, false, 0, 500, false},
		{"custom status_on_error", failing.Addr, false, typev3.StatusCode_ServiceUnavailable, 503, false},
		{"failure_mode_allow continues", failing.Addr, true, 0, 200, true},
		{"unreachable server is 500", "127.0.0.1:1", false, 0, 500, false},
		{"unreachable with failure_mode_allow continues", "127.0.0.1:1", true, 0, 200, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := &extprocfilterv3.ExternalProcessor{FailureModeAllow: tc.failOpen}
			if tc.onError != 0 {
				f.StatusOnError = &typev3.HttpStatus{Code: tc.onError}
			}
			h := newHarness(t, tc.addr, harness.Config{Upstream: up.URL, Filter: f})
			res := do(t, h, "GET", "/", "", nil)
			eq(t, "status", res.Status, tc.status)
			eq(t, "went upstream", res.Upstream != nil, tc.upstream)
		})
	}
}

// Envoy closes the stream on a response it did not ask for; failing open,
// the rest of the request passes unprocessed (envoyproxy/envoy#39994 made
// a failing-closed filter answer 500 instead).
func TestSpuriousResponseIsIgnoredWhenFailingOpen(t *testing.T) {
	up, _ := echoUpstream(t)
	srv := harnesstest.Start(t, harnesstest.Loop(func(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
		// Answers request headers with a response_headers message.
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{
			ResponseHeaders: &extprocv3.HeadersResponse{Response: &extprocv3.CommonResponse{HeaderMutation: setHeader("x-spurious", "1")}}}}
	}))
	h := newHarness(t, srv.Addr, harness.Config{Upstream: up.URL, Filter: &extprocfilterv3.ExternalProcessor{FailureModeAllow: true}})
	res := do(t, h, "GET", "/", "", nil)
	eq(t, "status", res.Status, 200)
	eq(t, "went upstream", res.Upstream != nil, true)
	eq(t, "spurious mutation applied", res.Header.Get("x-spurious"), "")
	closed := newHarness(t, srv.Addr, harness.Config{Upstream: up.URL})
	res = do(t, closed, "GET", "/", "", nil)
	eq(t, "failing closed: status", res.Status, 500)
	eq(t, "failing closed: went upstream", res.Upstream != nil, false)
}

func TestServerClosingStreamWithOKLetsTheRestPass(t *testing.T) {
	up, _ := echoUpstream(t)
	srv := harnesstest.Start(t, func(s *harnesstest.Stream) error {
		req, err := s.Recv()
		if err != nil {
			return nil
		}
		s.Send(harnesstest.Reply(req, &extprocv3.CommonResponse{HeaderMutation: setHeader("x-seen", "1")}))
		return nil // closes with OK before the body
	})
	h := newHarness(t, srv.Addr, harness.Config{Upstream: up.URL,
		Filter: &extprocfilterv3.ExternalProcessor{ProcessingMode: mode(send, send, buffered, buffered, skip, skip)}})
	res := do(t, h, "POST", "/", "payload", nil)
	eq(t, "status", res.Status, 200)
	eq(t, "body", string(res.Body), "payload")
	eq(t, "first mutation applied", res.Upstream.Header.Get("X-Seen"), "1")
	eq(t, "messages after close", strings.Join(kinds(res), ","), "request_headers,request_body")
}

func TestModeOverride(t *testing.T) {
	up, _ := echoUpstream(t)
	wantBody := mode(send, send, buffered, none, skip, skip)
	cases := []struct {
		name     string
		allow    bool
		allowed  []*extprocfilterv3.ProcessingMode
		messages string
	}{
		{"ignored without allow_mode_override", false, nil, "request_headers,response_headers"},
		{"honoured with allow_mode_override", true, nil, "request_headers,request_body,response_headers"},
		{"honoured when in allowed_override_modes", true, []*extprocfilterv3.ProcessingMode{wantBody}, "request_headers,request_body,response_headers"},
		{"refused when not in allowed_override_modes", true, []*extprocfilterv3.ProcessingMode{mode(send, skip, streamed, none, skip, skip)}, "request_headers,response_headers"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := harnesstest.Start(t, harnesstest.Loop(func(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
				resp := harnesstest.Continue(req)
				if req.GetRequestHeaders() != nil {
					resp.ModeOverride = wantBody
				}
				return resp
			}))
			h := newHarness(t, srv.Addr, harness.Config{Upstream: up.URL,
				Filter: &extprocfilterv3.ExternalProcessor{AllowModeOverride: tc.allow, AllowedOverrideModes: tc.allowed}})
			res := do(t, h, "POST", "/", "body", nil)
			eq(t, "messages", strings.Join(kinds(res), ","), tc.messages)
			eq(t, "status", res.Status, 200)
		})
	}
}

func TestObservabilityModeDoesNotWait(t *testing.T) {
	up, _ := echoUpstream(t)
	got := make(chan string, 16)
	srv := harnesstest.Start(t, func(s *harnesstest.Stream) error {
		for {
			req, err := s.Recv()
			if err != nil {
				return nil
			}
			if !req.GetObservabilityMode() {
				got <- "missing observability_mode"
			}
			got <- harnesstest.Kind(req)
			// Any answer is ignored.
			s.Send(&extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ImmediateResponse{
				ImmediateResponse: &extprocv3.ImmediateResponse{Status: &typev3.HttpStatus{Code: typev3.StatusCode_Forbidden}}}})
		}
	})
	h := newHarness(t, srv.Addr, harness.Config{Upstream: up.URL,
		Filter: &extprocfilterv3.ExternalProcessor{ObservabilityMode: true,
			ProcessingMode:       mode(send, send, streamed, buffered, skip, skip),
			DeferredCloseTimeout: durationpb.New(time.Second)}})
	res := do(t, h, "POST", "/", "watch me", nil)
	eq(t, "status", res.Status, 200)
	eq(t, "body", string(res.Body), "watch me")
	eq(t, "messages", strings.Join(kinds(res), ","), "request_headers,request_body,response_headers")
	eq(t, "answers applied", len(res.Received()), 0)
	h.Close()
	close(got)
	var seen []string
	for k := range got {
		seen = append(seen, k)
	}
	eq(t, "server saw", strings.Join(seen, ","), "request_headers,request_body,response_headers")
}

func TestHandlerIsAMiniEnvoy(t *testing.T) {
	up, _ := echoUpstream(t)
	srv := harnesstest.Start(t, harnesstest.Loop(func(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
		if req.GetResponseHeaders() != nil {
			return harnesstest.Reply(req, &extprocv3.CommonResponse{HeaderMutation: setHeader("x-processed", "yes")})
		}
		return harnesstest.Continue(req)
	}))
	h := newHarness(t, srv.Addr, harness.Config{Upstream: up.URL})
	front := httptest.NewServer(h.Handler())
	defer front.Close()
	resp, err := http.Post(front.URL+"/echo", "text/plain", strings.NewReader("ping"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	eq(t, "status", resp.StatusCode, 200)
	eq(t, "body", string(body), "ping")
	eq(t, "x-processed", resp.Header.Get("X-Processed"), "yes")
}

// route_cache_action CLEAR clears the route cache on any headers or body
// response that carries a header mutation, clear_route_cache or not, and
// never on one without (ProcessorState::clearRouteCache).
func TestRouteCacheActionClearFollowsHeaderMutations(t *testing.T) {
	small, _ := echoUpstream(t)
	large := staticUpstream(t, "from large pool")
	route := func(h http.Header, path string) string {
		if h.Get("X-Model") == "large" {
			return large.URL
		}
		return small.URL
	}
	for _, withHeader := range []bool{true, false} {
		t.Run(fmt.Sprintf("header mutation %v", withHeader), func(t *testing.T) {
			srv := harnesstest.Start(t, harnesstest.Loop(func(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
				if req.GetRequestBody() != nil && withHeader {
					return harnesstest.Reply(req, &extprocv3.CommonResponse{HeaderMutation: setHeader("x-model", "large")})
				}
				return harnesstest.Continue(req)
			}))
			h := newHarness(t, srv.Addr, harness.Config{Route: route,
				Filter: &extprocfilterv3.ExternalProcessor{
					ProcessingMode:   mode(send, skip, buffered, none, skip, skip),
					RouteCacheAction: extprocfilterv3.ExternalProcessor_CLEAR,
				}})
			res := do(t, h, "POST", "/v1/chat", `{"model":"large"}`, nil)
			eq(t, "route cache cleared", res.RouteCacheCleared, withHeader)
			want := `{"model":"large"}`
			if withHeader {
				want = "from large pool"
			}
			eq(t, "body", string(res.Body), want)
		})
	}
}

func TestRouteMissingIs404ThroughResponsePhase(t *testing.T) {
	srv := harnesstest.Start(t, harnesstest.ContinueAll())
	h := newHarness(t, srv.Addr, harness.Config{Route: func(http.Header, string) string { return "" }})
	res := do(t, h, "GET", "/nowhere", "", nil)
	eq(t, "status", res.Status, 404)
	eq(t, "messages", strings.Join(kinds(res), ","), "request_headers,response_headers")
}

func TestNewRejectsInvalidConfig(t *testing.T) {
	_, err := harness.New("127.0.0.1:1", harness.Config{Upstream: "http://x",
		Filter: &extprocfilterv3.ExternalProcessor{DisableClearRouteCache: true, RouteCacheAction: extprocfilterv3.ExternalProcessor_CLEAR}})
	if err == nil {
		t.Error("disable_clear_route_cache with route_cache_action accepted")
	}
	_, err = harness.New("127.0.0.1:1", harness.Config{})
	if err == nil {
		t.Error("config without Upstream or Route accepted")
	}
}

func TestNewRefusesBehaviourTheHarnessDoesNotReproduce(t *testing.T) {
	cases := map[string]*extprocfilterv3.ExternalProcessor{
		"full duplex without trailers SEND": {ProcessingMode: mode(send, send, extprocfilterv3.ProcessingMode_FULL_DUPLEX_STREAMED, none, skip, skip)},
		"grpc body":                         {ProcessingMode: mode(send, send, none, extprocfilterv3.ProcessingMode_GRPC, skip, skip)},
		"send body without waiting": {SendBodyWithoutWaitingForHeaderResponse: true,
			ProcessingMode: mode(send, send, streamed, none, skip, skip)},
	}
	for name, f := range cases {
		if _, err := harness.New("127.0.0.1:1", harness.Config{Upstream: "http://x", Filter: f}); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
}

func TestStreamedChunksAreSentWithoutWaitingForEarlierAnswers(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for _, part := range []string{"alpha ", "beta ", "gamma"} {
			io.WriteString(w, part)
			w.(http.Flusher).Flush()
		}
	}))
	defer up.Close()
	// The processor holds every body answer until it has seen the end of
	// the body, which only works if chunks do not wait for answers.
	srv := harnesstest.Start(t, func(s *harnesstest.Stream) error {
		var held []*extprocv3.ProcessingRequest
		for {
			req, err := s.Recv()
			if err != nil {
				return nil
			}
			b := req.GetResponseBody()
			if b == nil {
				s.Send(harnesstest.Continue(req))
				continue
			}
			held = append(held, req)
			if !b.GetEndOfStream() {
				continue
			}
			for _, h := range held {
				s.Send(harnesstest.Reply(h, &extprocv3.CommonResponse{BodyMutation: &extprocv3.BodyMutation{
					Mutation: &extprocv3.BodyMutation_Body{Body: bytes.ToUpper(h.GetResponseBody().GetBody())}}}))
			}
			held = nil
		}
	})
	h := newHarness(t, srv.Addr, harness.Config{Upstream: up.URL,
		Filter: &extprocfilterv3.ExternalProcessor{ProcessingMode: mode(skip, send, none, streamed, skip, skip)}})
	res := do(t, h, "GET", "/", "", nil)
	eq(t, "status", res.Status, 200)
	eq(t, "body", string(res.Body), "ALPHA BETA GAMMA")
}

func TestTrailersAreSentAndMutated(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Checksum")
		io.WriteString(w, "payload")
		w.Header().Set("X-Checksum", "c0ffee")
	}))
	defer up.Close()
	srv := harnesstest.Start(t, harnesstest.Loop(func(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
		if tr := req.GetResponseTrailers(); tr != nil {
			return harnesstest.Reply(req, &extprocv3.CommonResponse{HeaderMutation: setHeader("x-verified", "yes")})
		}
		return harnesstest.Continue(req)
	}))
	h := newHarness(t, srv.Addr, harness.Config{Upstream: up.URL,
		Filter: &extprocfilterv3.ExternalProcessor{ProcessingMode: mode(send, send, none, buffered, skip, send)}})
	res := do(t, h, "GET", "/", "", nil)
	eq(t, "messages", strings.Join(kinds(res), ","), "request_headers,response_headers,response_body,response_trailers")
	body := res.Sent()[2].GetResponseBody()
	eq(t, "body end_of_stream before trailers", body.GetEndOfStream(), false)
	var sentTrailer string
	for _, hv := range res.Sent()[3].GetResponseTrailers().GetTrailers().GetHeaders() {
		if hv.GetKey() == "x-checksum" {
			sentTrailer = string(hv.GetRawValue())
		}
	}
	eq(t, "trailer sent", sentTrailer, "c0ffee")
	eq(t, "trailer kept", res.Trailer.Get("X-Checksum"), "c0ffee")
	eq(t, "trailer added", res.Trailer.Get("X-Verified"), "yes")
}

func TestErrorAfterResponseHeadersResetsTheStream(t *testing.T) {
	up := staticUpstream(t, "some streamed answer")
	srv := harnesstest.Start(t, harnesstest.Loop(func(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
		if req.GetResponseBody() != nil {
			return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ImmediateResponse{
				ImmediateResponse: &extprocv3.ImmediateResponse{Status: &typev3.HttpStatus{Code: typev3.StatusCode_Forbidden}}}}
		}
		return harnesstest.Continue(req)
	}))
	h := newHarness(t, srv.Addr, harness.Config{Upstream: up.URL,
		Filter: &extprocfilterv3.ExternalProcessor{ProcessingMode: mode(send, send, none, streamed, skip, skip)}})
	res := do(t, h, "GET", "/", "", nil)
	eq(t, "status already sent", res.Status, 200)
	eq(t, "reset", res.Reset, true)
	eq(t, "body", string(res.Body), "")

	front := httptest.NewServer(h.Handler())
	defer front.Close()
	resp, err := http.Get(front.URL)
	if err == nil {
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	if err == nil {
		t.Error("client read a complete response from a reset stream")
	}
}

func TestStreamedRequestBodyIsProcessedChunkByChunk(t *testing.T) {
	up, _ := echoUpstream(t)
	srv := harnesstest.Start(t, harnesstest.Loop(func(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
		if b := req.GetRequestBody(); b != nil {
			return harnesstest.Reply(req, &extprocv3.CommonResponse{BodyMutation: &extprocv3.BodyMutation{
				Mutation: &extprocv3.BodyMutation_Body{Body: append([]byte("["), append(b.GetBody(), ']')...)}}})
		}
		return harnesstest.Continue(req)
	}))
	h := newHarness(t, srv.Addr, harness.Config{Upstream: up.URL,
		Filter: &extprocfilterv3.ExternalProcessor{ProcessingMode: mode(send, skip, streamed, none, skip, skip)}})
	res := do(t, h, "POST", "/", "abc", nil)
	// A known content-length lets Envoy mark the last data chunk itself.
	eq(t, "messages", strings.Join(kinds(res), ","), "request_headers,request_body")
	eq(t, "end_of_stream", res.Sent()[1].GetRequestBody().GetEndOfStream(), true)
	eq(t, "upstream body", string(res.Upstream.Body), "[abc]")
}

func TestPerRouteDisabledSkipsExtProc(t *testing.T) {
	up, _ := echoUpstream(t)
	srv := harnesstest.Start(t, harnesstest.ContinueAll())
	h := newHarness(t, srv.Addr, harness.Config{Upstream: up.URL,
		PerRoute: &extprocfilterv3.ExtProcPerRoute{Override: &extprocfilterv3.ExtProcPerRoute_Disabled{Disabled: true}}})
	res := do(t, h, "GET", "/", "", nil)
	eq(t, "status", res.Status, 200)
	eq(t, "messages", len(res.Messages), 0)
	eq(t, "streams", srv.Streams(), 0)
}

func TestUpstreamUnreachableIs503ThroughResponsePhase(t *testing.T) {
	srv := harnesstest.Start(t, harnesstest.ContinueAll())
	h := newHarness(t, srv.Addr, harness.Config{Upstream: "http://127.0.0.1:1"})
	res := do(t, h, "GET", "/", "", nil)
	eq(t, "status", res.Status, 503)
	eq(t, "messages", strings.Join(kinds(res), ","), "request_headers,response_headers")
	st, _ := harnesstest.Header(res.Sent()[1], ":status")
	eq(t, "processor saw", st, "503")
}

const duplex = extprocfilterv3.ProcessingMode_FULL_DUPLEX_STREAMED

func streamedBody(req *extprocv3.ProcessingRequest, body string, end bool) *extprocv3.ProcessingResponse {
	return harnesstest.Reply(req, &extprocv3.CommonResponse{BodyMutation: &extprocv3.BodyMutation{
		Mutation: &extprocv3.BodyMutation_StreamedResponse{StreamedResponse: &extprocv3.StreamedBodyResponse{
			Body: []byte(body), EndOfStream: end}}}})
}

func TestFullDuplexSendsBodyWithoutWaitingAndTakesAnyNumberOfChunks(t *testing.T) {
	up := staticUpstream(t, "hello full duplex")
	// The processor holds the headers answer until it has the whole body,
	// then re-chunks the body into two answers.
	srv := harnesstest.Start(t, func(s *harnesstest.Stream) error {
		var headers *extprocv3.ProcessingRequest
		var body []byte
		for {
			req, err := s.Recv()
			if err != nil {
				return nil
			}
			switch {
			case req.GetRequestHeaders() != nil:
				s.Send(harnesstest.Continue(req))
			case req.GetResponseHeaders() != nil:
				headers = req
			case req.GetResponseBody() != nil:
				body = append(body, req.GetResponseBody().GetBody()...)
				if !req.GetResponseBody().GetEndOfStream() {
					continue
				}
				s.Send(harnesstest.Reply(headers, &extprocv3.CommonResponse{HeaderMutation: setHeader("x-rechunked", "2")}))
				up := bytes.ToUpper(body)
				s.Send(streamedBody(req, string(up[:5]), false))
				s.Send(streamedBody(req, string(up[5:]), true))
			}
		}
	})
	h := newHarness(t, srv.Addr, harness.Config{Upstream: up.URL,
		Filter: &extprocfilterv3.ExternalProcessor{ProcessingMode: mode(send, send, none, duplex, skip, send)}})
	res := do(t, h, "GET", "/", "", nil)
	eq(t, "status", res.Status, 200)
	eq(t, "header", res.Header.Get("X-Rechunked"), "2")
	eq(t, "body", string(res.Body), "HELLO FULL DUPLEX")
	eq(t, "client writes", len(res.Chunks), 2)
	eq(t, "content-length dropped", res.Header.Get("Content-Length"), "")
}

func TestFullDuplexRequestWithTrailers(t *testing.T) {
	up, seen := echoUpstream(t)
	srv := harnesstest.Start(t, harnesstest.Loop(func(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
		switch {
		case req.GetRequestBody() != nil:
			// No end_of_stream: trailers follow.
			return streamedBody(req, "<"+string(req.GetRequestBody().GetBody())+">", false)
		case req.GetRequestTrailers() != nil:
			return harnesstest.Reply(req, &extprocv3.CommonResponse{HeaderMutation: setHeader("x-trailer-seen", "yes")})
		}
		return harnesstest.Continue(req)
	}))
	h := newHarness(t, srv.Addr, harness.Config{Upstream: up.URL,
		Filter: &extprocfilterv3.ExternalProcessor{ProcessingMode: mode(send, skip, duplex, none, send, skip)}})
	req, _ := http.NewRequest("POST", "http://svc.local/", strings.NewReader("data"))
	req.Trailer = http.Header{"X-Sum": {"1"}}
	res, err := h.Do(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	eq(t, "status", res.Status, 200)
	eq(t, "messages", strings.Join(kinds(res), ","), "request_headers,request_body,request_trailers")
	eq(t, "body end_of_stream", res.Sent()[1].GetRequestBody().GetEndOfStream(), false)
	eq(t, "upstream body", string(res.Upstream.Body), "<data>")
	eq(t, "upstream trailer", seen()[0].Trailer.Get("X-Trailer-Seen"), "yes")
}

func TestFullDuplexAcceptsOnlyStreamedResponseAndIgnoresFailureModeAllowAfterBody(t *testing.T) {
	up, _ := echoUpstream(t)
	srv := harnesstest.Start(t, harnesstest.Loop(func(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
		if req.GetRequestBody() != nil {
			return harnesstest.Reply(req, &extprocv3.CommonResponse{BodyMutation: &extprocv3.BodyMutation{
				Mutation: &extprocv3.BodyMutation_Body{Body: []byte("not streamed")}}})
		}
		return harnesstest.Continue(req)
	}))
	h := newHarness(t, srv.Addr, harness.Config{Upstream: up.URL,
		Filter: &extprocfilterv3.ExternalProcessor{FailureModeAllow: true,
			ProcessingMode: mode(send, skip, duplex, none, send, skip)}})
	res := do(t, h, "POST", "/", "data", nil)
	eq(t, "status", res.Status, 500)
	eq(t, "went upstream", res.Upstream != nil, false)
}

func TestFullDuplexHasNoMessageTimeout(t *testing.T) {
	up, _ := echoUpstream(t)
	srv := harnesstest.Start(t, harnesstest.Loop(func(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
		if b := req.GetRequestBody(); b != nil {
			time.Sleep(150 * time.Millisecond)
			return streamedBody(req, string(b.GetBody()), b.GetEndOfStream())
		}
		return harnesstest.Continue(req)
	}))
	h := newHarness(t, srv.Addr, harness.Config{Upstream: up.URL,
		Filter: &extprocfilterv3.ExternalProcessor{MessageTimeout: durationpb.New(20 * time.Millisecond),
			ProcessingMode: mode(send, skip, duplex, none, send, skip)}})
	res := do(t, h, "POST", "/", "slow", nil)
	eq(t, "status", res.Status, 200)
	eq(t, "upstream body", string(res.Upstream.Body), "slow")
}
