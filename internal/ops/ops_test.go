package ops

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// service is a Service whose behaviour each test sets.
type service struct {
	name      string
	listenErr error
	serveErr  error
	served    atomic.Bool
	stopped   atomic.Bool
}

func (s *service) Name() string  { return s.name }
func (s *service) Listen() error { return s.listenErr }
func (s *service) Serve(ctx context.Context) error {
	s.served.Store(true)
	if s.serveErr != nil {
		return s.serveErr
	}
	<-ctx.Done()
	s.stopped.Store(true)
	return nil
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func TestRunServesNothingWhenAListenFails(t *testing.T) {
	a := &service{name: "a"}
	b := &service{name: "b", listenErr: errors.New("b: cannot listen on 127.0.0.1:1: address already in use")}
	err := Run(context.Background(), quiet, a, b)
	if err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("Run = %v, want b's listen error", err)
	}
	if a.served.Load() || b.served.Load() {
		t.Error("a service served although another could not bind")
	}
}

func TestRunStopsEveryServiceWhenOneFails(t *testing.T) {
	a := &service{name: "a"}
	b := &service{name: "b", serveErr: errors.New("model failed to load")}
	err := Run(context.Background(), quiet, a, b)
	if err == nil || !strings.Contains(err.Error(), "b: model failed to load") {
		t.Fatalf("Run = %v, want b's error named", err)
	}
	if !a.stopped.Load() {
		t.Error("a kept running after b failed")
	}
}

func TestRunReturnsCleanlyOnShutdown(t *testing.T) {
	a, b := &service{name: "a"}, &service{name: "b"}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, quiet, a, b) }()
	for !a.served.Load() || !b.served.Load() {
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run after shutdown = %v", err)
	}
	if !a.stopped.Load() || !b.stopped.Load() {
		t.Error("a service did not see the shutdown")
	}
}

// An in-flight request finishes even though shutdown began while it ran.
func TestServeHTTPDrainsInFlightRequests(t *testing.T) {
	ln, err := Listen("test", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	entered, release := make(chan struct{}), make(chan struct{})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		close(entered)
		<-release
		io.WriteString(w, "finished")
	})}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- ServeHTTP(ctx, srv, ln, ShutdownGrace) }()

	got := make(chan string, 1)
	go func() {
		resp, err := http.Get("http://" + ln.Addr().String())
		if err != nil {
			got <- err.Error()
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		got <- string(b)
	}()
	<-entered
	cancel()
	close(release)
	if body := <-got; body != "finished" {
		t.Fatalf("in-flight request got %q, want it to finish", body)
	}
	if err := <-served; err != nil {
		t.Fatalf("ServeHTTP = %v", err)
	}
}

func TestProbes(t *testing.T) {
	var ready atomic.Bool
	mux := http.NewServeMux()
	HandleProbes(mux, NewRegistry(), func() error {
		if !ready.Load() {
			return errors.New("model loading")
		}
		return nil
	})
	ln, err := Listen("test", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go ServeHTTP(ctx, &http.Server{Handler: mux}, ln, ShutdownGrace)
	base := "http://" + ln.Addr().String()

	get := func(path string) (int, string) {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("/healthz = %d while loading, want 200 (alive)", code)
	}
	if code, body := get("/readyz"); code != 503 || !strings.Contains(body, "model loading") {
		t.Errorf("/readyz = %d %s, want 503 naming why", code, body)
	}
	ready.Store(true)
	if code, _ := get("/readyz"); code != 200 {
		t.Errorf("/readyz = %d when ready", code)
	}
	if code, body := get("/metrics"); code != 200 || !strings.Contains(body, "go_goroutines") {
		t.Errorf("/metrics = %d, no Go collector", code)
	}
}

// A request still running at the end of the grace is cut, and the
// shutdown is reported as such but is not a failure of the service.
func TestServeHTTPClosesWhatOutlivesTheGrace(t *testing.T) {
	ln, err := Listen("test", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	entered, release := make(chan struct{}), make(chan struct{})
	defer close(release)
	srv := &http.Server{Handler: http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		close(entered)
		<-release
	})}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- ServeHTTP(ctx, srv, ln, 50*time.Millisecond) }()
	go func() {
		if resp, err := http.Get("http://" + ln.Addr().String()); err == nil {
			resp.Body.Close()
		}
	}()
	<-entered
	cancel()
	if err := <-served; !errors.Is(err, ErrGraceExceeded) {
		t.Fatalf("ServeHTTP = %v, want ErrGraceExceeded", err)
	}
	svc := &service{name: "admin", serveErr: fmt.Errorf("after 50ms: %w", ErrGraceExceeded)}
	if err := Run(context.Background(), quiet, svc); err != nil {
		t.Errorf("Run = %v, want a cut shutdown to be no failure", err)
	}
}
