package semantic

import (
	"context"
	"os"
	"strings"
	"testing"
)

// runSweeps reports whether the quality sweeps run: always without -race
// (about 12s here), under -race only with INFERGATE_LONG=1. They embed
// hundreds of pairs in one goroutine, so the race detector finds nothing
// in them and only makes them ten times slower (over 10 minutes under
// `make test` on a small machine); `infergate bench semantic` prints the
// same numbers.
func runSweeps() bool { return !raceEnabled || os.Getenv("INFERGATE_LONG") == "1" }

func sweepFile(t *testing.T, path string, thresholds string) Sweep {
	t.Helper()
	if !runSweeps() {
		t.Skip("quality sweep, skipped under -race: run `go test -run Guard ./extproc/semantic` or set INFERGATE_LONG=1")
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	pairs, err := ReadPairs(f)
	if err != nil {
		t.Fatal(err)
	}
	ths, err := ParseThresholds(thresholds)
	if err != nil {
		t.Fatal(err)
	}
	s, err := RunSweep(context.Background(), useLite(t), pairs, ths, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestGuardMeetsTheTargetOnTheDevelopmentSet holds the measured trade-off
// at the recommended threshold 0.80 (BENCHMARKS.md): false hits at most 2%
// with at least 60% of paraphrases hit, where the similarity alone serves
// a wrong answer to most hard negatives. Under -race it runs only with
// INFERGATE_LONG=1 (see runSweeps).
func TestGuardMeetsTheTargetOnTheDevelopmentSet(t *testing.T) {
	s := sweepFile(t, "testdata/pairs.jsonl", "0.80")
	off, on := s.Rows[0], s.Rows[1]
	t.Logf("%d true, %d false pairs; without guard hit %.3f false %.3f; with guard hit %.3f false %.3f",
		s.TruePairs, s.FalsePairs, off.HitRate, off.FalseHitRate, on.HitRate, on.FalseHitRate)
	if on.FalseHitRate > 0.02 || on.HitRate < 0.60 {
		t.Errorf("with the guard: hit rate %.3f, false-hit rate %.3f; want >= 0.60 and <= 0.02", on.HitRate, on.FalseHitRate)
	}
	if off.FalseHitRate < 10*on.FalseHitRate || off.FalseHitRate < 0.3 {
		t.Errorf("without the guard false hits are %.3f against %.3f with it: the set no longer has hard negatives", off.FalseHitRate, on.FalseHitRate)
	}
}

// TestGuardOnHeldOutPairs runs the sets the guard was not developed on
// (BENCHMARKS.md says which ones its authors had seen): hit rates there
// are lower and vary by topic, so the test holds the safety side, false
// hits, and only a floor under the hits. Under -race it runs only with
// INFERGATE_LONG=1 (see runSweeps).
func TestGuardOnHeldOutPairs(t *testing.T) {
	for _, path := range []string{"testdata/heldout.jsonl", "testdata/heldout2.jsonl", "testdata/heldout3.jsonl"} {
		s := sweepFile(t, path, "0.80")
		off, on := s.Rows[0], s.Rows[1]
		t.Logf("%s: without guard hit %.3f false %.3f; with guard hit %.3f false %.3f", path, off.HitRate, off.FalseHitRate, on.HitRate, on.FalseHitRate)
		if on.FalseHitRate > 0.05 || on.HitRate < 0.3 {
			t.Errorf("%s with the guard: hit rate %.3f, false-hit rate %.3f; want >= 0.30 and <= 0.05", path, on.HitRate, on.FalseHitRate)
		}
	}
}

func TestReadPairsNamesTheBadLine(t *testing.T) {
	_, err := ReadPairs(strings.NewReader("{\"a\":\"x\",\"b\":\"y\",\"same\":true}\n{\"a\":\"x\",\"same\":true}\n"))
	if err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("error = %v, want one naming line 2", err)
	}
	if _, err := ParseThresholds("0.8,1.5"); err == nil {
		t.Error("threshold 1.5 accepted")
	}
}
