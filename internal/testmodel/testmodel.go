// Package testmodel locates what tests of every package share on disk: the
// repository root and the default model that `make model` fetches.
package testmodel

import (
	"os"
	"path/filepath"
	"testing"
)

// RepoRoot is the folder holding go.mod, found upwards from the test's
// working directory (its package folder).
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test directory")
		}
		dir = parent
	}
}

// USELiteDir is the absolute path of models/use-lite. A test that needs it
// is skipped, naming the fix, when it is absent; `make test` fetches it
// first, so there it always runs.
func USELiteDir(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(RepoRoot(t), "models", "use-lite")
	if _, err := os.Stat(filepath.Join(dir, "model.json")); err != nil {
		t.Skipf("USE-Lite model not found in %s: run `make model` (make test does it for you)", dir)
	}
	return dir
}
