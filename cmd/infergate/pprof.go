package main

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/spf13/cobra"
)

func init() {
	rootCmd.PersistentFlags().String("pprof", "", "serve Go's profiles (net/http/pprof) on this address, e.g. 127.0.0.1:6060; off by default, keep it off public interfaces")
	rootCmd.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		addr, _ := cmd.Flags().GetString("pprof")
		if addr == "" {
			return nil
		}
		ln, err := servePprof(addr)
		if err != nil {
			return err
		}
		slog.Info("serving Go profiles (net/http/pprof)", "url", fmt.Sprintf("http://%s/debug/pprof/", ln.Addr()))
		return nil
	}
}

// servePprof serves the profiling endpoints on their own listener, apart
// from every component's API, for the life of the process.
func servePprof(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--pprof: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return ln, nil
}
