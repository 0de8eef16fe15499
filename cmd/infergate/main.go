// Command infergate runs the infergate components: the xDS control plane,
// the ext_proc server and the inference engine, together (`up`) or one at a
// time, and prints the Envoy bootstrap that connects Envoy to them.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/infergate/infergate/config"
	"github.com/infergate/infergate/engine"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

var rootCmd = &cobra.Command{
	Use:   "infergate",
	Short: "An AI inference pipeline inside an Envoy mesh",
	Long: `infergate puts an inference pipeline into an Envoy mesh: an xDS control
plane that configures Envoy live, an ext_proc server that answers repeated
requests from cache and enforces rate limits, and a dynamic-batching
inference engine that serves what misses the cache.`,
	SilenceUsage:  true,
	SilenceErrors: true,
}

func init() {
	rootCmd.PersistentFlags().StringP("config", "c", "", "path to infergate.yaml (default: built-in defaults, all on loopback)")
}

func main() {
	engine.Version = version
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := rootCmd.ExecuteContext(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "infergate: %v\n", err)
		os.Exit(1)
	}
}

// loadConfig reads the file named by --config.
func loadConfig(cmd *cobra.Command) (config.Config, error) {
	path, err := cmd.Flags().GetString("config")
	if err != nil {
		return config.Config{}, err
	}
	return config.Load(path)
}

// configPath is the --config value, for components that watch the file.
func configPath(cmd *cobra.Command) string {
	path, _ := cmd.Flags().GetString("config")
	return path
}

// newLogger builds the process logger from the log section.
func newLogger(c config.Log) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.Level)) // validated by config
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}
