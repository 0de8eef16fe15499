package gpu

import (
	"bytes"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// logBuffer captures what Open logs, one line per record.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) lines() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Split(strings.TrimSpace(b.buf.String()), "\n")
}

// collect runs one Collect, as a scrape does.
func collect(c prometheus.Collector) []prometheus.Metric {
	ch := make(chan prometheus.Metric)
	go func() {
		c.Collect(ch)
		close(ch)
	}()
	var out []prometheus.Metric
	for m := range ch {
		out = append(out, m)
	}
	return out
}

func newLogger() (*slog.Logger, *logBuffer) {
	b := &logBuffer{}
	return slog.New(slog.NewTextHandler(b, nil)), b
}

// openUnavailable opens telemetry the way a host without a usable NVIDIA
// driver does; it fails on every machine, GPU or not.
func openUnavailable(t *testing.T) (*Telemetry, *logBuffer) {
	t.Helper()
	log, buf := newLogger()
	return openWith(log, openMissingLibrary), buf
}

func TestUnavailableLogsOneLine(t *testing.T) {
	tel, logs := openUnavailable(t)
	defer tel.Close()
	lines := logs.lines()
	if len(lines) != 1 {
		t.Fatalf("want exactly one log line, got %d: %q", len(lines), lines)
	}
	if !strings.Contains(lines[0], "gpu telemetry unavailable") {
		t.Errorf("log line does not say telemetry is unavailable: %s", lines[0])
	}
	if tel.Available() {
		t.Error("Available() = true without NVML")
	}
	if tel.Reason() == "" {
		t.Error("Reason() is empty although telemetry is off")
	}
	if devs := tel.Devices(); len(devs) != 0 {
		t.Errorf("Devices() = %v without NVML", devs)
	}
}

func TestUnavailableExportsNoGPUSeries(t *testing.T) {
	tel, _ := openUnavailable(t)
	defer tel.Close()
	reg := prometheus.NewRegistry()
	if err := tel.Register(reg); err != nil {
		t.Fatalf("Register: %v", err)
	}
	if n := len(collect(collector{tel})); n != 0 {
		t.Errorf("collector exported %d series without NVML", n)
	}

	// The scrape a user's Prometheus makes still succeeds and has no GPU lines.
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body bytes.Buffer
	_, _ = body.ReadFrom(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape status %d: %s", resp.StatusCode, body.String())
	}
	if strings.Contains(body.String(), "infergate_gpu_") {
		t.Errorf("scrape has GPU series without NVML:\n%s", body.String())
	}
}

func TestDescribeListsEveryGauge(t *testing.T) {
	tel, _ := openUnavailable(t)
	defer tel.Close()
	ch := make(chan *prometheus.Desc, 2*int(numFields))
	collector{tel}.Describe(ch)
	close(ch)
	var got []string
	for d := range ch {
		got = append(got, d.String())
	}
	if len(got) != int(numFields) {
		t.Fatalf("Describe sent %d descriptors, want %d", len(got), numFields)
	}
	for _, g := range gauges {
		found := false
		for _, d := range got {
			if strings.Contains(d, `"`+g.name+`"`) && strings.Contains(d, "UUID") && strings.Contains(d, "modelName") {
				found = true
			}
		}
		if !found {
			t.Errorf("no descriptor for %s with labels gpu, UUID, modelName in %q", g.name, got)
		}
	}
}

func TestCloseIsSafeAndIdempotent(t *testing.T) {
	tel, _ := openUnavailable(t)
	for range 3 {
		if err := tel.Close(); err != nil {
			t.Fatalf("Close on unavailable telemetry: %v", err)
		}
	}
	if n := len(collect(collector{tel})); n != 0 {
		t.Errorf("collector exported %d series after Close", n)
	}
}

// Open against the real system: on this host it either finds a GPU or it
// does not, and both must leave the process running with a consistent view.
func TestOpenOnThisHost(t *testing.T) {
	log, logs := newLogger()
	tel := Open(log)
	if got := len(logs.lines()); got != 1 {
		t.Errorf("Open logged %d lines, want 1: %q", got, logs.lines())
	}
	t.Logf("this host: %s", logs.lines()[0])
	reg := prometheus.NewRegistry()
	if err := tel.Register(reg); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Gather(); err != nil {
		t.Fatalf("gather: %v", err)
	}
	if tel.Available() != (len(tel.Devices()) > 0) || tel.Available() != (tel.Reason() == "") {
		t.Errorf("Available()=%v inconsistent with Devices()=%v Reason()=%q", tel.Available(), tel.Devices(), tel.Reason())
	}
	if err := tel.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := tel.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if tel.Available() || len(tel.Devices()) != 0 {
		t.Error("telemetry still reports GPUs after Close")
	}
}

// fixedDriver stands in for NVML on a host with one GPU, so the collector's
// naming and labelling can be checked where no GPU exists; the real NVML
// path is exercised on the GPU machine by scripts/gpu/gpu-check.sh.
type fixedDriver struct {
	shutdowns int
}

func (d *fixedDriver) devices() []DeviceInfo {
	return []DeviceInfo{{Index: 0, Name: "NVIDIA H100 80GB HBM3", UUID: "GPU-0000", MemoryBytes: 80 << 30}}
}

func (d *fixedDriver) read(int) []reading {
	return []reading{{fieldGPUUtil, 87}, {fieldFBUsed, 3 << 30}, {fieldFBTotal, 80 << 30}, {fieldPower, 312.5}}
}

func (d *fixedDriver) shutdown() error { d.shutdowns++; return nil }

func TestCollectorExportsReadingsWithDCGMLabels(t *testing.T) {
	drv := &fixedDriver{}
	log, _ := newLogger()
	tel := openWith(log, func() (driver, error) { return drv, nil })
	reg := prometheus.NewRegistry()
	if err := tel.Register(reg); err != nil {
		t.Fatal(err)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			l := map[string]string{}
			for _, p := range m.GetLabel() {
				l[p.GetName()] = p.GetValue()
			}
			if l["gpu"] != "0" || l["UUID"] != "GPU-0000" || l["modelName"] != "NVIDIA H100 80GB HBM3" {
				t.Errorf("%s labels = %v", f.GetName(), l)
			}
			got[f.GetName()] = m.GetGauge().GetValue()
		}
	}
	want := map[string]float64{
		"infergate_gpu_utilization":       87,
		"infergate_gpu_fb_used_bytes":     3 << 30,
		"infergate_gpu_fb_total_bytes":    80 << 30,
		"infergate_gpu_power_usage_watts": 312.5,
	}
	if len(got) != len(want) {
		t.Errorf("exported %v, want exactly %v (unsupported gauges must be left out)", got, want)
	}
	for name, v := range want {
		if got[name] != v {
			t.Errorf("%s = %v, want %v", name, got[name], v)
		}
	}
	if devs := tel.Devices(); len(devs) != 1 || devs[0].UUID != "GPU-0000" {
		t.Errorf("Devices() = %v", devs)
	}

	if err := tel.Close(); err != nil {
		t.Fatal(err)
	}
	_ = tel.Close()
	if drv.shutdowns != 1 {
		t.Errorf("NVML shut down %d times, want once", drv.shutdowns)
	}
	if n := len(collect(collector{tel})); n != 0 {
		t.Errorf("collector read the GPU %d times after Close", n)
	}
}
