package config

import "errors"

// XDS configures the control plane. The routing model (listeners, routes,
// pools, per-route policy) is owned by the xds package.
type XDS struct {
	// Listen is the ADS gRPC address Envoy connects to. Default 127.0.0.1:18000.
	Listen string `yaml:"listen"`
	// Admin is the HTTP address of the admin API, /metrics, /healthz and
	// /readyz. Default 127.0.0.1:18001.
	Admin string `yaml:"admin"`
}

func (x *XDS) setDefaults() {
	if x.Listen == "" {
		x.Listen = "127.0.0.1:18000"
	}
	if x.Admin == "" {
		x.Admin = "127.0.0.1:18001"
	}
}

func (x *XDS) validate() error {
	return errors.Join(checkHostPort("xds.listen", x.Listen), checkHostPort("xds.admin", x.Admin))
}
