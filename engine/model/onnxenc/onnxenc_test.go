package onnxenc

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/gomlx/gomlx/backends"

	"github.com/infergate/infergate/engine/model"
	"github.com/infergate/infergate/engine/model/onnxenc/tinybert"
)

var vocab = strings.Fields(`[PAD] [UNK] [CLS] [SEP] [MASK] the a cat dog sat on mat
	quick brown fox jump ##s ##ed over lazy . , ! ? how do i reset my password
	what is weather today in paris convert usd to eur rain ##ing sun ##ny and or not`)

// tolerance is the largest absolute difference from the float64 reference
// accepted; float32 through two layers stays well inside it.
const tolerance = 1e-5

var sentences = []string{
	"The cat sat on the mat.",
	"How do I reset my password?",
	"what is the weather today in paris",
	"convert usd to eur",
	"dog",
	"The quick brown fox jumps over the lazy dog, and the lazy dog sat on the mat in the rain!",
	"sunny or raining? not sunny.",
}

type fixture struct {
	dir   string
	model *tinybert.Model
	opts  Options
}

// newFixture writes a tiny BERT ONNX model and its tokenizer.json.
func newFixture(t testing.TB, cfg tinybert.Config) *fixture {
	t.Helper()
	cfg.VocabSize = len(vocab)
	m, err := tinybert.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := m.WriteONNX(filepath.Join(dir, "model.onnx")); err != nil {
		t.Fatal(err)
	}
	writeTokenizerJSON(t, filepath.Join(dir, "tokenizer.json"))
	return &fixture{dir: dir, model: m, opts: Options{
		ModelPath:     filepath.Join(dir, "model.onnx"),
		TokenizerPath: filepath.Join(dir, "tokenizer.json"),
		MaxTokens:     64,
	}}
}

func writeTokenizerJSON(t testing.TB, path string) {
	t.Helper()
	ids := map[string]int{}
	for i, w := range vocab {
		ids[w] = i
	}
	doc := map[string]any{
		"version":       "1.0",
		"normalizer":    map[string]any{"type": "BertNormalizer", "lowercase": true},
		"pre_tokenizer": map[string]any{"type": "BertPreTokenizer"},
		"post_processor": map[string]any{"type": "BertProcessing",
			"cls": []any{"[CLS]", 2}, "sep": []any{"[SEP]", 3}},
		"model": map[string]any{"type": "WordPiece", "unk_token": "[UNK]", "vocab": ids},
	}
	data, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// newBackend is the engine's default backend (SimpleGo, ops in sequence).
func newBackend(t testing.TB) backends.Backend {
	t.Helper()
	b, err := model.NewBackend("")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (f *fixture) load(t testing.TB, mutate func(*Options)) *Encoder {
	t.Helper()
	opts := f.opts
	if mutate != nil {
		mutate(&opts)
	}
	enc, err := Load(opts, newBackend(t))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	t.Cleanup(func() { _ = enc.Close() })
	return enc
}

// reference pools the float64 forward pass of one unpadded sequence.
func (f *fixture) reference(t testing.TB, ids []int32, pooling string, normalize bool) []float64 {
	t.Helper()
	seq := make([]int, len(ids))
	for i, id := range ids {
		seq[i] = int(id)
	}
	hidden, err := f.model.Forward(seq, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	var v []float64
	switch pooling {
	case PoolMean:
		v = make([]float64, len(hidden[0]))
		for _, tok := range hidden {
			for j, x := range tok {
				v[j] += x / float64(len(hidden))
			}
		}
	case PoolCLS:
		v = hidden[0]
	case PoolNone:
		v = f.model.Pooled(hidden)
	}
	if normalize {
		n := 0.0
		for _, x := range v {
			n += x * x
		}
		n = math.Sqrt(n)
		for j := range v {
			v[j] /= n
		}
	}
	return v
}

// checkMeanPooled embeds texts in one batch with enc (mean pooling, not
// normalized) and compares each vector with the float64 reference.
func (f *fixture) checkMeanPooled(t testing.TB, enc *Encoder, texts []string) {
	t.Helper()
	batch := tokenizeAll(t, enc, texts)
	vecs, err := enc.Embed(context.Background(), batch)
	if err != nil {
		t.Fatal(err)
	}
	for i := range batch {
		if d := maxAbsDiff(vecs[i], f.reference(t, batch[i], PoolMean, false)); d > tolerance {
			t.Errorf("sequence %d: off by %g", i, d)
		}
	}
}

func tokenizeAll(t testing.TB, enc *Encoder, texts []string) [][]int32 {
	t.Helper()
	batch := make([][]int32, len(texts))
	for i, s := range texts {
		ids, err := enc.Tokenize(s)
		if err != nil {
			t.Fatalf("Tokenize(%q): %v", s, err)
		}
		batch[i] = ids
	}
	return batch
}

func maxAbsDiff(a []float32, b []float64) float64 {
	if len(a) != len(b) {
		return math.Inf(1)
	}
	worst := 0.0
	for i := range a {
		worst = math.Max(worst, math.Abs(float64(a[i])-b[i]))
	}
	return worst
}

func TestEmbedMatchesReference(t *testing.T) {
	f := newFixture(t, tinybert.Config{Seed: 1})
	for _, pooling := range []string{PoolMean, PoolCLS} {
		for _, normalize := range []bool{false, true} {
			enc := f.load(t, func(o *Options) { o.Pooling, o.Normalize = pooling, normalize })
			if enc.Dim() != f.model.Hidden {
				t.Fatalf("Dim() = %d, want %d", enc.Dim(), f.model.Hidden)
			}
			batch := tokenizeAll(t, enc, sentences)
			// All at once: 7 sequences padded to the 8x32 bucket.
			together, err := enc.Embed(context.Background(), batch)
			if err != nil {
				t.Fatal(err)
			}
			worst := 0.0
			for i, ids := range batch {
				want := f.reference(t, ids, pooling, normalize)
				alone, err := enc.Embed(context.Background(), [][]int32{ids})
				if err != nil {
					t.Fatal(err)
				}
				worst = math.Max(worst, math.Max(maxAbsDiff(together[i], want), maxAbsDiff(alone[0], want)))
			}
			t.Logf("pooling=%s normalize=%v: max abs error %.2g", pooling, normalize, worst)
			if worst > tolerance {
				t.Errorf("pooling=%s normalize=%v: max abs error %g against the float64 reference", pooling, normalize, worst)
			}
		}
	}
}

// TestPaddingInvariance: a sentence's vector must not depend on what it
// is batched with, however much padding that adds.
func TestPaddingInvariance(t *testing.T) {
	f := newFixture(t, tinybert.Config{Seed: 2})
	enc := f.load(t, nil)
	short := tokenizeAll(t, enc, []string{"dog"})[0]
	long := tokenizeAll(t, enc, []string{strings.Repeat("the cat sat on the mat . ", 8)})[0]
	alone, err := enc.Embed(context.Background(), [][]int32{short})
	if err != nil {
		t.Fatal(err)
	}
	for _, companions := range [][][]int32{{long}, {short, short, long}, {long, long, long, long, long}} {
		batch := append([][]int32{short}, companions...)
		got, err := enc.Embed(context.Background(), batch)
		if err != nil {
			t.Fatal(err)
		}
		if d := maxAbsDiff(got[0], toFloat64(alone[0])); d > tolerance {
			t.Errorf("batched with %d others (longest %d tokens): vector moved by %g", len(companions), len(long), d)
		}
	}
}

func TestPoolerOutputAndNoTokenTypes(t *testing.T) {
	f := newFixture(t, tinybert.Config{Seed: 3, NoTokenTypeInput: true})
	enc := f.load(t, func(o *Options) { o.OutputName, o.Pooling = "pooler_output", PoolNone })
	batch := tokenizeAll(t, enc, sentences[:3])
	got, err := enc.Embed(context.Background(), batch)
	if err != nil {
		t.Fatal(err)
	}
	for i, ids := range batch {
		if d := maxAbsDiff(got[i], f.reference(t, ids, PoolNone, false)); d > tolerance {
			t.Errorf("sentence %d: pooler_output off by %g", i, d)
		}
	}
}

func TestLargeBatchRunsInChunks(t *testing.T) {
	f := newFixture(t, tinybert.Config{Seed: 4})
	enc := f.load(t, nil)
	var texts []string
	for i := range 130 {
		texts = append(texts, sentences[i%len(sentences)])
	}
	batch := tokenizeAll(t, enc, texts)
	got, err := enc.Embed(context.Background(), batch)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(batch) {
		t.Fatalf("got %d vectors for %d sequences", len(got), len(batch))
	}
	for _, i := range []int{0, 6, 127, 128, 129} {
		if d := maxAbsDiff(got[i], f.reference(t, batch[i], PoolMean, false)); d > tolerance {
			t.Errorf("sequence %d: off by %g", i, d)
		}
	}
}

// A TorchScript export's empty Constant (no data field at all) loads, and
// the graph computes what it would without it.
func TestTorchScriptEmptyConstant(t *testing.T) {
	f := newFixture(t, tinybert.Config{Seed: 7, TorchScriptQuirks: true})
	f.checkMeanPooled(t, f.load(t, nil), sentences[:2])
}

func TestWarmupCompilesBuckets(t *testing.T) {
	f := newFixture(t, tinybert.Config{Seed: 6})
	enc := f.load(t, nil)
	// 3 sequences pad to 4 rows; 20 tokens are a bucket of their own on
	// SimpleGo (16, 20, 24, 28, 32, ...); longer ones stay cold.
	if err := enc.WarmupBatches(context.Background(), 3, 20); err != nil {
		t.Fatal(err)
	}
	var got []bucket
	enc.mu.Lock()
	for b := range enc.execs {
		got = append(got, b)
	}
	enc.mu.Unlock()
	slices.SortFunc(got, func(a, b bucket) int { return cmp.Or(a.batch-b.batch, a.seq-b.seq) })
	want := []bucket{{1, 16}, {1, 20}, {2, 16}, {2, 20}, {4, 16}, {4, 20}}
	if !slices.Equal(got, want) {
		t.Errorf("compiled buckets %v, want %v", got, want)
	}
	// Warming up with padding must leave real requests' answers alone.
	f.checkMeanPooled(t, enc, sentences[:3])
}

func TestConcurrentEmbed(t *testing.T) {
	f := newFixture(t, tinybert.Config{Seed: 5})
	enc := f.load(t, func(o *Options) { o.Normalize = true })
	batch := tokenizeAll(t, enc, sentences)
	want := make([][]float64, len(batch))
	for i, ids := range batch {
		want[i] = f.reference(t, ids, PoolMean, true)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := range 16 {
		wg.Go(func() {
			// Different batch sizes, so goroutines also race to compile buckets.
			sub := batch[:1+g%len(batch)]
			got, err := enc.Embed(context.Background(), sub)
			if err != nil {
				errs <- err
				return
			}
			for i := range sub {
				if d := maxAbsDiff(got[i], want[i]); d > tolerance {
					errs <- fmt.Errorf("goroutine %d sequence %d off by %g", g, i, d)
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

// Close while batches run waits for them instead of freeing the
// executables under them: every Embed either answers in full or gets the
// closed error, and every Embed after Close gets it.
func TestCloseDuringEmbed(t *testing.T) {
	f := newFixture(t, tinybert.Config{Seed: 10})
	enc := f.load(t, nil)
	batch := tokenizeAll(t, enc, sentences)
	want := make([][]float64, len(batch))
	for i, ids := range batch {
		want[i] = f.reference(t, ids, PoolMean, false)
	}
	var (
		wg      sync.WaitGroup
		started = make(chan struct{}, 8)
		errs    = make(chan error, 64)
	)
	for g := range 8 {
		wg.Go(func() {
			defer func() {
				if r := recover(); r != nil {
					errs <- fmt.Errorf("goroutine %d panicked: %v", g, r)
				}
			}()
			sub := batch[:1+g%len(batch)]
			for n := 0; ; n++ {
				if n == 1 {
					started <- struct{}{}
				}
				got, err := enc.Embed(context.Background(), sub)
				if errors.Is(err, errClosed) {
					return
				}
				if err != nil {
					errs <- fmt.Errorf("goroutine %d: %v, want success or %v", g, err, errClosed)
					return
				}
				if len(got) != len(sub) {
					errs <- fmt.Errorf("goroutine %d: %d vectors for %d sequences", g, len(got), len(sub))
					return
				}
				for i := range sub {
					if len(got[i]) != enc.Dim() || maxAbsDiff(got[i], want[i]) > tolerance {
						errs <- fmt.Errorf("goroutine %d sequence %d: %d floats off by %g", g, i, len(got[i]), maxAbsDiff(got[i], want[i]))
						return
					}
				}
			}
		})
	}
	// Close once every goroutine is past its first batch, so that Close
	// meets batches in flight rather than compiles.
	for range 8 {
		<-started
	}
	if err := enc.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if _, err := enc.Embed(context.Background(), batch[:1]); !errors.Is(err, errClosed) {
		t.Errorf("Embed after Close: %v, want %v", err, errClosed)
	}
	if err := enc.WarmupBatches(context.Background(), 1, 16); !errors.Is(err, errClosed) {
		t.Errorf("WarmupBatches after Close: %v, want %v", err, errClosed)
	}
}

func TestTokenizeTruncatesToMaxTokens(t *testing.T) {
	f := newFixture(t, tinybert.Config{Seed: 6})
	enc := f.load(t, func(o *Options) { o.MaxTokens = 20 })
	ids, err := enc.Tokenize(strings.Repeat("the quick brown fox ", 30))
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) != 20 || ids[0] != 2 || ids[19] != 3 {
		t.Errorf("Tokenize = %v: want 20 tokens from [CLS] to [SEP]", ids)
	}
	if enc.MaxTokens() != 20 {
		t.Errorf("MaxTokens() = %d, want 20", enc.MaxTokens())
	}
	// 20 is not a power of two: the last bucket is exactly MaxTokens.
	if _, err := enc.Embed(context.Background(), [][]int32{ids}); err != nil {
		t.Errorf("Embed of a MaxTokens-long sequence: %v", err)
	}
	if _, err := enc.Tokenize("bad \xff utf-8"); !errors.Is(err, model.ErrUntokenizable) {
		t.Errorf("Tokenize of invalid UTF-8: err = %v, want ErrUntokenizable", err)
	}
}

func TestEmbedRejectsBadBatches(t *testing.T) {
	f := newFixture(t, tinybert.Config{Seed: 7})
	enc := f.load(t, nil)
	tooLong := make([]int32, 65)
	cases := map[string][][]int32{
		"empty sequence": {{2, 3}, {}},
		"too long":       {tooLong},
		"id past vocab":  {{2, int32(len(vocab)), 3}},
		"negative id":    {{2, -1, 3}},
	}
	for name, batch := range cases {
		if _, err := enc.Embed(context.Background(), batch); err == nil {
			t.Errorf("%s: Embed succeeded", name)
		}
	}
	got, err := enc.Embed(context.Background(), nil)
	if err != nil || len(got) != 0 {
		t.Errorf("empty batch: got %v, %v; want no vectors and no error", got, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := enc.Embed(ctx, [][]int32{{2, 3}}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context: err = %v, want context.Canceled", err)
	}
	if err := enc.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := enc.Embed(context.Background(), [][]int32{{2, 3}}); err == nil {
		t.Error("Embed after Close succeeded")
	}
}

func TestLoadErrors(t *testing.T) {
	f := newFixture(t, tinybert.Config{Seed: 8})
	cases := []struct {
		name   string
		mutate func(*Options)
		want   []string
	}{
		{"unknown output", func(o *Options) { o.OutputName = "sentence_embedding" },
			[]string{`"sentence_embedding"`, `"last_hidden_state"`, `"pooler_output"`}},
		{"renamed ids input", func(o *Options) { o.InputIDsName = "ids" },
			[]string{`"input_ids"`, `"attention_mask"`, `"token_type_ids"`}},
		{"pooling", func(o *Options) { o.Pooling = "max" }, []string{`"max"`}},
		{"rank-2 output pooled", func(o *Options) { o.OutputName = "pooler_output" }, []string{"rank 3"}},
		{"missing model", func(o *Options) { o.ModelPath = filepath.Join(f.dir, "none.onnx") }, []string{"none.onnx"}},
		{"missing tokenizer", func(o *Options) { o.TokenizerPath = filepath.Join(f.dir, "none.json") }, []string{"none.json"}},
		{"max tokens", func(o *Options) { o.MaxTokens = 1 }, []string{"max tokens"}},
		{"same name twice", func(o *Options) { o.TokenTypeIDsName = "input_ids" }, []string{"must differ"}},
	}
	for _, c := range cases {
		opts := f.opts
		c.mutate(&opts)
		_, err := Load(opts, newBackend(t))
		if err == nil {
			t.Errorf("%s: Load succeeded", c.name)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not mention %s", c.name, err, w)
			}
		}
	}
	// Without a mask input, the padding of shared lengths would be
	// attended to and change every vector.
	nomask := newFixture(t, tinybert.Config{Seed: 8, NoAttentionMaskInput: true})
	if _, err := Load(nomask.opts, newBackend(t)); err == nil || !strings.Contains(err.Error(), `no input "attention_mask"`) {
		t.Errorf("Load of a graph without attention_mask: %v, want it refused", err)
	}
	garbage := filepath.Join(f.dir, "garbage.onnx")
	if err := os.WriteFile(garbage, []byte("not a protobuf at all"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(Options{ModelPath: garbage, TokenizerPath: f.opts.TokenizerPath}, newBackend(t)); err == nil {
		t.Error("Load of a garbage .onnx file succeeded")
	}
}

func toFloat64(v []float32) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = float64(x)
	}
	return out
}

func BenchmarkEmbed(b *testing.B) {
	f := newFixture(b, tinybert.Config{Seed: 9})
	enc := f.load(b, nil)
	for _, size := range []int{1, 8, 32} {
		texts := make([]string, size)
		for i := range texts {
			texts[i] = sentences[i%4]
		}
		batch := tokenizeAll(b, enc, texts)
		b.Run(fmt.Sprintf("batch=%d", size), func(b *testing.B) {
			if _, err := enc.Embed(context.Background(), batch); err != nil { // compile outside the timer
				b.Fatal(err)
			}
			b.ResetTimer()
			for b.Loop() {
				if _, err := enc.Embed(context.Background(), batch); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*size), "ns/sentence")
		})
	}
}
