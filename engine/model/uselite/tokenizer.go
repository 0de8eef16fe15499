package uselite

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"unicode/utf16"

	"golang.org/x/text/unicode/norm"
)

// The tokenizer is a port of the TF.js Universal Sentence Encoder tokenizer
// (tfjs-models universal-sentence-encoder/src/tokenizer, copied verbatim into
// @energetic-ai/embeddings), including its quirks, because the model was
// trained and is served with exactly those token ids:
//
//   - NFKC normalisation, no lowercasing; every U+0020 becomes "▁" and one
//     "▁" is prepended to non-empty input. Other whitespace is left alone.
//   - Viterbi over piece scores where a position's best score of exactly 0
//     counts as "unset", and ties go to the later candidate.
//   - A character no piece starts with becomes the unknown piece (id 0,
//     score 0); runs of unknown pieces merge into one.
//   - The backward pass steps back by the UTF-16 length of the chosen
//     vocabulary piece, as JavaScript's String.length does.
//   - vocab.json holds a few null scores (":" and friends); JavaScript's
//     null + number treats them as 0, and so do we.

const (
	wordBoundary = '▁' // U+2581, SentencePiece's word-boundary marker.

	// reservedPieces are unk, <s>, </s> and three extra ids; none of them is
	// matched against text.
	reservedPieces = 6

	unknownID = 0
)

// trieNode is the trie as parseVocab builds it, before flatten.
type trieNode struct {
	children map[rune]*trieNode
	isPiece  bool
	score    float64
	id       int32
}

type tokenizer struct {
	pieces *trie
	// jsLength is each piece's length in UTF-16 code units.
	jsLength []int
}

// parseVocab reads vocab.json: a JSON array of [piece, score] pairs.
func parseVocab(data []byte) (*tokenizer, error) {
	var raw [][]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("vocab.json is not a list of [piece, score] pairs: %w", err)
	}
	if len(raw) <= reservedPieces {
		return nil, fmt.Errorf("vocab.json holds %d pieces, want more than %d", len(raw), reservedPieces)
	}
	t := &tokenizer{jsLength: make([]int, len(raw))}
	root := &trieNode{}
	for i, pair := range raw {
		if len(pair) != 2 {
			return nil, fmt.Errorf("vocab.json entry %d has %d fields, want [piece, score]", i, len(pair))
		}
		var piece string
		if err := json.Unmarshal(pair[0], &piece); err != nil {
			return nil, fmt.Errorf("vocab.json entry %d: piece is not a string: %w", i, err)
		}
		var score float64
		if !bytes.Equal(bytes.TrimSpace(pair[1]), []byte("null")) {
			if err := json.Unmarshal(pair[1], &score); err != nil {
				return nil, fmt.Errorf("vocab.json entry %d: score is not a number: %w", i, err)
			}
		}
		t.jsLength[i] = len(utf16.Encode([]rune(piece)))
		if i >= reservedPieces {
			insert(root, piece, score, int32(i))
		}
	}
	t.pieces = flatten(root)
	return t, nil
}

func insert(root *trieNode, piece string, score float64, id int32) {
	if piece == "" {
		return
	}
	node := root
	for _, r := range piece {
		child := node.children[r]
		if child == nil {
			if node.children == nil {
				node.children = make(map[rune]*trieNode)
			}
			child = &trieNode{}
			node.children[r] = child
		}
		node = child
	}
	// A repeated piece keeps the last id and score, as the JS trie does.
	node.isPiece, node.score, node.id = true, score, id
}

// relax offers piece id, covering symbols [start, end), as the last piece
// of the best segmentation of symbols [0, end).
func relax(best []float64, words []int32, start, end int, score float64, id int32) {
	score += best[start]
	if best[end] == 0 || score >= best[end] {
		best[end] = score
		words[end] = id
	}
}

// graphemeJoiner is U+034F COMBINING GRAPHEME JOINER.
const graphemeJoiner = '\u034f'

// encode returns the token ids of text; empty when NFKC(text) is empty.
func (t *tokenizer) encode(text string) []int32 {
	normalized := norm.NFKC.String(text)
	if !strings.ContainsRune(text, graphemeJoiner) {
		// Go's NFKC follows the Stream-Safe Text Format and inserts U+034F
		// after 30 combining marks in a row; JavaScript's normalize, which
		// TF.js used, does not.
		normalized = strings.ReplaceAll(normalized, string(graphemeJoiner), "")
	}
	if normalized == "" {
		return nil
	}
	symbols := []rune(string(wordBoundary) + strings.ReplaceAll(normalized, " ", string(wordBoundary)))
	n := len(symbols)

	// Viterbi over the lattice of pieces, relaxing each piece's end as its
	// start is reached: best[i] is final by then, since every piece ending
	// at i starts before it, and the pieces into one end are relaxed in
	// increasing start order, the order JS visits them, so ties resolve
	// as in TF.js.
	best := make([]float64, n+1)
	words := make([]int32, n+1)
	for i := range n {
		matched := false
		node := int32(0)
		for j := i; j < n; j++ {
			if node = t.pieces.child(node, symbols[j]); node == noChild {
				break
			}
			if p := &t.pieces.nodes[node]; p.isPiece {
				relax(best, words, i, j+1, p.score, p.id)
				matched = true
			}
		}
		if !matched {
			relax(best, words, i, i+1, 0, unknownID)
		}
	}

	var reversed []int32
	for pos := n; pos > 0; {
		reversed = append(reversed, words[pos])
		// max(1, …) only guards against a vocabulary with an empty unknown
		// piece, where JS would loop forever.
		pos -= max(1, t.jsLength[words[pos]])
	}

	ids := make([]int32, 0, len(reversed))
	previousUnknown := false
	for _, id := range reversed {
		if !(previousUnknown && id == unknownID) {
			ids = append(ids, id)
		}
		previousUnknown = id == unknownID
	}
	for i, j := 0, len(ids)-1; i < j; i, j = i+1, j-1 {
		ids[i], ids[j] = ids[j], ids[i]
	}
	return ids
}
