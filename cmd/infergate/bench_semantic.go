package main

import (
	"errors"
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/infergate/infergate/engine/model"
	"github.com/infergate/infergate/engine/model/uselite"
	"github.com/infergate/infergate/extproc/semantic"
)

var benchSemanticCmd = &cobra.Command{
	Use:   "semantic",
	Short: "Measure the semantic cache on labelled pairs: hits on paraphrases, wrong answers on near-duplicates",
	Long: `semantic reads labelled pairs, one JSON object a line:
  {"a": "How do I reset my password?", "b": "How can I reset my password?", "same": true}
stores every "a" in one scope of a fresh semantic cache, queries with every
"b", and prints for each threshold, with and without the guard:
  hit%     true pairs answered with a right answer
  false%   false pairs answered with a wrong answer
  wrong%   true pairs answered with another pair's (wrong) answer
Embeddings come from the USE-Lite encoder in this process (the model named
by --model in engine.models, else models/use-lite).`,
	Args: cobra.NoArgs,
	RunE: runBenchSemantic,
}

func init() {
	f := benchSemanticCmd.Flags()
	f.String("pairs", "", "labelled pairs, JSON lines (required)")
	f.String("thresholds", "0.6,0.65,0.7,0.75,0.78,0.8,0.82,0.85,0.88,0.9,0.92,0.95", "similarity thresholds to sweep")
	f.String("model", "", "use-lite model in engine.models (default: the first)")
	benchCmd.AddCommand(benchSemanticCmd)
}

func runBenchSemantic(cmd *cobra.Command, _ []string) error {
	cfg, err := loadConfig(cmd)
	if err != nil {
		return err
	}
	f := cmd.Flags()
	pairsPath, _ := f.GetString("pairs")
	if pairsPath == "" {
		return errors.New("bench semantic: --pairs is required")
	}
	list, _ := f.GetString("thresholds")
	thresholds, err := semantic.ParseThresholds(list)
	if err != nil {
		return fmt.Errorf("bench semantic: --thresholds: %w", err)
	}
	file, err := os.Open(pairsPath)
	if err != nil {
		return fmt.Errorf("bench semantic: %w", err)
	}
	pairs, err := semantic.ReadPairs(file)
	file.Close()
	if err != nil {
		return fmt.Errorf("bench semantic: %s: %w", pairsPath, err)
	}

	name, _ := f.GetString("model")
	dir := ""
	for _, m := range cfg.Engine.Models {
		if m.Kind == "use-lite" && (name == "" || m.Name == name) {
			dir = m.Path
			break
		}
	}
	if dir == "" {
		if name != "" {
			return fmt.Errorf("bench semantic: no use-lite model named %q in engine.models", name)
		}
		dir = "models/use-lite"
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

	s, err := semantic.RunSweep(cmd.Context(), semantic.EncoderEmbedder{Encoder: enc}, pairs, thresholds, cfg.ExtProc.Semantic.SynonymGroups())
	if err != nil {
		return fmt.Errorf("bench semantic: %w", err)
	}
	out := cmd.OutOrStdout()
	fmt.Fprintf(out, "%s: %d true pairs, %d false pairs, %d entries stored; embedding %.2f ms/text in process\n\n",
		pairsPath, s.TruePairs, s.FalsePairs, s.Stored, float64(s.EmbedPerText.Microseconds())/1000)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "threshold\tguard\thit%\tfalse%\twrong%\t")
	for _, r := range s.Rows {
		guard := "off"
		if r.Guard {
			guard = "on"
		}
		fmt.Fprintf(tw, "%.2f\t%s\t%.1f\t%.1f\t%.1f\t\n", r.Threshold, guard, 100*r.HitRate, 100*r.FalseHitRate, 100*r.WrongOnTrue)
	}
	return tw.Flush()
}
