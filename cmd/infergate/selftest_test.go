package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/infergate/infergate/internal/testmodel"
)

// useLiteConfig is an engine config serving the real USE-Lite on the CPU.
func useLiteConfig(t *testing.T) string {
	t.Helper()
	return writeConfig(t, fmt.Sprintf("engine:\n  models:\n    - name: use-lite\n      kind: use-lite\n      path: %s\n      max_batch_size: 8\n",
		testmodel.USELiteDir(t)))
}

// runExit runs infergate and returns its stdout, its last stderr line and
// its exit status.
func runExit(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := infergate(args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
	return stdout.String(), lines[len(lines)-1], code
}

// The golden check passes on the CPU within fp32 rounding, writes its
// verdict as JSON, and fails with one clear line under a tolerance no
// float32 run can meet.
func TestSelftestGoldenVectors(t *testing.T) {
	cfg := useLiteConfig(t)
	golden := filepath.Join(testmodel.RepoRoot(t), "engine/model/uselite/testdata/golden.json")
	report := filepath.Join(t.TempDir(), "selftest.json")

	if _, last, code := runExit(t, "selftest", "-c", cfg, "--golden", golden, "--json", report); code != 0 {
		t.Fatalf("selftest on the CPU: exit %d: %s", code, last)
	}
	var got struct {
		OK         bool    `json:"ok"`
		Cases      int     `json:"cases"`
		MaxAbsDiff float64 `json:"max_abs_diff"`
	}
	data, _ := os.ReadFile(report)
	if err := json.Unmarshal(data, &got); err != nil || !got.OK || got.Cases == 0 || got.MaxAbsDiff > 1e-5 {
		t.Fatalf("report %s (%v)", data, err)
	}

	_, last, code := runExit(t, "selftest", "-c", cfg, "--golden", golden, "--tolerance", "1e-12")
	if code != 1 || !strings.Contains(last, "exceeds 1e-12") {
		t.Errorf("impossible tolerance: exit %d, last line %q", code, last)
	}
	if _, last, code := runExit(t, "selftest", "-c", cfg, "--golden", golden, "--tolerance", "0"); code != 1 || !strings.Contains(last, "must be positive") {
		t.Errorf("zero tolerance: exit %d, last line %q", code, last)
	}
	// A golden file for another model fails, whatever its vectors' width.
	for _, width := range []int{3, 600} {
		other := filepath.Join(t.TempDir(), "other.json")
		vec := strings.TrimSuffix(strings.Repeat("0.01,", width), ",")
		if err := os.WriteFile(other, fmt.Appendf(nil, `{"cases":[{"text":"hello","vector":[%s]}]}`, vec), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, last, code := runExit(t, "selftest", "-c", cfg, "--golden", other); code != 1 || !strings.Contains(last, "not this model's") {
			t.Errorf("%d-wide golden vector: exit %d, last line %q", width, code, last)
		}
	}
}
