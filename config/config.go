// Package config is infergate's one configuration file: a section per
// component, parsed strictly (an unknown field or a wrong type is an error
// naming the file and line), with every default set in the section's own
// defaults method and listed in the README's config reference.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Config is the whole infergate.yaml.
type Config struct {
	Log     Log     `yaml:"log"`
	XDS     XDS     `yaml:"xds"`
	ExtProc ExtProc `yaml:"extproc"`
	Engine  Engine  `yaml:"engine"`
	Envoy   Envoy   `yaml:"envoy"`
}

// Log configures the process logger (log/slog).
type Log struct {
	// Level is debug, info, warn or error. Default info.
	Level string `yaml:"level"`
	// Format is text or json. Default text.
	Format string `yaml:"format"`
}

// Default returns the configuration used when no file is given: every
// component on loopback with the quickstart ports.
func Default() Config {
	var c Config
	c.setDefaults()
	return c
}

func (c *Config) setDefaults() {
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.Log.Format == "" {
		c.Log.Format = "text"
	}
	c.XDS.setDefaults()
	c.ExtProc.setDefaults()
	c.Engine.setDefaults()
	c.Envoy.setDefaults()
	// The semantic cache embeds with this process's engine unless told
	// otherwise; only here are both sections in view.
	if c.ExtProc.Semantic.EngineURL == "" {
		c.ExtProc.Semantic.EngineURL = engineURL(c.Engine.Listen)
	}
}

// Validate checks every section and returns all problems joined.
func (c *Config) Validate() error {
	var errs []error
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("log.level: %q is not one of debug, info, warn, error", c.Log.Level))
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		errs = append(errs, fmt.Errorf("log.format: %q is not one of text, json", c.Log.Format))
	}
	errs = append(errs, c.XDS.validate(), c.ExtProc.validate(), c.Engine.validate(), c.Envoy.validate())
	return errors.Join(errs...)
}

// Load reads, strictly parses, defaults and validates the file at path.
// An empty path yields Default().
func Load(path string) (Config, error) {
	if path == "" {
		return Default(), nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	return Parse(path, data)
}

// Parse is Load for bytes already read; name is used in error messages.
func Parse(name string, data []byte) (Config, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	// io.EOF is an empty file: all defaults.
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return Config{}, fmt.Errorf("config %s: %s", name, yamlMessage(err))
	}
	c.setDefaults()
	if err := c.Validate(); err != nil {
		return Config{}, fmt.Errorf("config %s: %w", name, WithLines(data, err))
	}
	return c, nil
}

// yamlMessage flattens yaml.v3's multi-line "unmarshal errors" into one line
// per problem, each already naming its line.
func yamlMessage(err error) string {
	var te *yaml.TypeError
	if errors.As(err, &te) {
		return strings.Join(te.Errors, "; ")
	}
	return strings.TrimPrefix(err.Error(), "yaml: ")
}
