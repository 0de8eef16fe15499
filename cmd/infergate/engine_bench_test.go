package main

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// `infergate bench --url` against a stand-in engine writes the table and
// the CSV, JSON and PNG a user asked for; `--from` redraws them from the
// JSON; bad flags are one clear error.
func TestBenchAgainstURLAndFrom(t *testing.T) {
	var served atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/embeddings", func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		w.Write([]byte(`{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.5]}]}`))
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, _ *http.Request) {
		n := served.Load()
		fmt.Fprintf(w, "infergate_engine_batch_size_sum{model=\"use-lite\"} %d\ninfergate_engine_batch_size_count{model=\"use-lite\"} %d\n", n, n)
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()

	dir := t.TempDir()
	out := func(name string) string { return filepath.Join(dir, name) }
	cmd := infergate("bench", "--url", srv.URL, "--concurrency", "1,4", "--warmup", "50ms", "--duration", "100ms",
		"--max-windows", "3", "--csv", out("r.csv"), "--json", out("r.json"), "--plot", out("r.png"))
	stdout, err := cmd.Output()
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, stdout)
	}
	if !strings.Contains(string(stdout), "c=4") || !strings.Contains(string(stdout), "p99 ms") {
		t.Fatalf("no result table:\n%s", stdout)
	}
	f, err := os.Open(out("r.csv"))
	if err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(f).ReadAll()
	f.Close()
	if err != nil || len(rows) != 3 || rows[1][0] != "engine" || rows[2][2] != "4" {
		t.Fatalf("csv rows %v (%v)", rows, err)
	}
	var results []map[string]any
	data, _ := os.ReadFile(out("r.json"))
	if err := json.Unmarshal(data, &results); err != nil || len(results) != 2 || results[0]["throughput"].(float64) <= 0 {
		t.Fatalf("json %s (%v)", data, err)
	}
	if png, _ := os.ReadFile(out("r.png")); !bytes.HasPrefix(png, []byte("\x89PNG")) {
		t.Fatal("plot is not a PNG")
	}

	redraw := infergate("bench", "--from", out("r.json"), "--plot", out("again.png"))
	if stdout, err := redraw.Output(); err != nil || !strings.Contains(string(stdout), "c=1") {
		t.Fatalf("bench --from: %v\n%s", err, stdout)
	}
	if _, err := os.Stat(out("again.png")); err != nil {
		t.Fatal(err)
	}

	// A running engine is asked for its model by name, listed here or not.
	other := infergate("bench", "--url", srv.URL, "--model", "bert-onnx", "--concurrency", "1", "--warmup", "20ms",
		"--duration", "50ms", "--max-windows", "3")
	if stdout, err := other.Output(); err != nil || !strings.Contains(string(stdout), "c=1") {
		t.Fatalf("bench --url --model bert-onnx: %v\n%s", err, stdout)
	}

	bad := infergate("bench", "--concurrency", "1,x")
	var stderr bytes.Buffer
	bad.Stderr = &stderr
	if err := bad.Run(); err == nil || !strings.Contains(stderr.String(), `"x" is not a number`) {
		t.Fatalf("bad --concurrency: %v %q", err, stderr.String())
	}
}

// `--texts` sends the lines of a file (a sample of the user's traffic)
// instead of the generated sentences; a file without text is refused.
func TestBenchSendsTheGivenTexts(t *testing.T) {
	var mu sync.Mutex
	sent := map[string]bool{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req struct{ Input []string }
		if json.NewDecoder(r.Body).Decode(&req) == nil {
			mu.Lock()
			for _, in := range req.Input {
				sent[in] = true
			}
			mu.Unlock()
		}
		w.Write([]byte(`{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.5]}]}`))
	}))
	defer srv.Close()
	dir := t.TempDir()
	texts := filepath.Join(dir, "texts.txt")
	os.WriteFile(texts, []byte("short one\n\n  a much longer text about the refund policy  \n"), 0o644)
	cmd := infergate("bench", "--url", srv.URL, "--texts", texts, "--concurrency", "1", "--warmup", "20ms",
		"--duration", "50ms", "--max-windows", "3")
	if stdout, err := cmd.Output(); err != nil {
		t.Fatalf("bench --texts: %v\n%s", err, stdout)
	}
	mu.Lock()
	defer mu.Unlock()
	if !sent["short one"] || !sent["a much longer text about the refund policy"] {
		t.Errorf("the engine was not sent the file's texts: %v", sent)
	}
	for in := range sent {
		if !strings.HasPrefix(in, "short one") && !strings.HasPrefix(in, "a much longer text") {
			t.Errorf("sent %q, not from the file", in)
		}
	}

	empty := filepath.Join(dir, "empty.txt")
	os.WriteFile(empty, []byte("\n  \n"), 0o644)
	bad := infergate("bench", "--url", srv.URL, "--texts", empty)
	var stderr bytes.Buffer
	bad.Stderr = &stderr
	if err := bad.Run(); err == nil || !strings.Contains(stderr.String(), "holds no text") {
		t.Fatalf("empty --texts: %v %q", err, stderr.String())
	}
}

// The in-process ceiling at a fixed sequence length measures each batch
// size asked for, and refuses a length the model cannot take.
func TestCeilingAtFixedTokens(t *testing.T) {
	cfg := useLiteConfig(t)
	out := filepath.Join(t.TempDir(), "ceiling.csv")
	stdout, last, code := runExit(t, "bench", "--in-process", "-c", cfg, "--batch-sizes", "2,1", "--tokens", "16",
		"--warmup", "200ms", "--duration", "1s", "--max-windows", "3", "--csv", out)
	if code != 0 {
		t.Fatalf("bench --in-process: exit %d: %s\n%s", code, last, stdout)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil || len(rows) != 3 {
		t.Fatalf("csv %v (%v): want a header and two rows", rows, err)
	}
	for i, want := range []string{"1", "2"} {
		if r := rows[i+1]; r[0] != "ceiling" || r[4] != want || r[7] == "0.000" {
			t.Errorf("row %d = %v: want ceiling at batch %s with a throughput", i+1, r, want)
		}
	}

	if _, last, code := runExit(t, "bench", "--url", "http://127.0.0.1:1", "--tokens", "16"); code != 1 ||
		!strings.Contains(last, "in-process ceiling") {
		t.Errorf("--tokens with --url: exit %d, last line %q", code, last)
	}
	if _, last, code := runExit(t, "bench", "--in-process", "-c", cfg, "--batch-sizes", "1", "--tokens", "999"); code != 1 ||
		!strings.Contains(last, "at most 128") {
		t.Errorf("--tokens 999: exit %d, last line %q", code, last)
	}
}
