//go:build cgo

package gpu

import (
	"errors"
	"fmt"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// nvmlLibrary is the soname go-nvml dlopens; the driver package installs it.
const nvmlLibrary = "libnvidia-ml.so.1"

// nvmlDriver reads the gauges through NVML. It exists only after nvmlInit
// succeeded, which is what makes every call on it safe.
type nvmlDriver struct {
	lib  nvml.Interface
	devs []DeviceInfo
	hnds []nvml.Device
}

func openDriver() (driver, error) { return openNVML(nvmlLibrary) }

// openNVML initialises NVML from the library at path and enumerates the
// GPUs once; device handles stay valid until Shutdown.
func openNVML(path string) (driver, error) {
	lib := nvml.New(nvml.WithLibraryPath(path))
	if ret := lib.Init(); ret != nvml.SUCCESS {
		// Nothing else may be called now, not even Shutdown.
		return nil, fmt.Errorf("nvml init: %s", describe(ret))
	}
	d, err := enumerate(lib)
	if err == nil && len(d.devs) == 0 {
		// A driver without devices (a container not given any GPU) is a
		// host without a GPU.
		d, err = nil, errors.New("nvml: no GPU visible to this process")
	}
	if err != nil {
		if ret := lib.Shutdown(); ret != nvml.SUCCESS {
			err = errors.Join(err, fmt.Errorf("nvml shutdown: %s", describe(ret)))
		}
		return nil, err
	}
	return d, nil
}

func enumerate(lib nvml.Interface) (*nvmlDriver, error) {
	n, ret := lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("nvml device count: %s", describe(ret))
	}
	d := &nvmlDriver{lib: lib}
	for i := range n {
		h, ret := lib.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			return nil, fmt.Errorf("nvml device %d: %s", i, describe(ret))
		}
		info := DeviceInfo{Index: i}
		if info.Name, ret = h.GetName(); ret != nvml.SUCCESS {
			return nil, fmt.Errorf("nvml device %d name: %s", i, describe(ret))
		}
		if info.UUID, ret = h.GetUUID(); ret != nvml.SUCCESS {
			return nil, fmt.Errorf("nvml device %d uuid: %s", i, describe(ret))
		}
		if mem, ret := h.GetMemoryInfo(); ret == nvml.SUCCESS {
			info.MemoryBytes = mem.Total
		}
		d.devs = append(d.devs, info)
		d.hnds = append(d.hnds, h)
	}
	return d, nil
}

func (d *nvmlDriver) devices() []DeviceInfo { return d.devs }

// read leaves out what a GPU does not report (power on some boards, for
// instance) rather than failing the scrape; each query is independent.
func (d *nvmlDriver) read(i int) []reading {
	h := d.hnds[i]
	out := make([]reading, 0, numFields)
	if u, ret := h.GetUtilizationRates(); ret == nvml.SUCCESS {
		out = append(out, reading{fieldGPUUtil, float64(u.Gpu)}, reading{fieldMemCopyUtil, float64(u.Memory)})
	}
	if m, ret := h.GetMemoryInfo(); ret == nvml.SUCCESS {
		out = append(out, reading{fieldFBUsed, float64(m.Used)}, reading{fieldFBTotal, float64(m.Total)})
	}
	if mw, ret := h.GetPowerUsage(); ret == nvml.SUCCESS {
		out = append(out, reading{fieldPower, float64(mw) / 1000})
	}
	if c, ret := h.GetTemperature(nvml.TEMPERATURE_GPU); ret == nvml.SUCCESS {
		out = append(out, reading{fieldTemperature, float64(c)})
	}
	if mhz, ret := h.GetClockInfo(nvml.CLOCK_SM); ret == nvml.SUCCESS {
		out = append(out, reading{fieldSMClock, float64(mhz) * 1e6})
	}
	return out
}

func (d *nvmlDriver) shutdown() error {
	if ret := d.lib.Shutdown(); ret != nvml.SUCCESS {
		return fmt.Errorf("nvml shutdown: %s", describe(ret))
	}
	return nil
}

// describe names an NVML return code without calling into the library:
// go-nvml's Return.Error uses nvmlErrorString once the .so is loaded, and
// that is the one case (library found, driver absent) where no NVML call
// is safe.
func describe(ret nvml.Return) string {
	switch ret {
	case nvml.ERROR_LIBRARY_NOT_FOUND:
		return nvmlLibrary + " not found (no NVIDIA driver installed)"
	case nvml.ERROR_DRIVER_NOT_LOADED:
		return "NVIDIA driver not loaded"
	case nvml.ERROR_NO_PERMISSION:
		return "no permission to talk to the NVIDIA driver"
	case nvml.ERROR_UNINITIALIZED:
		return "NVML not initialised"
	}
	return fmt.Sprintf("NVML error %d", int32(ret))
}
