package uselite

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/infergate/infergate/engine/loadgen"
	"github.com/infergate/infergate/engine/model"
	"github.com/infergate/infergate/internal/testmodel"
)

// goldenTolerance is the largest |Go - TF.js| allowed per vector component.
// Both run float32; TF.js's CPU kernels accumulate sums in float64, GoMLX in
// float32, which accounts for differences around 1e-7..1e-6.
// $USELITE_TEST_TOLERANCE overrides it: XLA on CUDA runs float32 matmuls as
// TF32 by default and lands around 3e-4 (1e-3 passes); with
// NVIDIA_TF32_OVERRIDE=0 XLA_FLAGS=--xla_gpu_enable_triton_gemm=false it
// is full float32 again (3e-7 on an H200).
var goldenTolerance = func() float64 {
	if v, err := strconv.ParseFloat(os.Getenv("USELITE_TEST_TOLERANCE"), 64); err == nil && v > 0 {
		return v
	}
	return 1e-5
}()

type goldenCase struct {
	Text   string    `json:"text"`
	IDs    []int32   `json:"ids"`
	Vector []float32 `json:"vector"`
}

func loadGolden(t testing.TB) []goldenCase {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "golden.json"))
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Cases []goldenCase `json:"cases"`
	}
	if err := json.Unmarshal(data, &file); err != nil {
		t.Fatal(err)
	}
	if len(file.Cases) == 0 {
		t.Fatal("golden.json has no cases")
	}
	return file.Cases
}

var (
	sharedOnce    sync.Once
	sharedEncoder *Encoder
	sharedErr     error
)

// testEncoder loads the model once per test binary, on the backend named by
// $USELITE_TEST_BACKEND (default SimpleGo; e.g. "xla:cuda" on a GPU host).
func testEncoder(t testing.TB) *Encoder {
	t.Helper()
	dir := testmodel.USELiteDir(t)
	sharedOnce.Do(func() {
		backend, err := model.NewBackend(os.Getenv("USELITE_TEST_BACKEND"))
		if err != nil {
			sharedErr = err
			return
		}
		sharedEncoder, sharedErr = Load(dir, backend)
	})
	if sharedErr != nil {
		t.Fatal(sharedErr)
	}
	return sharedEncoder
}

func maxAbsDiff(a, b []float32) float64 {
	worst := 0.0
	for i := range a {
		worst = max(worst, math.Abs(float64(a[i])-float64(b[i])))
	}
	return worst
}

func cosine(a, b []float32) float64 {
	var dot, na, nb float64
	for i := range a {
		dot += float64(a[i]) * float64(b[i])
		na += float64(a[i]) * float64(a[i])
		nb += float64(b[i]) * float64(b[i])
	}
	return dot / math.Sqrt(na*nb)
}

func TestTokenizeMatchesTFJS(t *testing.T) {
	enc := testEncoder(t)
	for _, c := range loadGolden(t) {
		got, err := enc.Tokenize(c.Text)
		if err != nil {
			t.Errorf("Tokenize(%q): %v", c.Text, err)
			continue
		}
		if !slices.Equal(got, c.IDs) {
			t.Errorf("Tokenize(%q)\n got %v\nwant %v", c.Text, got, c.IDs)
		}
	}
}

// Over 30 combining marks in a row, Go's NFKC inserts U+034F and
// JavaScript's does not; the ids are TF.js's for this text.
func TestTokenizeLongRunsOfCombiningMarksAsTFJS(t *testing.T) {
	enc := testEncoder(t)
	want := append([]int32{30, 7989}, slices.Repeat([]int32{7965}, 30)...)
	if got, err := enc.Tokenize("e" + strings.Repeat("\u0308", 31)); err != nil || !slices.Equal(got, want) {
		t.Errorf("Tokenize = %v, %v\nwant %v", got, err, want)
	}
}

func TestTokenizeEmptyIsUntokenizable(t *testing.T) {
	enc := testEncoder(t)
	if _, err := enc.Tokenize(""); !errors.Is(err, model.ErrUntokenizable) {
		t.Errorf("Tokenize(\"\") error = %v, want ErrUntokenizable", err)
	}
}

func TestEmbedMatchesTFJS(t *testing.T) {
	enc := testEncoder(t)
	cases := loadGolden(t)
	batch := make([][]int32, len(cases))
	for i, c := range cases {
		batch[i] = c.IDs
	}
	if enc.Dim() != 512 || enc.MaxTokens() != 128 {
		t.Fatalf("Dim, MaxTokens = %d, %d; want 512, 128", enc.Dim(), enc.MaxTokens())
	}

	// All at once: on XLA rows of very different lengths share one padded
	// bucket; on SimpleGo the batch runs as executions of similar lengths,
	// whose vectors must come back in the batch's order.
	together, err := enc.Embed(context.Background(), batch)
	if err != nil {
		t.Fatal(err)
	}
	worst := 0.0
	for i, c := range cases {
		d := maxAbsDiff(together[i], c.Vector)
		worst = max(worst, d)
		if d > goldenTolerance {
			t.Errorf("batched %q: max abs diff %.3g > %.0g", c.Text, d, goldenTolerance)
		}
	}
	t.Logf("batch of %d: max abs diff vs TF.js = %.3g", len(cases), worst)

	// One by one, each in its own smaller bucket: a spread of lengths is
	// enough to show padding does not leak (all of them is slow under -race).
	worst = 0.0
	for _, c := range []goldenCase{cases[0], cases[8], cases[12], cases[len(cases)-1]} {
		alone, err := enc.Embed(context.Background(), [][]int32{c.IDs})
		if err != nil {
			t.Fatal(err)
		}
		d := maxAbsDiff(alone[0], c.Vector)
		worst = max(worst, d)
		if d > goldenTolerance {
			t.Errorf("single %q: max abs diff %.3g > %.0g", c.Text, d, goldenTolerance)
		}
	}
	t.Logf("one at a time: max abs diff vs TF.js = %.3g", worst)
}

func TestParaphrasesScoreAboveUnrelated(t *testing.T) {
	enc := testEncoder(t)
	embed := func(texts ...string) [][]float32 {
		batch := make([][]int32, len(texts))
		for i, text := range texts {
			ids, err := enc.Tokenize(text)
			if err != nil {
				t.Fatal(err)
			}
			batch[i] = ids
		}
		vectors, err := enc.Embed(context.Background(), batch)
		if err != nil {
			t.Fatal(err)
		}
		return vectors
	}
	v := embed(
		"The quick brown fox jumps over the lazy dog.", "A fast brown fox leaps over a lazy dog.",
		"How do I reset my password?", "I forgot my password, how can I change it?",
		"What is the capital of France?", "Which city is the capital of France?",
	)
	unrelatedMax := math.Inf(-1)
	for i := 0; i < len(v); i += 2 {
		for j := i + 2; j < len(v); j++ {
			unrelatedMax = max(unrelatedMax, cosine(v[i], v[j]))
		}
	}
	const margin = 0.4
	for i := 0; i < len(v); i += 2 {
		if p := cosine(v[i], v[i+1]); p < unrelatedMax+margin {
			t.Errorf("paraphrase pair %d: cosine %.3f, want ≥ %.3f (best unrelated %.3f + %.1f)",
				i/2, p, unrelatedMax+margin, unrelatedMax, margin)
		}
	}
}

func TestEmbedTruncatesAtMaxTokens(t *testing.T) {
	enc := testEncoder(t)
	long := make([]int32, 300)
	for i := range long {
		long[i] = int32(100 + i%50)
	}
	got, err := enc.Embed(context.Background(), [][]int32{long, long[:enc.MaxTokens()]})
	if err != nil {
		t.Fatal(err)
	}
	if d := maxAbsDiff(got[0], got[1]); d > 1e-6 {
		t.Errorf("300 tokens vs first %d: max abs diff %.3g, want the same vector", enc.MaxTokens(), d)
	}
}

func TestEmbedRejectsBadInput(t *testing.T) {
	enc := testEncoder(t)
	for name, batch := range map[string][][]int32{
		"empty sequence": {{5, 6}, {}},
		"negative id":    {{5, -1}},
		"id past vocab":  {{5, 9000}},
	} {
		if _, err := enc.Embed(context.Background(), batch); err == nil {
			t.Errorf("%s: Embed succeeded, want an error", name)
		}
	}
	vectors, err := enc.Embed(context.Background(), nil)
	if err != nil || len(vectors) != 0 {
		t.Errorf("empty batch: got %d vectors, %v; want none and no error", len(vectors), err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := enc.Embed(ctx, [][]int32{{5}}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context: error = %v, want context.Canceled", err)
	}
}

func TestEmbedConcurrent(t *testing.T) {
	enc := testEncoder(t)
	cases := loadGolden(t)[:6]
	var wg sync.WaitGroup
	errs := make(chan error, 2*len(cases)) // at most one per vector
	for _, c := range cases {
		wg.Go(func() {
			got, err := enc.Embed(context.Background(), [][]int32{c.IDs, c.IDs})
			if err != nil {
				errs <- err
				return
			}
			for _, v := range got {
				if d := maxAbsDiff(v, c.Vector); d > goldenTolerance {
					errs <- fmt.Errorf("%q: max abs diff %.3g", c.Text, d)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// linkModel makes a copy of the model folder out of symlinks, leaving out
// the files in skip.
func linkModel(t *testing.T, src string, skip ...string) string {
	t.Helper()
	dst := t.TempDir()
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if slices.Contains(skip, e.Name()) {
			continue
		}
		if err := os.Symlink(filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

func TestLoadReportsMissingFiles(t *testing.T) {
	src := testmodel.USELiteDir(t)
	backend, err := model.NewBackend("")
	if err != nil {
		t.Fatal(err)
	}
	for _, missing := range []string{"model.json", "vocab.json", "group1-shard4of7"} {
		dir := linkModel(t, src, missing)
		_, err := Load(dir, backend)
		if err == nil {
			t.Fatalf("Load without %s succeeded", missing)
		}
		if msg := err.Error(); !strings.Contains(msg, missing) || !strings.Contains(msg, "make deps") {
			t.Errorf("Load without %s: error %q should name the file and say to run make deps", missing, msg)
		}
	}

	// A truncated shard (an interrupted download) is reported too.
	dir := linkModel(t, src, "group1-shard7of7")
	data, err := os.ReadFile(filepath.Join(src, "group1-shard7of7"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "group1-shard7of7"), data[:len(data)/2], 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir, backend); err == nil || !strings.Contains(err.Error(), "make deps") {
		t.Errorf("Load with a truncated shard: error = %v, want one saying to run make deps", err)
	}
}

func TestWarmupCompilesBuckets(t *testing.T) {
	// Its own encoder: the shared one has compiled other tests' buckets.
	backend, err := model.NewBackend("")
	if err != nil {
		t.Fatal(err)
	}
	defer backend.Finalize()
	enc, err := Load(testmodel.USELiteDir(t), backend)
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	// On SimpleGo lengths step by quarters (8, 10, 12, 14, 16, 20, ...):
	// 20 tokens are a bucket of their own and nothing longer is compiled.
	if err := enc.WarmupBatches(context.Background(), 2, 20); err != nil {
		t.Fatal(err)
	}
	if err := enc.WarmupBatches(context.Background(), 3, 8); err != nil {
		t.Fatal(err)
	}
	times := enc.CompileTimes()
	want := map[Bucket]bool{}
	for _, rows := range []int{1, 2} {
		for _, length := range []int{8, 10, 12, 14, 16, 20} {
			want[Bucket{Batch: rows, Length: length}] = true
		}
	}
	// A batch of 3 pads to 4 rows, so that bucket must be ready too.
	want[Bucket{Batch: 4, Length: 8}] = true
	for b := range want {
		if _, ok := times[b]; !ok {
			t.Errorf("bucket %dx%d not compiled by WarmupBatches", b.Batch, b.Length)
		}
	}
	for b, d := range times {
		if !want[b] {
			t.Errorf("bucket %dx%d compiled (in %v) beyond the warm-up's bounds", b.Batch, b.Length, d)
		}
	}
}

// BenchmarkTokenize measures the tokenizer on bench's generated 8-20-word
// sentences, the CPU each served text costs before it reaches a batch.
func BenchmarkTokenize(b *testing.B) {
	enc := testEncoder(b)
	texts := loadgen.Corpus(1000)
	for i := 0; b.Loop(); i++ {
		if _, err := enc.Tokenize(texts[i%len(texts)]); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEmbed measures SimpleGo throughput on real sentences (11 tokens
// on average, so the 16-token length bucket).
func BenchmarkEmbed(b *testing.B) {
	enc := testEncoder(b)
	cases := loadGolden(b)[:8]
	for _, size := range []int{1, 8, 32, 64} {
		batch := make([][]int32, size)
		tokens := 0
		for i := range batch {
			batch[i] = cases[i%len(cases)].IDs
			tokens += len(batch[i])
		}
		b.Run(fmt.Sprintf("batch=%d", size), func(b *testing.B) {
			benchEmbed(b, enc, batch)
			b.ReportMetric(float64(b.N*tokens)/b.Elapsed().Seconds(), "tokens/s")
		})
	}
}

// BenchmarkEmbedMixedLengths runs 32 sequences of 8 to 64 tokens as one
// padded execution ("whole", as on XLA) and as the executions of similar
// lengths SimpleGo's Shapes plan ("split").
func BenchmarkEmbedMixedLengths(b *testing.B) {
	enc := testEncoder(b)
	rng := rand.New(rand.NewPCG(7, 7))
	batch := make([][]int32, 32)
	for i := range batch {
		batch[i] = make([]int32, 8+rng.IntN(57))
		for j := range batch[i] {
			batch[i][j] = int32(5 + rng.IntN(1000))
		}
	}
	split := enc.shapes
	defer func() { enc.shapes = split }()
	for _, mode := range []string{"whole", "split"} {
		enc.shapes.Split = mode == "split"
		b.Run(mode, func(b *testing.B) { benchEmbed(b, enc, batch) })
	}
}

// benchEmbed times Embed of batch, compiling its buckets outside the
// timer, and reports sentences/s.
func benchEmbed(b *testing.B, enc *Encoder, batch [][]int32) {
	if _, err := enc.Embed(context.Background(), batch); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		if _, err := enc.Embed(context.Background(), batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*len(batch))/b.Elapsed().Seconds(), "sentences/s")
}

// FuzzTokenize holds that any text either tokenizes to ids the model can
// embed or is refused as untokenizable, never a panic or an id outside the
// vocabulary.
func FuzzTokenize(f *testing.F) {
	enc := testEncoder(f)
	for _, c := range loadGolden(f) {
		f.Add(c.Text)
	}
	f.Add("a\u0301\u0301\u0301 ▁x ▁ \u034f")
	f.Fuzz(func(t *testing.T, text string) {
		ids, err := enc.Tokenize(text)
		if err != nil {
			if !errors.Is(err, model.ErrUntokenizable) {
				t.Fatalf("Tokenize(%q): %v", text, err)
			}
			return
		}
		for _, id := range ids {
			if id < 0 || int(id) >= enc.net.vocabRows {
				t.Fatalf("Tokenize(%q) = %v: id %d outside the vocabulary", text, ids, id)
			}
		}
	})
}
