package config

import (
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func TestQuickstartParses(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	path := filepath.Join(filepath.Dir(file), "..", "examples", "quickstart", "infergate.yaml")
	c, err := Load(path)
	if err != nil {
		t.Fatalf("quickstart config is refused: %v", err)
	}
	if c.Engine.Listen != "127.0.0.1:8080" || c.XDS.Listen != "127.0.0.1:18000" {
		t.Errorf("quickstart addresses: engine %q xds %q", c.Engine.Listen, c.XDS.Listen)
	}
}

func TestEmptyFileIsAllDefaults(t *testing.T) {
	c, err := Parse("empty.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	d := Default()
	if c.Log != d.Log || c.Envoy != d.Envoy || c.XDS.Listen != d.XDS.Listen || c.ExtProc.Listen != d.ExtProc.Listen {
		t.Errorf("empty file differs from Default()")
	}
}

func TestDefaultsBindLoopback(t *testing.T) {
	d := Default()
	for field, addr := range map[string]string{
		"xds.listen": d.XDS.Listen, "xds.admin": d.XDS.Admin,
		"extproc.listen": d.ExtProc.Listen, "extproc.admin": d.ExtProc.Admin,
		"engine.listen": d.Engine.Listen, "envoy.admin": d.Envoy.Admin,
	} {
		if host, _ := HostPort(addr); host != "127.0.0.1" {
			t.Errorf("%s defaults to %q, want loopback", field, addr)
		}
	}
}

// The errors a user sees must name the file, the line and the cause.
func TestBadConfigErrors(t *testing.T) {
	tests := []struct {
		name, yaml string
		want       []string
	}{
		{"misspelt field", "engine:\n  listen: 127.0.0.1:1\n  lisen: x\n", []string{"bad.yaml", "line 3", "lisen"}},
		{"unknown section", "log:\n  level: info\nengines: {}\n", []string{"bad.yaml", "line 3", "engines"}},
		{"wrong type", "log:\n  level: [1, 2]\n", []string{"bad.yaml", "line 2"}},
		{"bad address", "engine:\n  listen: nohost\n", []string{"bad.yaml", "engine.listen", "nohost"}},
		{"bad port", "xds:\n  listen: 127.0.0.1:99999\n", []string{"xds.listen", "99999"}},
		{"bad level", "log:\n  level: loud\n", []string{"log.level", "loud"}},
		{"negative grace", "xds:\n  registration_grace: -1s\n", []string{"xds.registration_grace (line 2): -1s is not in [0s, 15s)"}},
		{"grace past clients' patience", "xds:\n  registration_grace: 15s\n", []string{"xds.registration_grace (line 2): 15s", "initial_fetch_timeout"}},
		{"not yaml", "engine: [\n", []string{"bad.yaml", "line"}},
		{"lone synonym", "extproc:\n  semantic:\n    synonyms: [\"thaw\"]\n", []string{`extproc.semantic.synonyms[0] (line 3): "thaw": give two or more words`}},
		{"synonym not a word", "extproc:\n  semantic:\n    synonyms: [\"thaw Defrost\", \"pc computer\"]\n",
			[]string{`synonyms[0] (line 3): "Defrost" is not a lower-case word`, `synonyms[1] (line 3): "pc" is not a lower-case word of three letters`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("bad.yaml", []byte(tt.yaml))
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"))
	if err == nil || !strings.Contains(err.Error(), "nope.yaml") {
		t.Fatalf("missing file error %v does not name the file", err)
	}
}

func TestLoadEmptyPathIsDefault(t *testing.T) {
	c, err := Load("")
	if err != nil || c.Envoy.NodeID != "infergate-envoy" {
		t.Fatalf("Load(\"\") = %+v, %v", c.Envoy, err)
	}
}
