package main

import (
	"fmt"
	"log/slog"
	"os/exec"
	"slices"

	"github.com/spf13/cobra"

	"github.com/infergate/infergate/config"
	"github.com/infergate/infergate/engine"
	"github.com/infergate/infergate/engine/registrar"
	"github.com/infergate/infergate/extproc"
	"github.com/infergate/infergate/internal/ops"
	"github.com/infergate/infergate/xds"
)

var upCmd = &cobra.Command{
	Use:   "up",
	Short: "Run the control plane, the ext_proc server and the engine in one process (and Envoy, if it is on PATH)",
	Long: `up starts the xDS control plane, the ext_proc server and the inference
engine in one process on the addresses of the config file. If an envoy binary
is on PATH it is started too, with the generated bootstrap; otherwise up
prints how to run one against the control plane. SIGINT or SIGTERM stops
everything gracefully: in-flight requests finish first.`,
	Args: cobra.NoArgs,
	RunE: func(cmd *cobra.Command, _ []string) error {
		cfg, err := loadConfig(cmd)
		if err != nil {
			return err
		}
		if err := cfg.CheckCollapseWait(); err != nil {
			return err
		}
		log := newLogger(cfg.Log)
		services, err := buildServices(cmd, cfg, log, "xds", "extproc", "engine")
		if err != nil {
			return err
		}
		if path, err := exec.LookPath(cfg.Envoy.Binary); err == nil {
			log.Info("envoy found on PATH: starting it with the generated bootstrap", "binary", path)
			services = append(services, &envoyProcess{binary: path, cfg: cfg, log: log})
		} else {
			log.Info("no envoy on PATH: run one against the control plane with",
				"command", fmt.Sprintf("envoy -c <(infergate envoy bootstrap -c %s)", orDefault(configPath(cmd))),
				"hint", "func-e (func-e.io) is the usual way to get Envoy")
		}
		return ops.Run(cmd.Context(), log, services...)
	},
}

// componentCmd makes the command that runs one component alone.
func componentCmd(name, short string) *cobra.Command {
	return &cobra.Command{
		Use:   name,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			log := newLogger(cfg.Log)
			if err := cfg.CheckCollapseWait(); err != nil && (name == "xds" || name == "extproc") {
				// The other side may run from another file.
				log.Warn("check the ext_proc timeouts where both components are configured", "problem", err)
			}
			services, err := buildServices(cmd, cfg, log, name)
			if err != nil {
				return err
			}
			return ops.Run(cmd.Context(), log, services...)
		},
	}
}

// buildServices constructs the named components from one config.
func buildServices(cmd *cobra.Command, cfg config.Config, log *slog.Logger, names ...string) ([]ops.Service, error) {
	var services []ops.Service
	for _, name := range names {
		l := log.With("component", name)
		var (
			s   ops.Service
			err error
		)
		switch name {
		case "xds":
			var opts []xds.Option
			if slices.Contains(names, "engine") {
				opts = append(opts, xds.EngineInProcess())
			}
			s, err = xds.New(cfg, configPath(cmd), l, opts...)
		case "extproc":
			s, err = extproc.New(cfg.ExtProc, l)
		case "engine":
			s, err = engine.New(cfg.Engine, l)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		services = append(services, s)
		if r := cfg.Engine.Register; name == "engine" && r.ControlPlane != "" {
			reg, err := registrar.New(r, cfg.Engine.Listen, log.With("component", "registrar"))
			if err != nil {
				return nil, fmt.Errorf("engine: %w", err)
			}
			services = append(services, reg)
		}
	}
	return services, nil
}

func orDefault(path string) string {
	if path == "" {
		return "examples/quickstart/infergate.yaml"
	}
	return path
}

func init() {
	rootCmd.AddCommand(upCmd,
		componentCmd("xds", "Run the xDS control plane alone (ADS gRPC plus the admin API)"),
		componentCmd("extproc", "Run the ext_proc server alone (response cache and rate limits for Envoy)"),
		componentCmd("engine", "Run the inference engine alone (OpenAI and KServe v2 APIs)"),
	)
}
