// Package ops holds what every infergate component shares to be run and
// watched: the /metrics, /healthz and /readyz endpoints, and the lifecycle
// that binds all listeners first, serves, and drains on shutdown.
package ops

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/infergate/infergate/internal/apierror"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Service is one long-running part of infergate.
type Service interface {
	// Name is used in logs ("xds", "extproc", "engine").
	Name() string
	// Listen binds every socket the service needs, so that a port in use
	// is reported before anything starts serving.
	Listen() error
	// Serve serves until ctx is done, then stops accepting work and lets
	// in-flight requests finish before returning.
	Serve(ctx context.Context) error
}

// NewRegistry returns a Prometheus registry with the Go and process
// collectors, for one component.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// HandleProbes adds /metrics, /healthz and /readyz to mux. ready reports
// why the component cannot take traffic yet (nil when it can).
func HandleProbes(mux *http.ServeMux, reg prometheus.Gatherer, ready func() error) {
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := ready(); err != nil {
			WriteJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "error": err.Error()})
			return
		}
		WriteJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
}

// WriteJSON writes v as the JSON body with the given status. It encodes
// before the status goes out, so a value JSON cannot hold (a NaN) is a 500
// with an error body, not a 200 with an empty one.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		WriteError(w, http.StatusInternalServerError, "encoding the response: "+err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}

// WriteError answers a call to an admin API with status and the
// `{"error": msg}` body (the serving APIs use apierror.Write, which picks
// the shape by path).
func WriteError(w http.ResponseWriter, status int, msg string) {
	apierror.Write(w, "", status, msg, "")
}

// Listen binds addr for the named use and words a port in use as such.
func Listen(use, addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s: cannot listen on %s: %w", use, addr, err)
	}
	return ln, nil
}

// ShutdownGrace is how long Serve methods wait for in-flight work after
// their context ends, unless their work may take longer (the engine waits
// for its longest request timeout).
const ShutdownGrace = 15 * time.Second

// ErrGraceExceeded is returned by ServeHTTP when connections were still
// busy at the end of the grace and were closed. Run logs it as a warning:
// the shutdown itself went as asked.
var ErrGraceExceeded = errors.New("connections still busy at the end of the shutdown grace were closed")

// ServeHTTP serves srv on ln until ctx is done, then shuts it down
// gracefully: in-flight requests have grace to finish.
func ServeHTTP(ctx context.Context, srv *http.Server, ln net.Listener, grace time.Duration) error {
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
		<-errc
		return fmt.Errorf("after %s: %w", grace, ErrGraceExceeded)
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Run binds every service, then serves them all until ctx is done or one
// fails; a failure stops the others. Nothing serves if any Listen fails.
func Run(ctx context.Context, log *slog.Logger, services ...Service) error {
	for _, s := range services {
		if err := s.Listen(); err != nil {
			return err
		}
	}
	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		<-ctx.Done()
		if parent.Err() != nil {
			log.Info("shutting down: in-flight requests finish first")
		}
	}()
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
	)
	for _, s := range services {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := s.Serve(ctx)
			if errors.Is(err, ErrGraceExceeded) {
				log.Warn("component stopped", "component", s.Name(), "error", err)
				err = nil
			}
			if err != nil {
				log.Error("component stopped", "component", s.Name(), "error", err)
				once.Do(func() { first = fmt.Errorf("%s: %w", s.Name(), err) })
			}
			cancel()
		}()
	}
	wg.Wait()
	if first == nil {
		log.Info("stopped")
	}
	return first
}
