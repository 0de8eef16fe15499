package semantic

import (
	"cmp"
	"container/heap"
	"maps"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
)

// HNSWParams tunes the graph index a scope switches to past
// Config.HNSWThreshold entries.
type HNSWParams struct {
	// M is the number of links a node keeps per layer (2M on layer 0).
	// Default 16.
	M int
	// EfConstruction is the candidate list size while inserting. Default 100.
	EfConstruction int
	// EfSearch is the candidate list size while searching. Default 64.
	EfSearch int
}

func (p *HNSWParams) setDefaults() {
	if p.M <= 0 {
		p.M = 16
	}
	if p.EfConstruction <= 0 {
		p.EfConstruction = 100
	}
	if p.EfSearch <= 0 {
		p.EfSearch = 64
	}
}

// hnswIndex is a Hierarchical Navigable Small World graph (Malkov and
// Yashunin, 2016). Removal marks a node deleted: it still routes searches
// but is never returned. When deleted nodes outnumber live ones the graph
// is rebuilt from the live nodes, so routing quality and memory do not decay
// under churn (expiry and eviction remove entries all the time).
type hnswIndex struct {
	p       HNSWParams
	dim     int
	levelMu float64 // 1/ln(M)
	rng     *rand.Rand
	nodes   []hnswNode
	byID    map[uint64]int32
	entry   int32 // -1 when empty
	top     int   // level of the entry point
	deleted int
}

type hnswNode struct {
	id      uint64
	vec     []float32
	links   [][]int32 // links[l] are the neighbours on layer l
	deleted bool
}

func newHNSWIndex(dim int, p HNSWParams) *hnswIndex {
	p.setDefaults()
	return &hnswIndex{
		p:       p,
		dim:     dim,
		levelMu: 1 / math.Log(float64(p.M)),
		rng:     rand.New(rand.NewPCG(0x5eed, uint64(dim))),
		byID:    make(map[uint64]int32),
		entry:   -1,
	}
}

func (h *hnswIndex) len() int { return len(h.byID) }

func (h *hnswIndex) live() []uint64 { return slices.Collect(maps.Keys(h.byID)) }

func (h *hnswIndex) linkBytes() int {
	// layer 0 holds up to 2M links, upper layers M each with probability
	// 1/M per layer; plus the node header and the map slot.
	return (2*h.p.M+h.p.M/(h.p.M-1))*4 + 64 + 16
}

func (h *hnswIndex) maxLinks(level int) int {
	if level == 0 {
		return 2 * h.p.M
	}
	return h.p.M
}

func (h *hnswIndex) add(id uint64, vec []float32) {
	if _, ok := h.byID[id]; ok {
		h.remove(id)
	}
	level := int(math.Floor(-math.Log(1-h.rng.Float64()) * h.levelMu))
	n := int32(len(h.nodes))
	h.nodes = append(h.nodes, hnswNode{id: id, vec: vec, links: make([][]int32, level+1)})
	h.byID[id] = n
	if h.entry < 0 {
		h.entry, h.top = n, level
		return
	}
	ep := h.entry
	for l := h.top; l > level; l-- {
		ep = h.greedy(vec, ep, l)
	}
	for l := min(level, h.top); l >= 0; l-- {
		cands := h.searchLayer(vec, ep, h.p.EfConstruction, l)
		links := h.selectNeighbors(cands, h.maxLinks(l))
		h.nodes[n].links[l] = links
		for _, m := range links {
			h.link(m, n, l)
		}
		ep = cands[0].idx
	}
	if level > h.top {
		h.entry, h.top = n, level
	}
}

// link adds n to m's neighbours on layer l. An overflowing list keeps
// its most similar members: re-running the diversity heuristic here costs
// a quadratic number of dot products on every insert, for little recall.
func (h *hnswIndex) link(m, n int32, l int) {
	links := append(h.nodes[m].links[l], n)
	if len(links) <= h.maxLinks(l) {
		h.nodes[m].links[l] = links
		return
	}
	cands := make([]scored, len(links))
	for i, x := range links {
		cands[i] = scored{idx: x, sim: dot(h.nodes[m].vec, h.nodes[x].vec)}
	}
	sortScoredDesc(cands)
	kept := links[:0]
	for _, c := range cands[:h.maxLinks(l)] {
		kept = append(kept, c.idx)
	}
	h.nodes[m].links[l] = kept
}

// selectNeighbors is the paper's heuristic (algorithm 4): keep a candidate
// only if it is closer to the base than to every neighbour already kept,
// which spreads links across directions; fill up with the nearest rejected
// ones so sparse regions stay connected. cands is sorted, most similar first.
func (h *hnswIndex) selectNeighbors(cands []scored, m int) []int32 {
	out := make([]int32, 0, m)
	var rejected []int32
	for _, c := range cands {
		if len(out) == m {
			break
		}
		keep := true
		for _, k := range out {
			if dot(h.nodes[c.idx].vec, h.nodes[k].vec) > c.sim {
				keep = false
				break
			}
		}
		if keep {
			out = append(out, c.idx)
		} else {
			rejected = append(rejected, c.idx)
		}
	}
	for _, r := range rejected {
		if len(out) == m {
			break
		}
		out = append(out, r)
	}
	return out
}

// greedy walks layer l towards q, one best neighbour at a time.
func (h *hnswIndex) greedy(q []float32, ep int32, l int) int32 {
	best := dot(q, h.nodes[ep].vec)
	for changed := true; changed; {
		changed = false
		for _, n := range h.nodes[ep].links[l] {
			if s := dot(q, h.nodes[n].vec); s > best {
				best, ep, changed = s, n, true
			}
		}
	}
	return ep
}

// searchLayer is the paper's beam search on one layer; it returns up to ef
// nodes, deleted ones included (they still route), most similar first.
func (h *hnswIndex) searchLayer(q []float32, ep int32, ef, l int) []scored {
	visited := newVisitSet(len(h.nodes))
	defer visited.release()
	visited.add(ep)
	s := scored{idx: ep, sim: dot(q, h.nodes[ep].vec)}
	cand := &maxHeap{s}
	found := &minHeap{s}
	for cand.Len() > 0 {
		c := heap.Pop(cand).(scored)
		if c.sim < (*found)[0].sim && found.Len() >= ef {
			break
		}
		for _, n := range h.nodes[c.idx].links[l] {
			if !visited.add(n) {
				continue
			}
			sim := dot(q, h.nodes[n].vec)
			if found.Len() < ef || sim > (*found)[0].sim {
				heap.Push(cand, scored{idx: n, sim: sim})
				heap.Push(found, scored{idx: n, sim: sim})
				if found.Len() > ef {
					heap.Pop(found)
				}
			}
		}
	}
	out := []scored(*found)
	sortScoredDesc(out)
	return out
}

func (h *hnswIndex) search(q []float32, k int) []neighbor {
	if h.entry < 0 || k <= 0 {
		return nil
	}
	ep := h.entry
	for l := h.top; l > 0; l-- {
		ep = h.greedy(q, ep, l)
	}
	cands := h.searchLayer(q, ep, max(h.p.EfSearch, k), 0)
	out := make([]neighbor, 0, k)
	for _, c := range cands {
		if h.nodes[c.idx].deleted {
			continue
		}
		out = append(out, neighbor{id: h.nodes[c.idx].id, sim: c.sim})
		if len(out) == k {
			break
		}
	}
	return out
}

func (h *hnswIndex) remove(id uint64) {
	n, ok := h.byID[id]
	if !ok {
		return
	}
	delete(h.byID, id)
	h.nodes[n].deleted = true
	h.deleted++
	if len(h.byID) == 0 {
		*h = *newHNSWIndex(h.dim, h.p)
	}
}

// stale reports whether deleted nodes outnumber live ones: searches still
// answer right (they step over deleted nodes), but the graph should be
// built again from the live ones, which the cache does outside its lock.
func (h *hnswIndex) stale() bool { return h.deleted > len(h.byID) }

type scored struct {
	idx int32
	sim float32
}

func sortScoredDesc(s []scored) {
	slices.SortFunc(s, func(a, b scored) int { return cmp.Compare(b.sim, a.sim) })
}

// visitSet is a bitset of node indexes seen by one search. Searches run
// concurrently under the cache's read lock, so each takes its own from a
// pool rather than sharing one on the index.
type visitSet struct{ bits []uint64 }

var visitPool = sync.Pool{New: func() any { return &visitSet{} }}

func newVisitSet(n int) *visitSet {
	v := visitPool.Get().(*visitSet)
	words := (n + 63) / 64
	if cap(v.bits) < words {
		v.bits = make([]uint64, words)
	} else {
		v.bits = v.bits[:words]
		clear(v.bits)
	}
	return v
}

// add marks n and reports whether it was new.
func (v *visitSet) add(n int32) bool {
	w, b := n/64, uint64(1)<<(n%64)
	if v.bits[w]&b != 0 {
		return false
	}
	v.bits[w] |= b
	return true
}

func (v *visitSet) release() { visitPool.Put(v) }

type maxHeap []scored

func (h maxHeap) Len() int           { return len(h) }
func (h maxHeap) Less(i, j int) bool { return h[i].sim > h[j].sim }
func (h maxHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *maxHeap) Push(x any)        { *h = append(*h, x.(scored)) }
func (h *maxHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

type minHeap []scored

func (h minHeap) Len() int           { return len(h) }
func (h minHeap) Less(i, j int) bool { return h[i].sim < h[j].sim }
func (h minHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *minHeap) Push(x any)        { *h = append(*h, x.(scored)) }
func (h *minHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}
