package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/infergate/infergate/config"
	"github.com/infergate/infergate/envoy/bootstrap"
	"github.com/infergate/infergate/internal/testmodel"
)

// The test binary doubles as the infergate binary, so that exit codes and
// stderr are tested exactly as a user sees them.
func TestMain(m *testing.M) {
	if os.Getenv("INFERGATE_RUN_MAIN") == "1" {
		os.Args = append([]string{"infergate"}, strings.Fields(os.Getenv("INFERGATE_ARGS"))...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func infergate(args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "INFERGATE_RUN_MAIN=1", "INFERGATE_ARGS="+strings.Join(args, " "))
	return cmd
}

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "infergate.yaml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// freeAddr returns a loopback address nothing listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// A bad config or a taken port is one line on stderr and exit status 1.
func TestBadInputIsOneClearLine(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()

	tests := []struct {
		name string
		args []string
		want string
	}{
		{"misspelt field", []string{"engine", "-c", writeConfig(t, "engine:\n  lisen: 127.0.0.1:0\n")}, "line 2: field lisen not found"},
		{"wrong type", []string{"engine", "-c", writeConfig(t, "log:\n  level: {a: 1}\n")}, "line 2: cannot unmarshal"},
		{"missing file", []string{"xds", "-c", "/nonexistent/infergate.yaml"}, "/nonexistent/infergate.yaml"},
		{"port in use", []string{"xds", "-c", writeConfig(t, fmt.Sprintf("xds:\n  listen: %s\n  admin: %s\n", busy.Addr(), freeAddr(t)))}, "address already in use"},
		{"unknown command", []string{"frobnicate"}, "unknown command"},
		{"pprof port in use", []string{"version", "--pprof", busy.Addr().String()}, "--pprof: listen tcp"},
		{"bench in an unknown encoding", []string{"bench", "--encoding-format", "hex"}, `--encoding-format "hex" is not one of float, base64`},
		{"bench without load", []string{"bench", "--concurrency=", "--modes", "ceiling"}, "at least one load point"},
		{"bench at no concurrency", []string{"bench", "--concurrency", "-1"}, `"-1" is not positive`},
		{"bench against nothing", []string{"bench", "--url", "http://" + freeAddr(t), "--concurrency", "1", "--warmup", "10ms", "--duration", "50ms", "--max-windows", "1"}, "no request succeeded at engine c=1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			cmd := infergate(tt.args...)
			cmd.Stderr = &stderr
			err := cmd.Run()
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
				t.Fatalf("exit = %v, want status 1; stderr: %s", err, stderr.String())
			}
			lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
			last := lines[len(lines)-1]
			if !strings.HasPrefix(last, "infergate: ") || !strings.Contains(last, tt.want) {
				t.Errorf("last stderr line %q, want an infergate: line containing %q", last, tt.want)
			}
			if strings.Contains(stderr.String(), "goroutine ") || strings.Contains(stderr.String(), "panic") {
				t.Errorf("stderr has a stack trace:\n%s", stderr.String())
			}
		})
	}
}

func TestVersion(t *testing.T) {
	out, err := infergate("version").Output()
	if err != nil || !strings.HasPrefix(string(out), "infergate ") {
		t.Fatalf("version: %q, %v", out, err)
	}
}

func TestEveryCommandHasHelp(t *testing.T) {
	for _, c := range rootCmd.Commands() {
		if c.Short == "" {
			t.Errorf("command %q has no help text", c.Name())
		}
	}
}

func TestBootstrapCommandPrintsValidBootstrap(t *testing.T) {
	out, err := infergate("envoy", "bootstrap", "--node-id", "edge-7").Output()
	if err != nil {
		t.Fatal(err)
	}
	b, err := bootstrap.Parse(out)
	if err != nil {
		t.Fatalf("printed bootstrap does not parse: %v\n%s", err, out)
	}
	if b.GetNode().GetId() != "edge-7" {
		t.Errorf("node id %q, want edge-7", b.GetNode().GetId())
	}
}

// `infergate up` brings up all three components; each answers its health
// endpoints, and SIGTERM stops the process cleanly.
func TestUpServesHealthAndStopsOnSIGTERM(t *testing.T) {
	if testing.Short() {
		t.Skip("-short given: this test starts the whole stack (infergate up: xDS, ext_proc, engine with the real model); make test runs it")
	}
	engine, xdsAdmin, extprocAdmin := freeAddr(t), freeAddr(t), freeAddr(t)
	// Envoy's addresses are free ports too, so that a real Envoy started by
	// up never clashes with one already running (make run).
	path := writeConfig(t, fmt.Sprintf(`
envoy:
  admin: %s
xds:
  listen: %s
  admin: %s
  listeners:
    - name: ingress
      address: %s
extproc:
  listen: %s
  admin: %s
engine:
  listen: %s
`, freeAddr(t), freeAddr(t), xdsAdmin, freeAddr(t), freeAddr(t), extprocAdmin, engine))
	if cfg, err := config.Load(path); err != nil {
		t.Fatal(err)
	} else if _, err := exec.LookPath(cfg.Envoy.Binary); err == nil {
		t.Log("envoy is on PATH: up starts it too")
	}
	var stderr bytes.Buffer
	cmd := infergate("up", "-c", path)
	cmd.Dir = testmodel.RepoRoot(t) // the default model path is relative to it, as for `make run`
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	// The engine is ready only after its model loaded and a warm-up batch ran.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for _, addr := range []string{xdsAdmin, extprocAdmin, engine} {
		for _, probe := range []string{"/healthz", "/readyz", "/metrics"} {
			if err := waitOK(ctx, exited, "http://"+addr+probe); err != nil {
				t.Fatalf("%v; stderr:\n%s", err, stderr.String())
			}
		}
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("up exited with %v after SIGTERM; stderr:\n%s", err, stderr.String())
		}
	case <-ctx.Done():
		t.Fatalf("up did not stop after SIGTERM; stderr:\n%s", stderr.String())
	}
}

// waitOK polls url until it answers 200, the process exits, or ctx ends.
func waitOK(ctx context.Context, exited <-chan error, url string) error {
	for {
		resp, err := http.Get(url)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("%s: %d %s", url, resp.StatusCode, body)
		}
		select {
		case e := <-exited:
			return fmt.Errorf("up exited (%v) while waiting for %s", e, url)
		case <-ctx.Done():
			return err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func TestPprofServesProfilesApartFromTheAPIs(t *testing.T) {
	ln, err := servePprof("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	resp, err := http.Get("http://" + ln.Addr().String() + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "goroutine profile:") {
		t.Fatalf("%d %.200s", resp.StatusCode, body)
	}
}
