package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/infergate/infergate/config"
	"github.com/infergate/infergate/envoy/bootstrap"
)

var envoyCmd = &cobra.Command{
	Use:   "envoy",
	Short: "Envoy-facing helpers",
}

var bootstrapCmd = &cobra.Command{
	Use:   "bootstrap",
	Short: "Print an Envoy bootstrap that connects Envoy to the control plane over ADS",
	Long: `bootstrap prints a YAML bootstrap for Envoy: node id and cluster from the
config (or flags), admin on envoy.admin, and ADS pointed at xds.listen.
Run Envoy with it:  envoy -c <(infergate envoy bootstrap -c infergate.yaml)`,
	Args: cobra.NoArgs,
	RunE: func(cmd *cobra.Command, _ []string) error {
		cfg, err := loadConfig(cmd)
		if err != nil {
			return err
		}
		if v, _ := cmd.Flags().GetString("node-id"); v != "" {
			cfg.Envoy.NodeID = v
		}
		if v, _ := cmd.Flags().GetString("cluster"); v != "" {
			cfg.Envoy.Cluster = v
		}
		out, err := bootstrap.Render(cfg)
		if err != nil {
			return err
		}
		_, err = cmd.OutOrStdout().Write(out)
		return err
	},
}

func init() {
	bootstrapCmd.Flags().String("node-id", "", "node.id Envoy presents (default envoy.node_id)")
	bootstrapCmd.Flags().String("cluster", "", "node.cluster Envoy presents (default envoy.cluster)")
	envoyCmd.AddCommand(bootstrapCmd)
	rootCmd.AddCommand(envoyCmd)
}

// envoyProcess runs a real Envoy beside the components in `infergate up`.
type envoyProcess struct {
	binary string
	cfg    config.Config
	log    *slog.Logger
	path   string
}

func (e *envoyProcess) Name() string { return "envoy" }

func (e *envoyProcess) Listen() error {
	data, err := bootstrap.Render(e.cfg)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "infergate-envoy-")
	if err != nil {
		return err
	}
	e.path = filepath.Join(dir, "bootstrap.yaml")
	return os.WriteFile(e.path, data, 0o600)
}

func (e *envoyProcess) Serve(ctx context.Context) error {
	defer os.RemoveAll(filepath.Dir(e.path))
	// A dynamic base id lets this Envoy run beside another on the host
	// (its shared-memory and domain-socket names would clash otherwise).
	cmd := exec.Command(e.binary, "-c", e.path, "--log-level", "warn", "--use-dynamic-base-id")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", e.binary, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return fmt.Errorf("envoy exited: %w", err)
	case <-ctx.Done():
	}
	// SIGTERM lets Envoy drain its listeners before it exits.
	_ = cmd.Process.Signal(syscall.SIGTERM)
	if err := <-done; err != nil {
		var exit *exec.ExitError
		if errors.As(err, &exit) && exit.Sys().(syscall.WaitStatus).Signaled() {
			return nil
		}
		return err
	}
	return nil
}
