package config

import "errors"

// ExtProc configures the ext_proc server. Per-route policy is not here: it
// travels with each request from the xDS route config.
type ExtProc struct {
	// Listen is the gRPC address Envoy's ext_proc filter calls. Default 127.0.0.1:18080.
	Listen string `yaml:"listen"`
	// Admin is the HTTP address of the purge API, /metrics, /healthz and
	// /readyz. Default 127.0.0.1:18081.
	Admin string `yaml:"admin"`
}

func (e *ExtProc) setDefaults() {
	if e.Listen == "" {
		e.Listen = "127.0.0.1:18080"
	}
	if e.Admin == "" {
		e.Admin = "127.0.0.1:18081"
	}
}

func (e *ExtProc) validate() error {
	return errors.Join(checkHostPort("extproc.listen", e.Listen), checkHostPort("extproc.admin", e.Admin))
}
