package config

import "errors"

// Engine configures the inference engine. Its HTTP listener serves the
// OpenAI and KServe v2 APIs as well as /metrics, /healthz and /readyz.
type Engine struct {
	// Listen is the engine's HTTP address. Default 127.0.0.1:8080.
	Listen string `yaml:"listen"`
}

func (e *Engine) setDefaults() {
	if e.Listen == "" {
		e.Listen = "127.0.0.1:8080"
	}
}

func (e *Engine) validate() error {
	return errors.Join(checkHostPort("engine.listen", e.Listen))
}
