package extproc_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/infergate/infergate/config"
	"github.com/infergate/infergate/extproc"
	"github.com/infergate/infergate/policy"
)

// rawStream opens a Process stream with a plain gRPC client, to send what
// Envoy never would.
func rawStream(t *testing.T, addr string, md ...string) extprocv3.ExternalProcessor_ProcessClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ctx := metadata.AppendToOutgoingContext(context.Background(), md...)
	s, err := extprocv3.NewExternalProcessorClient(conn).Process(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func requestHeaders(eos bool, kv ...string) *extprocv3.ProcessingRequest {
	hm := &corev3.HeaderMap{}
	for i := 0; i+1 < len(kv); i += 2 {
		hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: kv[i], RawValue: []byte(kv[i+1])})
	}
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{
		RequestHeaders: &extprocv3.HttpHeaders{Headers: hm, EndOfStream: eos}}}
}

func body(b string, response bool) *extprocv3.ProcessingRequest {
	hb := &extprocv3.HttpBody{Body: []byte(b), EndOfStream: true}
	if response {
		return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: hb}}
	}
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: hb}}
}

// finalStatus sends msgs and returns the status the stream ended with.
func finalStatus(t *testing.T, s extprocv3.ExternalProcessor_ProcessClient, msgs ...*extprocv3.ProcessingRequest) error {
	t.Helper()
	for _, m := range msgs {
		if err := s.Send(m); err != nil {
			break
		}
	}
	_ = s.CloseSend()
	for {
		if _, err := s.Recv(); err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
	}
}

func TestUnexpectedMessagesEndTheStreamWithAnError(t *testing.T) {
	srv := startExtProc(t, nil)
	cases := map[string][]*extprocv3.ProcessingRequest{
		"body without headers":         {body(`{}`, false)},
		"response body first":          {body(`{}`, true)},
		"headers twice":                {requestHeaders(false, ":path", "/"), requestHeaders(false, ":path", "/")},
		"response body before headers": {requestHeaders(true, ":path", "/"), body("x", true)},
		"empty message":                {{}},
	}
	for name, msgs := range cases {
		err := finalStatus(t, rawStream(t, srv.Addr()), msgs...)
		code := status.Code(err)
		if code != codes.FailedPrecondition && code != codes.InvalidArgument {
			t.Errorf("%s: stream ended with %v, want FailedPrecondition or InvalidArgument", name, err)
		}
	}
	if got := metric(t, srv.Registry(), "infergate_extproc_stream_errors_total"); got != float64(len(cases)) {
		t.Errorf("%v stream errors counted, want %d", got, len(cases))
	}
	// The server still serves after all that.
	if err := finalStatus(t, rawStream(t, srv.Addr()), requestHeaders(true, ":method", "GET", ":path", "/")); err != nil {
		t.Fatalf("well-formed stream after bad ones: %v", err)
	}
}

func TestBadPolicyMetadataIsRefused(t *testing.T) {
	srv := startExtProc(t, nil)
	for bad, field := range map[string]string{
		`{"cache":"sometimes"}`: "cache",
		`{"model_routes":[{"model":"m","match":{"safeRegex":{"regex":"(["}},"policy":{}}]}`: "model_routes[0].match.safe_regex",
		`{"model_routes":[{"model":"m","match":{"grpc":{}},"policy":{}}]}`:                  "model_routes[0].match",
		`{"model_routes":[{"model":"m","match":{"prefix":7},"policy":{}}]}`:                 "model_routes[0].match",
	} {
		// Twice: a refused policy is not cached as if it were good.
		for range 2 {
			s := rawStream(t, srv.Addr(), policy.MetadataKey, bad)
			err := finalStatus(t, s, requestHeaders(false, ":path", "/"))
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), field) {
				t.Fatalf("policy %s: stream ended with %v, want InvalidArgument naming %s", bad, err, field)
			}
		}
	}
}

func TestRequestWithoutAnyHeadersIsServed(t *testing.T) {
	srv := startExtProc(t, nil)
	s := rawStream(t, srv.Addr())
	if err := s.Send(requestHeaders(false)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err != nil {
		t.Fatalf("headers answer: %v", err)
	}
	if err := s.Send(body("\x00\x01", false)); err != nil {
		t.Fatal(err)
	}
	resp, err := s.Recv()
	if err != nil || resp.GetRequestBody() == nil {
		t.Fatalf("body answer: %v %v", resp, err)
	}
}

func TestPurgeAPI(t *testing.T) {
	up := newUpstream(t)
	srv := startExtProc(t, nil)
	h := newHarness(t, srv, up.URL, policy.Policy{Route: "embed"}, nil)
	store := func(tenant, input string) string {
		res := call(t, h, "POST", "/v1/embeddings", []byte(`{"model":"use-lite","input":"`+input+`"}`), "X-Tenant-Id", tenant)
		cs := cacheStatus(t, res)
		_, key, _ := strings.Cut(cs, `key="`)
		return strings.TrimSuffix(key, `"`)
	}
	hit := func(tenant, input string) bool {
		return isHit(cacheStatus(t, call(t, h, "POST", "/v1/embeddings", []byte(`{"model":"use-lite","input":"`+input+`"}`), "X-Tenant-Id", tenant)))
	}
	purge := func(sel string) (int, map[string]any) {
		resp, err := http.Post("http://"+srv.AdminAddr()+"/v1/cache/purge", "application/json", strings.NewReader(sel))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, out
	}

	keyA1 := store("a", "one")
	store("a", "two")
	store("b", "one")
	if code, out := purge(fmt.Sprintf(`{"key":%q}`, keyA1)); code != 200 || out["purged"] != 1.0 {
		t.Fatalf("purge by key: %d %v", code, out)
	}
	if hit("a", "one") {
		t.Fatal("purged key still served")
	}
	if !hit("a", "two") || !hit("b", "one") {
		t.Fatal("purge by key removed other entries")
	}
	if code, out := purge(`{"tenant":"a"}`); code != 200 || out["purged"] != 2.0 {
		t.Fatalf("purge by tenant: %d %v", code, out)
	}
	if hit("a", "two") || !hit("b", "one") {
		t.Fatal("purge by tenant a: wrong entries left")
	}
	if code, out := purge(`{"model":"use-lite","route":"embed"}`); code != 200 || out["purged"] != 2.0 {
		t.Fatalf("purge by model and route: %d %v", code, out)
	}
	store("c", "x")
	if code, out := purge(`{"all":true}`); code != 200 || out["purged"] != 1.0 {
		t.Fatalf("purge all: %d %v", code, out)
	}
	for _, bad := range []string{`{}`, `{"all":true,"tenant":"a"}`, `{"key":"nope"}`, `{"tenantt":"a"}`, `not json`} {
		if code, out := purge(bad); code != http.StatusBadRequest || out["error"] == nil {
			t.Errorf("purge %s: %d %v, want 400 with an error", bad, code, out)
		}
	}
	if metric(t, srv.Registry(), "infergate_extproc_cache_purges_total") != 4 ||
		metric(t, srv.Registry(), "infergate_extproc_cache_purged_entries_total") != 6 {
		t.Error("purge metrics do not show 4 purges of 6 entries")
	}
}

func TestStreamedEventStreamChunkByChunk(t *testing.T) {
	srv := startExtProc(t, nil)
	req := `{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}],"temperature":0}`
	chunks := []string{"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n", "data: {\"choices\":[],\"usage\":{\"total_tokens\":3}}\n\n", "data: [DONE]\n\n"}

	s := rawStream(t, srv.Addr())
	send := func(m *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
		t.Helper()
		if err := s.Send(m); err != nil {
			t.Fatal(err)
		}
		r, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	send(requestHeaders(false, ":method", "POST", ":path", "/v1/chat/completions"))
	send(body(req, false))
	r := send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{
		Headers: requestHeaders(false, ":status", "200", "content-type", "text/event-stream").GetRequestHeaders().GetHeaders()}}})
	if r.GetModeOverride().GetResponseBodyMode().String() != "STREAMED" {
		t.Fatalf("no switch to STREAMED: %v", r)
	}
	for i, c := range chunks {
		m := &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: &extprocv3.HttpBody{
			Body: []byte(c), EndOfStream: i == len(chunks)-1}}}
		if r := send(m); r.GetResponseBody() == nil || r.GetResponseBody().GetResponse().GetHeaderMutation() != nil {
			t.Fatalf("chunk %d answered with %v, want a plain body response", i, r)
		}
	}
	if err := finalStatus(t, s); err != nil {
		t.Fatalf("stream end: %v", err)
	}

	s = rawStream(t, srv.Addr())
	send(requestHeaders(false, ":method", "POST", ":path", "/v1/chat/completions"))
	hit := send(body(req, false)).GetImmediateResponse()
	if hit == nil || string(hit.GetBody()) != strings.Join(chunks, "") {
		t.Fatalf("replay of the streamed response: %v", hit)
	}
}

// With extproc.admin_token_file the purge API answers only to the token;
// /metrics stays open for Prometheus.
func TestPurgeAPIRequiresTheAdminToken(t *testing.T) {
	token := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(token, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := startExtProc(t, func(c *config.ExtProc) { c.AdminTokenFile = token })
	purge := func(auth string) int {
		req, _ := http.NewRequest(http.MethodPost, "http://"+srv.AdminAddr()+"/v1/cache/purge", strings.NewReader(`{"all":true}`))
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := purge(""); got != http.StatusUnauthorized {
		t.Errorf("purge without the token: %d, want 401", got)
	}
	if got := purge("Bearer s3cret"); got != http.StatusOK {
		t.Errorf("purge with the token: %d, want 200", got)
	}
	resp, err := http.Get("http://" + srv.AdminAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/metrics without the token: %d, want 200", resp.StatusCode)
	}

	cfg := config.Default().ExtProc
	cfg.AdminTokenFile = filepath.Join(t.TempDir(), "missing")
	if _, err := extproc.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil))); err == nil || !strings.Contains(err.Error(), "extproc.admin_token_file") {
		t.Errorf("New with a missing token file: %v, want an error naming extproc.admin_token_file", err)
	}
}
