package semantic

import (
	"math/rand/v2"
	"testing"
)

func randomUnitVectors(r *rand.Rand, n, dim int) [][]float32 {
	out := make([][]float32, n)
	for i := range out {
		v := make([]float32, dim)
		for j := range v {
			v[j] = float32(r.NormFloat64())
		}
		out[i], _ = normalize(v)
	}
	return out
}

// recallAt10 is the share of the true 10 nearest neighbours (by the exact
// index) that g returns.
func recallAt10(t *testing.T, exact *flatIndex, g vectorIndex, queries [][]float32) float64 {
	t.Helper()
	found, total := 0, 0
	for _, q := range queries {
		truth := map[uint64]bool{}
		for _, n := range exact.search(q, 10) {
			truth[n.id] = true
		}
		for _, n := range g.search(q, 10) {
			if truth[n.id] {
				found++
			}
		}
		total += len(truth)
	}
	return float64(found) / float64(total)
}

func TestHNSWRecallAgainstExact(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	const n, dim = 2000, 32
	vecs := randomUnitVectors(r, n, dim)
	exact := newFlatIndex(dim)
	g := newHNSWIndex(dim, HNSWParams{M: 16, EfConstruction: 100, EfSearch: 100})
	for i, v := range vecs {
		exact.add(uint64(i), v)
		g.add(uint64(i), v)
	}
	queries := randomUnitVectors(r, 200, dim)
	if rec := recallAt10(t, exact, g, queries); rec < 0.95 {
		t.Fatalf("recall@10 = %.3f, want >= 0.95", rec)
	}
	// remove two thirds (the graph is then stale, and the cache would
	// build it again) and check that removed entries are never returned
	// and recall holds meanwhile
	for i := range n {
		if i%3 != 0 {
			exact.remove(uint64(i))
			g.remove(uint64(i))
		}
	}
	if g.len() != exact.len() {
		t.Fatalf("graph holds %d entries, exact %d", g.len(), exact.len())
	}
	for _, q := range queries {
		for _, nb := range g.search(q, 10) {
			if nb.id%3 != 0 {
				t.Fatalf("removed entry %d returned", nb.id)
			}
		}
	}
	if rec := recallAt10(t, exact, g, queries); rec < 0.95 {
		t.Fatalf("recall@10 after removals = %.3f, want >= 0.95", rec)
	}
}

func TestFlatIndexOrdersBySimilarity(t *testing.T) {
	f := newFlatIndex(4)
	f.add(1, []float32{1, 0, 0, 0})
	f.add(2, []float32{0.6, 0.8, 0, 0})
	f.add(3, []float32{0, 1, 0, 0})
	f.remove(3)
	got := f.search([]float32{0, 1, 0, 0}, 5)
	if len(got) != 2 || got[0].id != 2 || got[1].id != 1 {
		t.Fatalf("search = %+v, want ids 2 then 1", got)
	}
}

// A scope that shrinks gives its memory back: the cache's bound counts
// live entries only.
func TestFlatIndexShrinks(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	vecs := randomUnitVectors(r, 1000, 16)
	f := newFlatIndex(16)
	for i, v := range vecs {
		f.add(uint64(i), v)
	}
	for i := range 990 {
		f.remove(uint64(i))
	}
	if c := cap(f.vecs); c > 100*16 {
		t.Errorf("10 entries keep room for %d vectors", c/16)
	}
	for i := 990; i < 1000; i++ {
		if got := f.search(vecs[i], 1); len(got) != 1 || got[0].id != uint64(i) {
			t.Errorf("entry %d not found after the shrink: %+v", i, got)
		}
	}
}

func TestDotMatchesNaive(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, n := range []int{0, 1, 7, 8, 9, 512, 515} {
		a, b := make([]float32, n), make([]float32, n)
		var want float64
		for i := range a {
			a[i], b[i] = r.Float32()-0.5, r.Float32()-0.5
			want += float64(a[i]) * float64(b[i])
		}
		if got := float64(dot(a, b)); got-want > 1e-4 || want-got > 1e-4 {
			t.Errorf("dot of %d = %v, want %v", n, got, want)
		}
	}
}

func TestScopePromotesToHNSW(t *testing.T) {
	c := newTestCache(t, Config{HNSWThreshold: 50}, nil)
	r := rand.New(rand.NewPCG(5, 6))
	vecs := randomUnitVectors(r, 120, 32)
	for i, v := range vecs {
		c.insert(&entry{key: string(rune('a' + i)), scope: "s", question: "q", vec: v, expires: c.now().Add(1e12)})
	}
	// The graph is built in the background from the entries at the
	// threshold; those inserted meanwhile are replayed on it.
	c.Wait()
	if !c.scopes["s"].hnsw || c.scopes["s"].idx.len() != len(vecs) {
		t.Fatalf("scope past the threshold: graph %t with %d entries, want a graph of %d", c.scopes["s"].hnsw, c.scopes["s"].idx.len(), len(vecs))
	}
	findsItself := func(what string, alive func(i int) bool) {
		t.Helper()
		for i, v := range vecs {
			cands := c.candidates("s", v)
			if alive(i) && (len(cands) == 0 || c.entries[cands[0].id].key != string(rune('a'+i))) {
				t.Fatalf("%s: vector %d does not find itself first", what, i)
			}
			if !alive(i) && len(cands) > 0 && c.entries[cands[0].id].key == string(rune('a'+i)) {
				t.Fatalf("%s: removed vector %d still found", what, i)
			}
		}
	}
	findsItself("promoted", func(int) bool { return true })

	// Removing two thirds makes the graph stale; it is built again, in the
	// background too, from the live entries.
	for i := range 80 {
		c.mu.Lock()
		c.removeLocked(c.byKey[string(rune('a'+i))])
		c.mu.Unlock()
	}
	c.Wait()
	g := c.scopes["s"].idx.(*hnswIndex)
	if g.len() != 40 || g.stale() || g.deleted >= 80 {
		t.Errorf("after removing 80 of 120: %d deleted nodes, %d live; want a graph built again, with 40 live", g.deleted, g.len())
	}
	findsItself("rebuilt", func(i int) bool { return i >= 80 })
}
