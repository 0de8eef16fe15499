// Package registrar lets an engine join a pool of the xDS control plane by
// itself: it registers the engine's address once the engine is ready,
// heartbeats while it stays ready, and deregisters on shutdown, so that
// Envoy's EDS follows engines that come and go without editing the config.
package registrar

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"time"

	"github.com/infergate/infergate/config"
	"github.com/infergate/infergate/internal/ops"
)

// Registrar is an ops.Service that keeps one engine registered.
type Registrar struct {
	cfg    config.EngineRegister
	ready  string // the engine's own readiness URL
	client *http.Client
	log    *slog.Logger
	token  string // presented as a bearer token ("" none)
}

// New returns a registrar for the engine serving on engineListen.
func New(cfg config.EngineRegister, engineListen string, log *slog.Logger) (*Registrar, error) {
	token, err := ops.ReadToken("engine.register.token_file", cfg.TokenFile)
	if err != nil {
		return nil, err
	}
	return &Registrar{
		cfg:    cfg,
		ready:  "http://" + engineListen + "/v2/health/ready",
		client: &http.Client{},
		log:    log,
		token:  token,
	}, nil
}

// Name implements ops.Service.
func (r *Registrar) Name() string { return "registrar" }

// Listen implements ops.Service; the registrar binds nothing.
func (r *Registrar) Listen() error { return nil }

// Serve registers the engine while it is ready, every Interval, until ctx
// ends; then it deregisters so Envoy stops sending before the engine drains.
// A registration is also a heartbeat, so an endpoint the control plane lost
// (a restart, an expired TTL) comes back at the next tick. An engine that
// stops being ready is left to expire after TTL.
func (r *Registrar) Serve(ctx context.Context) error {
	tick := time.NewTicker(r.cfg.Interval)
	defer tick.Stop()
	// attempted: a registration may have reached the control plane, so the
	// endpoint may be listed, even when its answer was lost to shutdown or
	// a later heartbeat failed. listed: the last heartbeat succeeded.
	attempted, listed := false, false
	for {
		if r.engineReady(ctx) {
			attempted = true
			err := r.register(ctx)
			switch {
			case err != nil && ctx.Err() == nil:
				r.log.Warn("cannot register with the control plane; retrying", "control_plane", r.cfg.ControlPlane, "error", err)
			case err == nil && !listed:
				r.log.Info("registered with the control plane", "pool", r.cfg.Pool, "address", r.cfg.Advertise)
			}
			listed = err == nil
		}
		select {
		case <-ctx.Done():
			if attempted {
				r.deregister()
			}
			return nil
		case <-tick.C:
		}
	}
}

func (r *Registrar) engineReady(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Interval)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.ready, nil)
	if err != nil {
		return false
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func (r *Registrar) endpointsURL() string {
	return r.cfg.ControlPlane + "/v1/pools/" + url.PathEscape(r.cfg.Pool) + "/endpoints"
}

// register is one heartbeat; it gives up after Interval, when the next
// one is due.
func (r *Registrar) register(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Interval)
	defer cancel()
	body, _ := json.Marshal(map[string]string{"address": r.cfg.Advertise, "ttl": r.cfg.TTL.String()})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.endpointsURL(), bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	return r.do(req, http.StatusOK, http.StatusCreated)
}

// deregister runs after the serving context ended, so it has its own
// short deadline.
func (r *Registrar) deregister() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, r.endpointsURL()+"/"+url.PathEscape(r.cfg.Advertise), nil)
	if err == nil {
		err = r.do(req, http.StatusNoContent, http.StatusNotFound)
	}
	if err != nil {
		r.log.Warn("cannot deregister; the control plane drops the endpoint after its ttl", "error", err, "ttl", r.cfg.TTL)
		return
	}
	r.log.Info("deregistered from the control plane", "pool", r.cfg.Pool, "address", r.cfg.Advertise)
}

func (r *Registrar) do(req *http.Request, ok ...int) error {
	if r.token != "" {
		req.Header.Set("Authorization", "Bearer "+r.token)
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	for _, code := range ok {
		if resp.StatusCode == code {
			return nil
		}
	}
	var e struct {
		Error string `json:"error"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&e)
	return fmt.Errorf("%s %s: %d %s", req.Method, req.URL, resp.StatusCode, e.Error)
}
