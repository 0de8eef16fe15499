package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/infergate/infergate/config"
	"github.com/infergate/infergate/engine"
	"github.com/infergate/infergate/engine/loadgen"
	"github.com/infergate/infergate/engine/model"
)

var benchCmd = &cobra.Command{
	Use:   "bench",
	Short: "Measure the engine: latency percentiles and throughput under closed- and open-loop load",
	Long: `bench is a load generator for the engine's POST /v1/embeddings, in the
spirit of Triton's perf_analyzer. For each load point it warms up, then
measures windows until the last three agree within --stability, and reports
p50/p90/p95/p99 latency and throughput (items/s).

Without --url it starts the engine itself, in this process, from the config
file's model, once per mode:
  dynamic    the model as configured (dynamic batching)
  unbatched  the same with max_batch_size: 1
  ceiling    no server: the runtime's own throughput, calling the encoder
             directly with batches of min(concurrency, max_batch_size)
With --url it measures that running engine only (mode "engine"); with
--in-process it measures the ceiling only, at --batch-sizes if given.`,
	Args: cobra.NoArgs,
	RunE: runBench,
}

func init() {
	f := benchCmd.Flags()
	f.String("url", "", "base URL of a running engine (default: start one in-process per mode)")
	f.String("model", "", "model to load (default: the first in engine.models)")
	f.String("modes", "dynamic,unbatched,ceiling", "in-process modes to measure: dynamic, unbatched, ceiling")
	f.String("concurrency", "1,8,32,64", "closed-loop concurrency levels")
	f.String("rate", "", "open-loop Poisson rates in requests/s (e.g. 50,100)")
	f.Int("inputs", 1, "texts per request")
	f.String("encoding-format", "", `encoding_format to ask for: float or base64 (the OpenAI clients' choice; default: none sent, which is float)`)
	f.String("texts", "", "file of texts to send, one per line, e.g. a sample of your traffic (default: generated 8-20-word sentences)")
	f.Int("workers", 0, "override the model's workers in every in-process mode (default: as configured)")
	f.Duration("warmup", 2*time.Second, "load before measuring each point")
	f.Duration("window", 4*time.Second, "length of one measurement window (alias --duration)")
	f.Bool("in-process", false, "measure only the runtime in-process (the ceiling mode)")
	f.String("batch-sizes", "", "ceiling batch sizes (default: min(concurrency × inputs, max_batch_size))")
	f.Int("tokens", 0, "ceiling only: run sequences of exactly this many tokens (default: one per text, as served)")
	f.SetNormalizeFunc(func(_ *pflag.FlagSet, name string) pflag.NormalizedName {
		if name == "duration" {
			name = "window"
		}
		return pflag.NormalizedName(name)
	})
	f.Int("max-windows", 8, "windows before giving up on stability")
	f.Float64("stability", 0.1, "largest relative spread of the last three windows")
	f.String("from", "", "measure nothing: read the results of an earlier --json and write the table, CSV and plot again")
	f.String("csv", "", "write results as CSV to this file")
	f.String("json", "", "write results as JSON to this file")
	f.String("plot", "", "write a p99-latency/throughput plot (PNG) to this file")
	rootCmd.AddCommand(benchCmd)
}

// benchPlan is the parsed command line.
type benchPlan struct {
	opts        loadgen.Options
	concurrency []int
	rates       []float64
	batchSizes  []int
	inputs      int
	format      string
	tokens      int
	model       config.EngineModel
	backend     string
	texts       []string
}

func runBench(cmd *cobra.Command, _ []string) error {
	cfg, err := loadConfig(cmd)
	if err != nil {
		return err
	}
	f := cmd.Flags()
	var plan benchPlan
	plan.opts.Warmup, _ = f.GetDuration("warmup")
	plan.opts.Window, _ = f.GetDuration("window")
	plan.opts.MaxWindows, _ = f.GetInt("max-windows")
	plan.opts.Stability, _ = f.GetFloat64("stability")
	plan.inputs, _ = f.GetInt("inputs")
	plan.format, _ = f.GetString("encoding-format")
	if plan.format != "" && plan.format != "float" && plan.format != "base64" {
		return fmt.Errorf("bench: --encoding-format %q is not one of float, base64", plan.format)
	}
	plan.tokens, _ = f.GetInt("tokens")
	if url, _ := f.GetString("url"); plan.tokens != 0 && url != "" {
		return errors.New("bench: --tokens sets the in-process ceiling's sequence length; a running engine tokenizes what it is sent")
	}
	if plan.inputs < 1 {
		return errors.New("bench: --inputs must be at least 1")
	}
	cs, _ := f.GetString("concurrency")
	if plan.concurrency, err = parseList(cs, strconv.Atoi); err != nil {
		return fmt.Errorf("bench: --concurrency: %w", err)
	}
	rs, _ := f.GetString("rate")
	if plan.rates, err = parseList(rs, func(s string) (float64, error) { return strconv.ParseFloat(s, 64) }); err != nil {
		return fmt.Errorf("bench: --rate: %w", err)
	}
	bs, _ := f.GetString("batch-sizes")
	if plan.batchSizes, err = parseList(bs, strconv.Atoi); err != nil {
		return fmt.Errorf("bench: --batch-sizes: %w", err)
	}
	if len(plan.concurrency) == 0 && len(plan.rates) == 0 {
		return errors.New("bench: give at least one load point (--concurrency or --rate)")
	}
	name, _ := f.GetString("model")
	found := false
	for _, m := range cfg.Engine.Models {
		if name == "" || m.Name == name {
			plan.model, found = m, true
			break
		}
	}
	url, _ := f.GetString("url")
	if !found && url != "" && name != "" {
		// A running engine is asked by name; this config need not list it.
		plan.model, found = config.EngineModel{Name: name}, true
	}
	if !found {
		return fmt.Errorf("bench: no model %q in engine.models", name)
	}
	if w, _ := f.GetInt("workers"); w > 0 {
		plan.model.Workers = w
	}
	plan.backend = cfg.Engine.Backend
	plan.texts = loadgen.Corpus(4096)
	if path, _ := f.GetString("texts"); path != "" {
		if plan.texts, err = readTexts(path); err != nil {
			return fmt.Errorf("bench: --texts: %w", err)
		}
	}

	ctx := cmd.Context()
	out := cmd.OutOrStdout()
	var results []loadgen.Result
	if from, _ := f.GetString("from"); from != "" {
		data, err := os.ReadFile(from)
		if err != nil {
			return fmt.Errorf("bench: %w", err)
		}
		if err := json.Unmarshal(data, &results); err != nil {
			return fmt.Errorf("bench: %s: %w", from, err)
		}
	} else if url != "" {
		results, err = plan.sweep(ctx, out, "engine", strings.TrimSuffix(url, "/"))
	} else {
		modes, _ := f.GetString("modes")
		if inProc, _ := f.GetBool("in-process"); inProc {
			modes = "ceiling"
		}
		results, err = plan.inProcess(ctx, out, cfg.Engine, strings.Split(modes, ","))
	}
	if err != nil {
		return err
	}
	fmt.Fprintln(out)
	if err := loadgen.WriteTable(out, results); err != nil {
		return err
	}
	csvPath, _ := f.GetString("csv")
	jsonPath, _ := f.GetString("json")
	plotPath, _ := f.GetString("plot")
	if err := writeBenchFiles(results, plan.model.Name, csvPath, jsonPath, plotPath); err != nil {
		return err
	}
	return failedPoints(results)
}

// parseList reads a comma-separated list of positive numbers.
func parseList[T int | float64](s string, parse func(string) (T, error)) ([]T, error) {
	var out []T
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part == "" {
			continue
		}
		v, err := parse(part)
		if err != nil {
			return nil, fmt.Errorf("%q is not a number", part)
		}
		if !(v > 0) {
			return nil, fmt.Errorf("%q is not positive", part)
		}
		out = append(out, v)
	}
	return out, nil
}

// failedPoints names the load points at which no request succeeded: their
// zeros are not measurements, and bench must not exit 0 on them.
func failedPoints(results []loadgen.Result) error {
	var failed []string
	for _, r := range results {
		if r.Mode != "ceiling" && r.Errors >= r.Requests {
			failed = append(failed, fmt.Sprintf("%s %s (%d errors)", r.Mode, label(r), r.Errors))
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("bench: no request succeeded at %s: is the engine up, and does it accept --inputs and --model?", strings.Join(failed, ", "))
	}
	return nil
}

// sweep runs every configured load point against url.
func (p *benchPlan) sweep(ctx context.Context, log io.Writer, mode, url string) ([]loadgen.Result, error) {
	target := &loadgen.Target{URL: url, Model: p.model.Name, Texts: p.texts, InputsPerRequest: p.inputs, EncodingFormat: p.format}
	var results []loadgen.Result
	record := func(r loadgen.Result, err error) error {
		if err != nil {
			return err
		}
		r.Mode = mode
		if mode == "engine" {
			// The engine runs elsewhere: this process's CPU is only the
			// load generator's.
			r.CPUSeconds, r.ItemsPerCPUSecond = 0, 0
		}
		fmt.Fprintf(log, "%-10s %-14s %8.1f items/s  %6.1f items/cpu-s  p99 %7.1f ms  mean batch %.1f  errors %d\n",
			mode, label(r), r.Throughput, r.ItemsPerCPUSecond, r.P99Ms, r.MeanBatch, r.Errors)
		results = append(results, r)
		return nil
	}
	for _, c := range p.concurrency {
		if err := record(target.Concurrency(ctx, p.opts, c)); err != nil {
			return nil, err
		}
	}
	for _, rate := range p.rates {
		if err := record(target.Rate(ctx, p.opts, rate)); err != nil {
			return nil, err
		}
	}
	return results, nil
}

func label(r loadgen.Result) string {
	if r.Load == "rate" {
		return fmt.Sprintf("rate=%g/s", r.Rate)
	}
	return fmt.Sprintf("c=%d", r.Concurrency)
}

func (p *benchPlan) inProcess(ctx context.Context, log io.Writer, base config.Engine, modes []string) ([]loadgen.Result, error) {
	var results []loadgen.Result
	for _, mode := range modes {
		var (
			rs  []loadgen.Result
			err error
		)
		switch strings.TrimSpace(mode) {
		case "dynamic":
			rs, err = p.engineMode(ctx, log, "dynamic", base, p.model)
		case "unbatched":
			m := p.model
			m.MaxBatchSize, m.PreferredBatchSizes = 1, []int{1}
			rs, err = p.engineMode(ctx, log, "unbatched", base, m)
		case "ceiling":
			rs, err = p.ceiling(ctx, log)
		default:
			return nil, fmt.Errorf("bench: unknown mode %q (dynamic, unbatched, ceiling)", mode)
		}
		if err != nil {
			return nil, err
		}
		results = append(results, rs...)
	}
	return results, nil
}

// engineMode serves m alone on a free loopback port and sweeps it.
func (p *benchPlan) engineMode(ctx context.Context, log io.Writer, mode string, base config.Engine, m config.EngineModel) ([]loadgen.Result, error) {
	cfg := base
	cfg.Listen = "127.0.0.1:0"
	cfg.Models = []config.EngineModel{m}
	// Measure the batcher and the model, not the reuse of repeated texts.
	noReuse := int64(0)
	cfg.EmbeddingCacheBytes = &noReuse
	quiet := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	srv, err := engine.New(cfg, quiet)
	if err != nil {
		return nil, err
	}
	if err := srv.Listen(); err != nil {
		return nil, err
	}
	sctx, stop := context.WithCancel(ctx)
	var serveErr error
	served := make(chan struct{})
	go func() { serveErr = srv.Serve(sctx); close(served) }()
	defer func() { stop(); <-served }()
	url := "http://" + srv.Addr()
	fmt.Fprintf(log, "%s: engine on %s, max_batch_size %d, max_queue_delay %s, workers %d\n", mode, url, m.MaxBatchSize, *m.MaxQueueDelay, m.Workers)
	if err := waitReady(ctx, url, served); err != nil {
		if errors.Is(err, errEngineStopped) {
			return nil, fmt.Errorf("bench: %s engine stopped while loading: %w", mode, serveErr)
		}
		return nil, err
	}
	return p.sweep(ctx, log, mode, url)
}

var errEngineStopped = errors.New("engine stopped")

func waitReady(ctx context.Context, url string, served <-chan struct{}) error {
	for {
		resp, err := http.Get(url + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-served:
			return errEngineStopped
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// ceiling measures the encoder alone at the batch sizes the engine forms
// at each concurrency.
func (p *benchPlan) ceiling(ctx context.Context, log io.Writer) ([]loadgen.Result, error) {
	backend, err := model.NewBackend(p.backend)
	if err != nil {
		return nil, err
	}
	defer backend.Finalize()
	enc, err := engine.LoadEncoder(p.model, backend)
	if err != nil {
		return nil, err
	}
	defer enc.Close()
	seqs, err := loadgen.Sequences(enc, p.texts, p.tokens)
	if err != nil {
		return nil, err
	}
	sizes := slices.Clone(p.batchSizes)
	if len(sizes) == 0 {
		for _, c := range p.concurrency {
			sizes = append(sizes, min(c*p.inputs, p.model.MaxBatchSize))
		}
	}
	slices.Sort(sizes)
	// Compile only the shapes these batches use, not every bucket the
	// engine would: on XLA each compile takes seconds.
	if w, ok := enc.(engine.Warmer); ok {
		longest := 0
		for _, s := range seqs {
			longest = max(longest, len(s))
		}
		if err := w.WarmupBatches(ctx, sizes[len(sizes)-1], longest); err != nil {
			return nil, err
		}
	}
	var results []loadgen.Result
	for _, b := range slices.Compact(sizes) {
		r, err := loadgen.Ceiling(ctx, p.opts, enc, seqs, b, p.model.Workers)
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(log, "%-10s batch=%-8d %8.1f items/s  %6.1f items/cpu-s  p99 %7.1f ms per batch\n",
			"ceiling", b, r.Throughput, r.ItemsPerCPUSecond, r.P99Ms)
		results = append(results, r)
	}
	return results, nil
}

func writeBenchFiles(results []loadgen.Result, modelName, csvPath, jsonPath, plotPath string) error {
	write := func(path string, fn func(io.Writer) error) error {
		if path == "" {
			return nil
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		fh, err := os.Create(path)
		if err != nil {
			return err
		}
		if err := fn(fh); err != nil {
			fh.Close()
			return err
		}
		return fh.Close()
	}
	if err := write(csvPath, func(w io.Writer) error { return loadgen.WriteCSV(w, results) }); err != nil {
		return err
	}
	if err := write(jsonPath, func(w io.Writer) error { return loadgen.WriteJSON(w, results) }); err != nil {
		return err
	}
	if plotPath != "" {
		if err := os.MkdirAll(filepath.Dir(plotPath), 0o755); err != nil {
			return err
		}
		return loadgen.Plot(plotPath, fmt.Sprintf("infergate engine, %s (ceiling latency is per batch)", modelName), results)
	}
	return nil
}

// readTexts reads one text per non-blank line of path.
func readTexts(path string) ([]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var texts []string
	for line := range strings.Lines(string(data)) {
		if t := strings.TrimSpace(line); t != "" {
			texts = append(texts, t)
		}
	}
	if len(texts) == 0 {
		return nil, fmt.Errorf("%s holds no text", path)
	}
	return texts, nil
}
