package loadgen

import (
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"image/color"
	"io"
	"os"
	"strconv"
	"text/tabwriter"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

var csvHeader = []string{"mode", "load", "concurrency", "rate", "batch_size", "requests", "errors", "throughput",
	"mean_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "mean_batch", "cpu_per_s", "items_per_cpu_s", "windows", "stable",
	"engine_queue_ms", "engine_batch_ms"}

// WriteCSV writes one row per result.
func WriteCSV(w io.Writer, results []Result) error {
	cw := csv.NewWriter(w)
	_ = cw.Write(csvHeader)
	f := func(v float64) string { return strconv.FormatFloat(v, 'f', 3, 64) }
	for _, r := range results {
		_ = cw.Write([]string{r.Mode, r.Load, strconv.Itoa(r.Concurrency), f(r.Rate), strconv.Itoa(r.BatchSize),
			strconv.Itoa(r.Requests), strconv.Itoa(r.Errors), f(r.Throughput), f(r.MeanMs), f(r.P50Ms), f(r.P90Ms),
			f(r.P95Ms), f(r.P99Ms), f(r.MeanBatch), f(r.CPUSeconds), f(r.ItemsPerCPUSecond), strconv.Itoa(r.Windows),
			strconv.FormatBool(r.Stable), f(r.QueueMs), f(r.BatchMs)})
	}
	cw.Flush()
	return cw.Error()
}

// WriteJSON writes the results as an indented JSON array.
func WriteJSON(w io.Writer, results []Result) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(results)
}

// WriteTable writes a human-readable table.
func WriteTable(w io.Writer, results []Result) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "mode\tload\titems/s\titems/cpu-s\tmean ms\tp50 ms\tp90 ms\tp95 ms\tp99 ms\tmean batch\tqueue ms\tbatch ms\terrors\tstable\t")
	for _, r := range results {
		fmt.Fprintf(tw, "%s\t%s\t%.1f\t%.1f\t%.2f\t%.1f\t%.1f\t%.1f\t%.1f\t%s\t%s\t%s\t%d\t%v\t\n", r.Mode, loadLabel(r), r.Throughput,
			r.ItemsPerCPUSecond, r.MeanMs, r.P50Ms, r.P90Ms, r.P95Ms, r.P99Ms, meanBatch(r), engineMs(r.QueueMs), engineMs(r.BatchMs), r.Errors, r.Stable)
	}
	return tw.Flush()
}

// engineMs is a mean read from the engine's /metrics; "-" when it could
// not be read (the ceiling has no engine).
func engineMs(v float64) string {
	if v == 0 {
		return "-"
	}
	return strconv.FormatFloat(v, 'f', 2, 64)
}

func loadLabel(r Result) string {
	switch r.Load {
	case "concurrency":
		return fmt.Sprintf("c=%d", r.Concurrency)
	case "rate":
		return fmt.Sprintf("%g req/s", r.Rate)
	default:
		return fmt.Sprintf("batch=%d", r.BatchSize)
	}
}

func meanBatch(r Result) string {
	if r.Load == "batch" {
		return strconv.Itoa(r.BatchSize)
	}
	if r.MeanBatch == 0 {
		return "-"
	}
	return strconv.FormatFloat(r.MeanBatch, 'f', 1, 64)
}

// Plot writes a PNG of three panels against load (concurrency, or batch
// size for the ceiling), one line per mode: throughput in items/s, items
// per CPU-second of this process, and p99 latency. Open-loop rate points
// are left out (they have no concurrency).
func Plot(path, title string, results []Result) error {
	panels := []struct {
		y     string
		value func(Result) float64
		log   bool
	}{
		{"throughput (items/s)", func(r Result) float64 { return r.Throughput }, false},
		{"items per CPU-second", func(r Result) float64 { return r.ItemsPerCPUSecond }, false},
		{"p99 latency (ms)", func(r Result) float64 { return r.P99Ms }, true},
	}
	var modes []string
	byMode := map[string][]Result{}
	for _, r := range results {
		if r.Load == "rate" {
			continue
		}
		if _, ok := byMode[r.Mode]; !ok {
			modes = append(modes, r.Mode)
		}
		byMode[r.Mode] = append(byMode[r.Mode], r)
	}
	var plots []*plot.Plot
	for _, panel := range panels {
		series := make([]plotter.XYs, len(modes))
		n := 0
		for j, mode := range modes {
			for _, r := range byMode[mode] {
				if v := panel.value(r); v > 0 && loadX(r) > 0 {
					series[j] = append(series[j], plotter.XY{X: float64(loadX(r)), Y: v})
					n++
				}
			}
		}
		if n == 0 {
			continue // e.g. no CPU figures for a remote engine
		}
		p := plot.New()
		if len(plots) == 0 {
			p.Title.Text = title
		}
		p.X.Label.Text = "concurrency (ceiling: batch size)"
		p.Y.Label.Text = panel.y
		p.X.Scale = plot.LogScale{}
		p.X.Tick.Marker = plot.ConstantTicks(loadTicks(results))
		if panel.log {
			p.Y.Scale = plot.LogScale{}
			p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
		} else {
			p.Y.Min = 0
		}
		p.Add(plotter.NewGrid())
		for j, mode := range modes {
			pts := series[j]
			if len(pts) == 0 {
				continue
			}
			line, points, err := plotter.NewLinePoints(pts)
			if err != nil {
				return err
			}
			c := plotColors[j%len(plotColors)]
			line.Color, points.Color = c, c
			line.Width = vg.Points(1.5)
			points.Shape = draw.CircleGlyph{}
			p.Add(line, points)
			p.Legend.Add(mode, line, points)
		}
		p.Legend.Top = true
		p.Legend.Left = true
		plots = append(plots, p)
	}
	if len(plots) == 0 {
		return errors.New("loadgen: no results to plot")
	}
	img := vgimg.New(vg.Length(len(plots))*5*vg.Inch, 4.5*vg.Inch)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 1, Cols: len(plots), PadX: vg.Millimeter * 6, PadY: vg.Millimeter * 4,
		PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 4, PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2}
	canvases := plot.Align([][]*plot.Plot{plots}, tiles, dc)
	for i, p := range plots {
		p.Draw(canvases[0][i])
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

var plotColors = []color.Color{
	color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
	color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff},
	color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff},
	color.RGBA{R: 0x94, G: 0x67, B: 0xbd, A: 0xff},
}

func loadX(r Result) int {
	if r.Load == "batch" {
		return r.BatchSize
	}
	return r.Concurrency
}

func loadTicks(results []Result) []plot.Tick {
	seen := map[int]bool{}
	var ticks []plot.Tick
	for _, r := range results {
		if x := loadX(r); x > 0 && !seen[x] {
			seen[x] = true
			ticks = append(ticks, plot.Tick{Value: float64(x), Label: strconv.Itoa(x)})
		}
	}
	return ticks
}
