package registrar

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
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
// configured endpoints; it returns the admin base URL.
func controlPlane(t *testing.T) string {
	t.Helper()
	cfg := config.Default()
	cfg.XDS.Listen, cfg.XDS.Admin = "127.0.0.1:0", "127.0.0.1:0"
	cfg.XDS.Pools = []config.XDSPool{{Name: "default", Endpoints: []string{}}}
	s, err := xds.New(cfg, "", quiet)
	if err != nil {
		t.Fatal(err)
	}
	serve(t, s)
	return "http://" + s.AdminAddr()
}

func registered(t *testing.T, controlPlane string) []string {
	t.Helper()
	resp, err := http.Get(controlPlane + "/v1/endpoints")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
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
	cp := controlPlane(t)
	ecfg := config.Default().Engine
	ecfg.Listen = "127.0.0.1:0"
	ecfg.Models[0].Path = testmodel.USELiteDir(t)
	eng, err := engine.New(ecfg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	serve(t, eng)

	reg := config.EngineRegister{ControlPlane: cp, Pool: "default", Advertise: eng.Addr(), TTL: 3 * time.Second, Interval: 50 * time.Millisecond}
	stop := serve(t, New(reg, eng.Addr(), quiet))
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

// An engine that is not ready (here: not running at all) is never put in
// front of Envoy.
func TestEngineThatIsNotReadyIsNotRegistered(t *testing.T) {
	cp := controlPlane(t)
	reg := config.EngineRegister{ControlPlane: cp, Pool: "default", Advertise: "127.0.0.1:1", TTL: 3 * time.Second, Interval: 20 * time.Millisecond}
	stop := serve(t, New(reg, "127.0.0.1:1", quiet))
	time.Sleep(200 * time.Millisecond) // ten ticks
	stop()
	if got := registered(t, cp); len(got) != 0 {
		t.Fatalf("an engine that never answered ready was registered: %v", got)
	}
}
