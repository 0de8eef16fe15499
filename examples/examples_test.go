// Package examples holds runnable configurations and dashboards; its test
// keeps them true to the code.
package examples

import (
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/infergate/infergate/config"
)

// Every example config is accepted by the same strict parser infergate
// uses, with placeholders such as ${POD_IP} filled in as a deployment would.
func TestExampleConfigsParse(t *testing.T) {
	files, _ := filepath.Glob("*/*.yaml")
	// Kubernetes manifests hold their configs in ConfigMaps; see below.
	files = slices.DeleteFunc(files, func(f string) bool { return filepath.Dir(f) == "kubernetes" })
	if len(files) < 4 {
		t.Fatalf("found only %v", files)
	}
	env := map[string]string{"POD_IP": "192.0.2.10"}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		expanded := os.Expand(string(data), func(k string) string { return env[k] })
		if _, err := config.Parse(f, []byte(expanded)); err != nil {
			t.Errorf("%v", err)
		}
	}
}

var metricName = regexp.MustCompile(`infergate_[a-z0-9_]+`)

// Every series a dashboard queries is one infergate exports (histogram
// series by their base name), so a renamed metric cannot leave an empty panel.
func TestDashboardsQueryExportedMetrics(t *testing.T) {
	exported := map[string]bool{}
	err := filepath.WalkDir("..", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return err
		}
		src, err := os.ReadFile(path)
		for _, m := range regexp.MustCompile(`"(infergate_[a-z0-9_]+)"`).FindAllStringSubmatch(string(src), -1) {
			exported[m[1]] = true
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	dashboards, _ := filepath.Glob("dashboards/*.json")
	if len(dashboards) == 0 {
		t.Fatal("no dashboards")
	}
	for _, f := range dashboards {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var d struct {
			Panels []struct {
				Title   string
				Targets []struct{ Expr string }
			}
		}
		if err := json.Unmarshal(data, &d); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for _, p := range d.Panels {
			for _, target := range p.Targets {
				for _, name := range metricName.FindAllString(target.Expr, -1) {
					base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_sum"), "_count")
					if !exported[name] && !exported[base] {
						t.Errorf("%s, panel %q: %s is not a metric infergate exports", f, p.Title, name)
					}
				}
			}
		}
	}
}
