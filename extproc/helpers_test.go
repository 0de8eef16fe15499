package extproc_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/infergate/infergate/config"
	"github.com/infergate/infergate/envoy/harness"
	"github.com/infergate/infergate/extproc"
	"github.com/infergate/infergate/policy"
)

// startExtProc runs an ext_proc server on loopback ports until the test ends.
func startExtProc(t testing.TB, mutate func(*config.ExtProc)) *extproc.Server {
	t.Helper()
	return startExtProcWith(t, mutate)
}

func startExtProcWith(t testing.TB, mutate func(*config.ExtProc), opts ...extproc.Option) *extproc.Server {
	t.Helper()
	cfg := config.Default().ExtProc
	cfg.Listen, cfg.Admin = "127.0.0.1:0", "127.0.0.1:0"
	if mutate != nil {
		mutate(&cfg)
	}
	srv, err := extproc.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), opts...)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return srv
}

// filterConfig is the ext_proc filter as ARCHITECTURE.md configures it,
// with message timeouts long enough for a loaded test machine (they are
// safety nets here, not something under test).
func filterConfig() *extprocfilterv3.ExternalProcessor {
	return &extprocfilterv3.ExternalProcessor{
		ProcessingMode:       extproc.ProcessingMode,
		AllowModeOverride:    true,
		AllowedOverrideModes: []*extprocfilterv3.ProcessingMode{extproc.StreamedResponseMode},
		MessageTimeout:       durationpb.New(2 * time.Minute),
		MaxMessageTimeout:    durationpb.New(10 * time.Minute),
		FailureModeAllow:     true,
	}
}

// routeWith carries p to the server as the xDS route would.
func routeWith(p policy.Policy) *extprocfilterv3.ExtProcPerRoute {
	p.Normalize()
	return &extprocfilterv3.ExtProcPerRoute{Override: &extprocfilterv3.ExtProcPerRoute_Overrides{
		Overrides: &extprocfilterv3.ExtProcOverrides{GrpcInitialMetadata: []*corev3.HeaderValue{
			{Key: policy.MetadataKey, RawValue: []byte(p.Encode())}}}}}
}

// newHarness puts a mini-Envoy with route policy p in front of upstream.
func newHarness(t testing.TB, srv *extproc.Server, upstream string, p policy.Policy, tweak func(*harness.Config)) *harness.Harness {
	t.Helper()
	cfg := harness.Config{Filter: filterConfig(), PerRoute: routeWith(p), Upstream: upstream}
	if tweak != nil {
		tweak(&cfg)
	}
	h, err := harness.New(srv.Addr(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	return h
}

// call sends one request through h. header alternates names and values.
func call(t testing.TB, h *harness.Harness, method, path string, body []byte, header ...string) *harness.Result {
	t.Helper()
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://infergate.local"+path, r)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	res, err := h.Do(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// cacheStatus returns the response's Cache-Status, failing the test if
// it lacks one.
func cacheStatus(t testing.TB, res *harness.Result) string {
	t.Helper()
	v := res.Header.Get("Cache-Status")
	if v == "" {
		t.Fatalf("no Cache-Status; status %d, headers %v, body %q", res.Status, res.Header, res.Body)
	}
	return v
}

func isHit(v string) bool { return strings.HasPrefix(v, "infergate; hit") }

// metric reads one counter or gauge value from reg (0 when absent).
func metric(t testing.TB, reg prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		var sum float64
		for _, m := range f.GetMetric() {
			if !hasLabels(m, labels) {
				continue
			}
			switch {
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				sum += float64(m.GetHistogram().GetSampleCount())
			}
		}
		return sum
	}
	return 0
}

func hasLabels(m *dto.Metric, labels []string) bool {
	for i := 0; i+1 < len(labels); i += 2 {
		found := false
		for _, l := range m.GetLabel() {
			if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// eventually polls cond for up to 2 minutes: for effects that cross
// goroutines (a purge relayed through Redis, followers queuing), never for
// speed.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
