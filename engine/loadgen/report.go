package loadgen

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"image/color"
	"io"
	"strconv"
	"text/tabwriter"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

var csvHeader = []string{"mode", "load", "concurrency", "rate", "batch_size", "requests", "errors", "throughput",
	"mean_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "mean_batch", "cpu_per_s", "items_per_cpu_s", "windows", "stable"}

// WriteCSV writes one row per result.
func WriteCSV(w io.Writer, results []Result) error {
	cw := csv.NewWriter(w)
	_ = cw.Write(csvHeader)
	f := func(v float64) string { return strconv.FormatFloat(v, 'f', 3, 64) }
	for _, r := range results {
		_ = cw.Write([]string{r.Mode, r.Load, strconv.Itoa(r.Concurrency), f(r.Rate), strconv.Itoa(r.BatchSize),
			strconv.Itoa(r.Requests), strconv.Itoa(r.Errors), f(r.Throughput), f(r.MeanMs), f(r.P50Ms), f(r.P90Ms),
			f(r.P95Ms), f(r.P99Ms), f(r.MeanBatch), f(r.CPUSeconds), f(r.ItemsPerCPUSecond), strconv.Itoa(r.Windows),
			strconv.FormatBool(r.Stable)})
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
	fmt.Fprintln(tw, "mode\tload\titems/s\titems/cpu-s\tp50 ms\tp90 ms\tp95 ms\tp99 ms\tmean batch\terrors\tstable\t")
	for _, r := range results {
		fmt.Fprintf(tw, "%s\t%s\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%s\t%d\t%v\t\n", r.Mode, loadLabel(r), r.Throughput,
			r.ItemsPerCPUSecond, r.P50Ms, r.P90Ms, r.P95Ms, r.P99Ms, meanBatch(r), r.Errors, r.Stable)
	}
	return tw.Flush()
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

// Plot draws p99 latency against throughput, one line per mode, each
// point labelled with its load, and writes a PNG to path.
func Plot(path, title string, results []Result) error {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "throughput (items/s)"
	p.Y.Label.Text = "p99 latency (ms)"
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Add(plotter.NewGrid())
	colors := []color.Color{
		color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
		color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff},
		color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff},
		color.RGBA{R: 0x94, G: 0x67, B: 0xbd, A: 0xff},
	}
	var modes []string
	byMode := map[string][]Result{}
	for _, r := range results {
		if r.P99Ms <= 0 {
			continue
		}
		if _, ok := byMode[r.Mode]; !ok {
			modes = append(modes, r.Mode)
		}
		byMode[r.Mode] = append(byMode[r.Mode], r)
	}
	for i, mode := range modes {
		rs := byMode[mode]
		pts := make(plotter.XYs, len(rs))
		labels := make([]string, len(rs))
		for j, r := range rs {
			pts[j] = plotter.XY{X: r.Throughput, Y: r.P99Ms}
			labels[j] = loadLabel(r)
		}
		line, points, err := plotter.NewLinePoints(pts)
		if err != nil {
			return err
		}
		c := colors[i%len(colors)]
		line.Color, points.Color = c, c
		line.Width = vg.Points(1.5)
		points.Shape = draw.CircleGlyph{}
		lbl, err := plotter.NewLabels(plotter.XYLabels{XYs: pts, Labels: labels})
		if err != nil {
			return err
		}
		for k := range lbl.TextStyle {
			lbl.TextStyle[k].Color = c
			lbl.TextStyle[k].XAlign = draw.XLeft
		}
		lbl.Offset = vg.Point{X: vg.Points(4), Y: vg.Points(2)}
		p.Add(line, points, lbl)
		p.Legend.Add(mode, line, points)
	}
	p.Legend.Top = true
	p.Legend.Left = true
	return p.Save(8*vg.Inch, 5*vg.Inch, path)
}
