package semantic

import (
	"slices"
	"sort"
)

// neighbor is one search result: an entry and its similarity to the query.
type neighbor struct {
	id  uint64
	sim float32
}

// vectorIndex finds the entries of one scope nearest to a query vector.
// Vectors are unit length and similarity is their dot product. An index is
// not safe for concurrent writes; the cache serialises them.
type vectorIndex interface {
	add(id uint64, vec []float32)
	remove(id uint64)
	// search returns up to k live entries, most similar first.
	search(q []float32, k int) []neighbor
	len() int
	// live lists the ids of the live entries.
	live() []uint64
	// linkBytes estimates the memory the index spends on an entry beyond
	// its vector, for the cache's memory bound.
	linkBytes() int
}

// flatIndex compares the query with every vector. Below a few thousand
// entries this is faster than a graph walk and always exact.
type flatIndex struct {
	dim  int
	ids  []uint64
	vecs []float32 // ids[i]'s vector is vecs[i*dim:(i+1)*dim]
	pos  map[uint64]int
}

func newFlatIndex(dim int) *flatIndex {
	return &flatIndex{dim: dim, pos: make(map[uint64]int)}
}

func (f *flatIndex) add(id uint64, vec []float32) {
	if i, ok := f.pos[id]; ok {
		copy(f.vecs[i*f.dim:], vec)
		return
	}
	f.pos[id] = len(f.ids)
	f.ids = append(f.ids, id)
	f.vecs = append(f.vecs, vec...)
}

func (f *flatIndex) remove(id uint64) {
	i, ok := f.pos[id]
	if !ok {
		return
	}
	last := len(f.ids) - 1
	if i != last {
		f.ids[i] = f.ids[last]
		copy(f.vecs[i*f.dim:(i+1)*f.dim], f.vecs[last*f.dim:])
		f.pos[f.ids[i]] = i
	}
	f.ids = f.ids[:last]
	f.vecs = f.vecs[:last*f.dim]
	delete(f.pos, id)
	if cap(f.ids) > 64 && len(f.ids) < cap(f.ids)/4 {
		// The memory bound counts live entries: a scope that shrank must
		// not keep the arrays of its largest size.
		f.ids = append(make([]uint64, 0, 2*len(f.ids)), f.ids...)
		f.vecs = append(make([]float32, 0, 2*len(f.vecs)), f.vecs...)
	}
}

func (f *flatIndex) search(q []float32, k int) []neighbor {
	if k <= 0 {
		return nil
	}
	top := make([]neighbor, 0, k+1)
	for i, id := range f.ids {
		s := dot(q, f.vecs[i*f.dim:(i+1)*f.dim])
		if len(top) == k && s <= top[k-1].sim {
			continue
		}
		j := sort.Search(len(top), func(j int) bool { return top[j].sim < s })
		top = append(top, neighbor{})
		copy(top[j+1:], top[j:])
		top[j] = neighbor{id: id, sim: s}
		if len(top) > k {
			top = top[:k]
		}
	}
	return top
}

func (f *flatIndex) len() int { return len(f.ids) }

func (f *flatIndex) live() []uint64 { return slices.Clone(f.ids) }

// linkBytes counts the index's own copy of the vector: a contiguous
// array keeps the scan sequential in memory.
func (f *flatIndex) linkBytes() int { return 4*f.dim + 8 + 8 + 16 }
