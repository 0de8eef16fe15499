package uselite

import "slices"

// trie holds the vocabulary's pieces for lookup, flattened from the map
// trie parseVocab builds: a map lookup per symbol was most of the
// tokenizer's time. Node 0 is the root; node n's children are
// labels/kids[first[n] : first[n]+count[n]], sorted by rune, and the
// root's are also indexed directly by rune below len(rootKids).
type trie struct {
	nodes    []flatNode
	labels   []rune
	kids     []int32
	rootKids []int32 // -1: no child
}

type flatNode struct {
	first, count int32
	isPiece      bool
	score        float64
	id           int32
}

// noChild is what child returns for a symbol no piece continues with.
const noChild = -1

// rootTable bounds the root's direct index: the Basic Multilingual Plane.
const rootTable = 1 << 16

// flatten lays the map trie out breadth-first.
func flatten(root *trieNode) *trie {
	t := &trie{rootKids: make([]int32, rootTable)}
	for i := range t.rootKids {
		t.rootKids[i] = noChild
	}
	queue := []*trieNode{root}
	t.nodes = append(t.nodes, flatNode{})
	for n := 0; n < len(queue); n++ {
		src := queue[n]
		keys := make([]rune, 0, len(src.children))
		for r := range src.children {
			keys = append(keys, r)
		}
		slices.Sort(keys)
		t.nodes[n] = flatNode{first: int32(len(t.labels)), count: int32(len(keys)), isPiece: src.isPiece, score: src.score, id: src.id}
		for _, r := range keys {
			child := int32(len(queue))
			queue = append(queue, src.children[r])
			t.nodes = append(t.nodes, flatNode{})
			t.labels = append(t.labels, r)
			t.kids = append(t.kids, child)
			if n == 0 && r < rootTable {
				t.rootKids[r] = child
			}
		}
	}
	return t
}

// child is node n's child for symbol r, or noChild.
func (t *trie) child(n int32, r rune) int32 {
	if n == 0 && r >= 0 && r < rootTable {
		return t.rootKids[r]
	}
	nd := &t.nodes[n]
	lo, hi := nd.first, nd.first+nd.count
	for lo < hi {
		mid := int32(uint32(lo+hi) >> 1)
		if t.labels[mid] < r {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	if lo < nd.first+nd.count && t.labels[lo] == r {
		return t.kids[lo]
	}
	return noChild
}
