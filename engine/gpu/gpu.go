// Package gpu reports what the engine's GPUs are doing: per-GPU gauges read
// from NVML (utilisation, framebuffer memory, power, temperature, SM clock)
// for /metrics, and the list of devices for the engine's model metadata and
// the bench report.
//
// NVML is optional. Where the driver or libnvidia-ml.so.1 is missing, or the
// binary was built without cgo, telemetry is off: Open logs one line, the
// collector exports no GPU series, and no further NVML call is ever made
// (NVML entry points called after a failed nvmlInit can crash the process).
package gpu

import (
	"log/slog"
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// DeviceInfo describes one GPU as NVML names it.
type DeviceInfo struct {
	// Index is NVML's device index, the `gpu` label of the gauges.
	Index int `json:"index"`
	// Name is the product name, e.g. "NVIDIA H100 80GB HBM3".
	Name string `json:"name"`
	// UUID is the stable identifier, e.g. "GPU-6f0a…".
	UUID string `json:"uuid"`
	// MemoryBytes is the total framebuffer memory.
	MemoryBytes uint64 `json:"memory_bytes"`
}

// field is one gauge the collector exports per GPU.
type field int

const (
	fieldGPUUtil field = iota
	fieldMemCopyUtil
	fieldFBUsed
	fieldFBTotal
	fieldPower
	fieldTemperature
	fieldSMClock
	numFields
)

// gauges maps each exported gauge to the dcgm-exporter field it mirrors, so
// dashboards written for dcgm-exporter translate one to one. Where DCGM
// reports a non-base unit (MiB, MHz) we export the Prometheus base unit
// (bytes, hertz) and say so in the name.
//
//	infergate metric                      DCGM field                 unit here (DCGM's)
//	infergate_gpu_utilization             DCGM_FI_DEV_GPU_UTIL       percent (percent)
//	infergate_gpu_mem_copy_utilization    DCGM_FI_DEV_MEM_COPY_UTIL  percent (percent)
//	infergate_gpu_fb_used_bytes           DCGM_FI_DEV_FB_USED        bytes (MiB)
//	infergate_gpu_fb_total_bytes          DCGM_FI_DEV_FB_TOTAL       bytes (MiB)
//	infergate_gpu_power_usage_watts       DCGM_FI_DEV_POWER_USAGE    watts (watts)
//	infergate_gpu_temperature_celsius     DCGM_FI_DEV_GPU_TEMP       °C (°C)
//	infergate_gpu_sm_clock_hertz          DCGM_FI_DEV_SM_CLOCK       hertz (MHz)
var gauges = [numFields]struct{ name, help string }{
	fieldGPUUtil:     {"infergate_gpu_utilization", "GPU utilization in percent of the last sample period (DCGM_FI_DEV_GPU_UTIL)."},
	fieldMemCopyUtil: {"infergate_gpu_mem_copy_utilization", "Memory (copy engine) utilization in percent of the last sample period (DCGM_FI_DEV_MEM_COPY_UTIL)."},
	fieldFBUsed:      {"infergate_gpu_fb_used_bytes", "Framebuffer memory used, in bytes (DCGM_FI_DEV_FB_USED, which DCGM reports in MiB)."},
	fieldFBTotal:     {"infergate_gpu_fb_total_bytes", "Framebuffer memory in total, in bytes (DCGM_FI_DEV_FB_TOTAL, which DCGM reports in MiB)."},
	fieldPower:       {"infergate_gpu_power_usage_watts", "Power draw in watts (DCGM_FI_DEV_POWER_USAGE)."},
	fieldTemperature: {"infergate_gpu_temperature_celsius", "GPU core temperature in degrees Celsius (DCGM_FI_DEV_GPU_TEMP)."},
	fieldSMClock:     {"infergate_gpu_sm_clock_hertz", "SM clock frequency in hertz (DCGM_FI_DEV_SM_CLOCK, which DCGM reports in MHz)."},
}

// labels are dcgm-exporter's own label names for a whole GPU.
var labels = []string{"gpu", "UUID", "modelName"}

// reading is one gauge value for one GPU.
type reading struct {
	field field
	value float64
}

// driver is the seam between the collector and NVML; nvml.go implements it
// where cgo is available. Only a driver whose init succeeded exists.
type driver interface {
	devices() []DeviceInfo
	// read samples device i; gauges the GPU does not support are left out.
	read(i int) []reading
	shutdown() error
}

// Telemetry is the process's view of its GPUs. The zero of a failed Open is
// a working "no GPU" value: every method is safe and cheap.
type Telemetry struct {
	// mu orders Close against Collect: after Shutdown NVML's library is
	// unloaded, so no read may start once closed is set.
	mu     sync.RWMutex
	drv    driver
	closed bool
	reason string
	descs  [numFields]*prometheus.Desc
}

// Open initialises NVML once. When that fails, telemetry is off for the
// life of the process, with one log line saying why.
func Open(log *slog.Logger) *Telemetry {
	return openWith(log, openDriver)
}

// openWith lets tests choose how the driver is opened (a library path that
// does not exist, say) while going through the same bookkeeping as Open.
func openWith(log *slog.Logger, open func() (driver, error)) *Telemetry {
	t := &Telemetry{}
	for f, g := range gauges {
		t.descs[f] = prometheus.NewDesc(g.name, g.help, labels, nil)
	}
	drv, err := open()
	if err != nil {
		t.reason = err.Error()
		log.Info("gpu telemetry unavailable: "+t.reason, "component", "gpu")
		return t
	}
	t.drv = drv
	devs := drv.devices()
	attrs := []any{"component", "gpu", "gpus", len(devs)}
	for _, d := range devs {
		attrs = append(attrs, "gpu"+strconv.Itoa(d.Index), d.Name+" "+d.UUID)
	}
	log.Info("gpu telemetry on", attrs...)
	return t
}

// Available reports whether NVML is initialised and open.
func (t *Telemetry) Available() bool {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.drv != nil && !t.closed
}

// Reason says why telemetry is off ("" while it is on).
func (t *Telemetry) Reason() string {
	t.mu.RLock()
	defer t.mu.RUnlock()
	switch {
	case t.drv == nil:
		return t.reason
	case t.closed:
		return "closed"
	}
	return ""
}

// Devices lists the GPUs NVML sees; empty when telemetry is off.
func (t *Telemetry) Devices() []DeviceInfo {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if t.drv == nil || t.closed {
		return nil
	}
	return append([]DeviceInfo(nil), t.drv.devices()...)
}

// Register adds the per-GPU gauges to reg. Without telemetry the collector
// is still registered and simply exports no series, so /metrics looks the
// same on every host apart from the GPU lines.
func (t *Telemetry) Register(reg prometheus.Registerer) error {
	return reg.Register(collector{t})
}

// Close shuts NVML down if Open initialised it. It is safe to call more
// than once and on a Telemetry that never had a GPU.
func (t *Telemetry) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.drv == nil || t.closed {
		return nil
	}
	t.closed = true
	return t.drv.shutdown()
}

// collector is Telemetry seen as a prometheus.Collector; the gauges are read
// at scrape time, so a scrape shows the GPU as it is now.
type collector struct{ t *Telemetry }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.t.descs {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	t := c.t
	t.mu.RLock()
	defer t.mu.RUnlock()
	if t.drv == nil || t.closed {
		return
	}
	for i, dev := range t.drv.devices() {
		lv := []string{strconv.Itoa(dev.Index), dev.UUID, dev.Name}
		for _, r := range t.drv.read(i) {
			ch <- prometheus.MustNewConstMetric(t.descs[r.field], prometheus.GaugeValue, r.value, lv...)
		}
	}
}
