package config

import (
	"errors"
	"fmt"
)

// Envoy describes the Envoy that infergate configures: the identity it
// presents to the control plane and where its admin interface listens.
type Envoy struct {
	// NodeID is the node.id in the bootstrap. Default "infergate-envoy".
	NodeID string `yaml:"node_id"`
	// Cluster is the node.cluster in the bootstrap. Default "infergate".
	Cluster string `yaml:"cluster"`
	// Admin is Envoy's admin address. Default 127.0.0.1:9901.
	Admin string `yaml:"admin"`
	// Binary is the envoy executable `infergate up` starts when it is on
	// PATH. Default "envoy".
	Binary string `yaml:"binary"`
}

func (e *Envoy) setDefaults() {
	if e.NodeID == "" {
		e.NodeID = "infergate-envoy"
	}
	if e.Cluster == "" {
		e.Cluster = "infergate"
	}
	if e.Admin == "" {
		e.Admin = "127.0.0.1:9901"
	}
	if e.Binary == "" {
		e.Binary = "envoy"
	}
}

func (e *Envoy) validate() error {
	var errs []error
	if err := checkHostPort("envoy.admin", e.Admin); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// HostPort splits an address that validation already accepted.
func HostPort(addr string) (string, uint32) {
	host, port, _ := splitHostPort(addr)
	return host, port
}

func checkHostPort(field, addr string) error {
	if _, _, err := splitHostPort(addr); err != nil {
		return fmt.Errorf("%s: %w", field, err)
	}
	return nil
}
