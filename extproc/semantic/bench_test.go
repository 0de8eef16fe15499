package semantic

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// tableEmbedder returns fixed vectors, so that the lookup benchmark
// measures the cache (identity, index, guard) and not the encoder, whose
// latency is the engine's and is measured there.
type tableEmbedder map[string][]float32

func (t tableEmbedder) Embed(_ context.Context, texts []string) ([][]float32, error) {
	out := make([][]float32, len(texts))
	for i, s := range texts {
		out[i] = t[s]
	}
	return out, nil
}

type benchCache struct {
	c         *Cache
	queries   []Request
	heapBytes float64
}

var benchCaches = map[string]*benchCache{}

// clusteredVectors draws unit vectors around 2000 random topics, the way
// sentence embeddings of chat traffic crowd around common questions.
func clusteredVectors(r *rand.Rand, n, dim int) [][]float32 {
	centers := randomUnitVectors(r, 2000, dim)
	out := make([][]float32, n)
	for i := range out {
		c := centers[r.IntN(len(centers))]
		v := make([]float32, dim)
		for j := range v {
			v[j] = c[j] + float32(r.NormFloat64())*0.03
		}
		out[i], _ = normalize(v)
	}
	return out
}

func buildBenchCache(b *testing.B, n int, hnsw bool) *benchCache {
	key := fmt.Sprint(n, hnsw)
	if bc := benchCaches[key]; bc != nil {
		return bc
	}
	const dim = 512
	r := rand.New(rand.NewPCG(uint64(n), 9))
	vecs := clusteredVectors(r, n+200, dim)
	table := tableEmbedder{}
	threshold := n + 1
	if hnsw {
		threshold = 1024
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	c, err := New(Config{MemoryBytes: 1 << 40, HNSWThreshold: threshold}, table, prometheus.NewRegistry(), nil)
	if err != nil {
		b.Fatal(err)
	}
	body := make([]byte, 500) // a short chat completion
	start := time.Now()
	for i := range n {
		q := fmt.Sprintf("question number %d about topic %d", i, i%977)
		table[q] = vecs[i]
		r := req("acme", "s", q)
		r.Policy.TTL = time.Hour // the build must not outlast the entries
		p, ttl, err := c.storable(r)
		if err != nil {
			b.Fatal(err)
		}
		if out := c.storeNow(context.Background(), p, r, StoredResponse{Body: body}, ttl); out != storeStored {
			b.Fatal(out)
		}
	}
	c.Wait() // the graph is built in the background
	build := time.Since(start)
	c.recent = newVectorMemo(1, time.Nanosecond) // lookups must search, not reuse Store's vectors
	runtime.GC()
	runtime.ReadMemStats(&after)
	bc := &benchCache{c: c, heapBytes: float64(after.HeapAlloc-before.HeapAlloc) / float64(n)}
	for i := range 200 {
		q := fmt.Sprintf("query %d", i)
		table[q] = vecs[n+i]
		bc.queries = append(bc.queries, req("acme", "s", q))
	}
	b.Logf("n=%d hnsw=%v: built in %s; %.0f B/entry accounted, %.0f B/entry heap", n, hnsw, build.Round(time.Millisecond), float64(c.Bytes())/float64(n), bc.heapBytes)
	benchCaches[key] = bc
	return bc
}

// BenchmarkLookup is one semantic lookup after the embedding: identity,
// nearest-neighbour search in a scope of n entries, guard.
func BenchmarkLookup(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		for _, hnsw := range []bool{false, true} {
			name := fmt.Sprintf("n=%d/exact", n)
			if hnsw {
				name = fmt.Sprintf("n=%d/hnsw", n)
			}
			b.Run(name, func(b *testing.B) {
				bc := buildBenchCache(b, n, hnsw)
				i := 0
				for b.Loop() {
					bc.c.Lookup(context.Background(), bc.queries[i%len(bc.queries)])
					i++
				}
				b.ReportMetric(float64(bc.c.Bytes())/float64(n), "accounted-B/entry")
				b.ReportMetric(bc.heapBytes, "heap-B/entry")
			})
		}
	}
}

func BenchmarkDot512(b *testing.B) {
	r := rand.New(rand.NewPCG(1, 1))
	v := randomUnitVectors(r, 2, 512)
	var s float32
	for b.Loop() {
		s += dot(v[0], v[1])
	}
	_ = s
}
