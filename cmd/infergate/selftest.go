package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/infergate/infergate/engine/gpu"
	"github.com/infergate/infergate/engine/model"
	"github.com/infergate/infergate/engine/model/uselite"
)

// goldenTolerance matches the uselite golden test: float32 on both sides,
// differences come from summation order.
const goldenTolerance = 1e-5

var selftestCmd = &cobra.Command{
	Use:   "selftest",
	Short: "Check that the configured backend reproduces USE-Lite's golden vectors (TF.js-made)",
	Long: `selftest loads the USE-Lite model on the engine's configured backend
(engine.backend: simplego, or xla on a GPU), embeds the sentences of the
golden file in one batch, and compares every component with the vectors
TensorFlow.js produced. Exit status 0 only when all match within --tolerance
(1e-5, fp32 rounding).`,
	Args: cobra.NoArgs,
	RunE: func(cmd *cobra.Command, _ []string) error {
		cfg, err := loadConfig(cmd)
		if err != nil {
			return err
		}
		log := newLogger(cfg.Log)
		name, _ := cmd.Flags().GetString("model")
		goldenPath, _ := cmd.Flags().GetString("golden")
		jsonPath, _ := cmd.Flags().GetString("json")
		tolerance, _ := cmd.Flags().GetFloat64("tolerance")
		if !(tolerance > 0) {
			return fmt.Errorf("selftest: --tolerance %v must be positive", tolerance)
		}

		dir := ""
		for _, m := range cfg.Engine.Models {
			if m.Name == name && m.Kind == "use-lite" {
				dir = m.Path
			}
		}
		if dir == "" {
			return fmt.Errorf("selftest: no use-lite model named %q in engine.models", name)
		}
		cases, err := readGolden(goldenPath)
		if err != nil {
			return err
		}
		backend, err := model.NewBackend(cfg.Engine.Backend)
		if err != nil {
			return err
		}
		enc, err := uselite.Load(dir, backend)
		if err != nil {
			return err
		}
		defer enc.Close()

		batch := make([][]int32, len(cases))
		for i, c := range cases {
			if batch[i], err = enc.Tokenize(c.Text); err != nil {
				return fmt.Errorf("selftest: tokenize %q: %w", c.Text, err)
			}
		}
		start := time.Now()
		vecs, err := enc.Embed(cmd.Context(), batch)
		if err != nil {
			return fmt.Errorf("selftest: embed: %w", err)
		}
		firstRun := time.Since(start)

		maxDiff := 0.0
		for i, c := range cases {
			if len(c.Vector) != len(vecs[i]) {
				return fmt.Errorf("selftest: golden vector %d has %d components, the model gives %d: the golden file is not this model's", i, len(c.Vector), len(vecs[i]))
			}
			for j, want := range c.Vector {
				maxDiff = math.Max(maxDiff, math.Abs(float64(vecs[i][j]-want)))
			}
		}
		tel := gpu.Open(log)
		defer tel.Close()
		result := map[string]any{
			"backend":      cfg.Engine.Backend,
			"devices":      tel.Devices(),
			"cases":        len(cases),
			"max_abs_diff": maxDiff,
			"tolerance":    tolerance,
			"ok":           maxDiff <= tolerance,
			"compile_s":    firstRun.Seconds(),
		}
		out, _ := json.MarshalIndent(result, "", "  ")
		fmt.Fprintln(cmd.OutOrStdout(), string(out))
		if jsonPath != "" {
			if err := os.WriteFile(jsonPath, out, 0o644); err != nil {
				return err
			}
		}
		if maxDiff > tolerance {
			return fmt.Errorf("selftest: max |diff| %.3g exceeds %.0e on backend %s", maxDiff, tolerance, cfg.Engine.Backend)
		}
		return nil
	},
}

type goldenCase struct {
	Text   string    `json:"text"`
	Vector []float32 `json:"vector"`
}

func readGolden(path string) ([]goldenCase, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("selftest: %w", err)
	}
	var file struct {
		Cases []goldenCase `json:"cases"`
	}
	if err := json.Unmarshal(data, &file); err != nil || len(file.Cases) == 0 {
		return nil, fmt.Errorf("selftest: %s holds no golden cases (%v)", path, err)
	}
	return file.Cases, nil
}

func init() {
	selftestCmd.Flags().String("model", "use-lite", "name of the use-lite model in engine.models")
	selftestCmd.Flags().String("golden", "engine/model/uselite/testdata/golden.json", "golden vectors made by TF.js")
	selftestCmd.Flags().String("json", "", "also write the result as JSON to this file")
	selftestCmd.Flags().Float64("tolerance", goldenTolerance, "largest |difference| per component that passes")
	rootCmd.AddCommand(selftestCmd)
}
