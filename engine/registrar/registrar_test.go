package registrar

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/infergate/infergate/config"
	"github.com/infergate/infergate/engine"
	"github.com/infergate/infergate/internal/testmodel"
	"github.com/infergate/infergate/xds"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// serve runs s until the test ends and returns a function that stops it
// and waits for it.
func serve(t *testing.T, s interface {
	Listen() error
	Serve(context.Context) error
}) (stop func()) {
	t.Helper()
	if err := s.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Serve: %v", err)
			}
		}
	}
	t.Cleanup(stop)
	return stop
}

// controlPlane is a real xDS server with a pool "default" and no
// configured endpoints, whose admin API requires token ("" none); it
// returns the admin base URL.
func controlPlane(t *testing.T, token string) string {
	t.Helper()
	cfg := config.Default()
	cfg.XDS.Listen, cfg.XDS.Admin = "127.0.0.1:0", "127.0.0.1:0"
	if token != "" {
		cfg.XDS.AdminTokenFile = tokenFile(t, token)
	}
	cfg.XDS.Pools = []config.XDSPool{{Name: "default", Endpoints: []string{}}}
	s, err := xds.New(cfg, "", quiet)
	if err != nil {
		t.Fatal(err)
	}
	serve(t, s)
	return "http://" + s.AdminAddr()
}

func tokenFile(t *testing.T, token string) string {
	path := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(path, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// newRegistrar is New, failing the test on an error.
func newRegistrar(t *testing.T, cfg config.EngineRegister, engineListen string) *Registrar {
	t.Helper()
	r, err := New(cfg, engineListen, quiet)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// registered lists the control plane's endpoints, presenting token.
func registered(t *testing.T, controlPlane string, token ...string) []string {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, controlPlane+"/v1/endpoints", nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(token) > 0 {
		req.Header.Set("Authorization", "Bearer "+token[0])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /v1/endpoints: %s", resp.Status)
	}
	var body struct {
		Endpoints []struct {
			Pool, Address string
		} `json:"endpoints"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range body.Endpoints {
		out = append(out, e.Pool+"/"+e.Address)
	}
	return out
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A ready engine joins its pool by itself and leaves it when it stops.
func TestEngineJoinsAndLeavesItsPool(t *testing.T) {
	cp := controlPlane(t, "")
	ecfg := config.Default().Engine
	ecfg.Listen = "127.0.0.1:0"
	ecfg.Models[0].Path = testmodel.USELiteDir(t)
	eng, err := engine.New(ecfg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	serve(t, eng)

	reg := config.EngineRegister{ControlPlane: cp, Pool: "default", Advertise: eng.Addr(), TTL: 3 * time.Second, Interval: 50 * time.Millisecond}
	stop := serve(t, newRegistrar(t, reg, eng.Addr()))
	want := "default/" + eng.Addr()
	waitFor(t, "the engine is registered", func() bool {
		got := registered(t, cp)
		return len(got) == 1 && got[0] == want
	})
	stop()
	if got := registered(t, cp); len(got) != 0 {
		t.Fatalf("after shutdown the pool still lists %v", got)
	}
}

// A heartbeat that fails after the engine was registered (the control
// plane overloaded, the answer late) does not stop the engine from
// deregistering when it stops: the endpoint is still listed until its TTL.
func TestFailedHeartbeatStillDeregisters(t *testing.T) {
	var posts, deletes atomic.Int64
	cp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodPost:
			if posts.Add(1) > 1 {
				http.Error(w, `{"error":"overloaded"}`, http.StatusServiceUnavailable)
			}
		case http.MethodDelete:
			deletes.Add(1)
			w.WriteHeader(http.StatusNoContent)
		}
	}))
	defer cp.Close()
	engine := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer engine.Close()
	addr := strings.TrimPrefix(engine.URL, "http://")
	reg := config.EngineRegister{ControlPlane: cp.URL, Pool: "default", Advertise: addr, TTL: time.Minute, Interval: 10 * time.Millisecond}
	stop := serve(t, newRegistrar(t, reg, addr))
	waitFor(t, "a failed heartbeat after the first registration", func() bool { return posts.Load() >= 3 })
	stop()
	if deletes.Load() != 1 {
		t.Fatalf("%d deregistrations after a failed heartbeat, want 1", deletes.Load())
	}
}

// An engine that is not ready (here: not running at all) is never put in
// front of Envoy.
func TestEngineThatIsNotReadyIsNotRegistered(t *testing.T) {
	cp := controlPlane(t, "")
	reg := config.EngineRegister{ControlPlane: cp, Pool: "default", Advertise: "127.0.0.1:1", TTL: 3 * time.Second, Interval: 20 * time.Millisecond}
	stop := serve(t, newRegistrar(t, reg, "127.0.0.1:1"))
	time.Sleep(200 * time.Millisecond) // ten ticks
	stop()
	if got := registered(t, cp); len(got) != 0 {
		t.Fatalf("an engine that never answered ready was registered: %v", got)
	}
}

// A control plane with an admin token accepts only the registrar that
// presents it; the engine here is a stand-in that is always ready.
func TestRegistrarPresentsTheControlPlaneToken(t *testing.T) {
	cp := controlPlane(t, "s3cret")
	ready := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {}))
	t.Cleanup(ready.Close)
	engineAddr := ready.Listener.Addr().String()
	reg := config.EngineRegister{ControlPlane: cp, Pool: "default", Advertise: "127.0.0.1:9", TTL: 3 * time.Second, Interval: 20 * time.Millisecond}

	stop := serve(t, newRegistrar(t, reg, engineAddr))
	time.Sleep(200 * time.Millisecond) // ten refused tries
	stop()
	if got := registered(t, cp, "s3cret"); len(got) != 0 {
		t.Fatalf("a registrar without the token was registered: %v", got)
	}

	reg.TokenFile = tokenFile(t, "s3cret")
	serve(t, newRegistrar(t, reg, engineAddr))
	waitFor(t, "the registrar with the token is registered", func() bool {
		got := registered(t, cp, "s3cret")
		return len(got) == 1 && got[0] == "default/127.0.0.1:9"
	})

	reg.TokenFile = filepath.Join(t.TempDir(), "missing")
	if _, err := New(reg, engineAddr, quiet); err == nil || !strings.Contains(err.Error(), "engine.register.token_file") {
		t.Fatalf("New with a missing token file: %v, want an error naming engine.register.token_file", err)
	}
}
