// Package wordpiece tokenizes text for BERT-style encoders exactly as a
// HuggingFace tokenizer.json with a WordPiece model does, in pure Go, so a
// user's ONNX encoder can be served without Python or the Rust tokenizers
// library. It supports the pieces BERT checkpoints use: the BertNormalizer,
// the BertPreTokenizer, WordPiece with "##" continuation pieces, the added
// (special) tokens, BertProcessing/TemplateProcessing post-processors and
// truncation. Any other component in the file is refused at Load with an
// error naming it, rather than silently tokenizing differently.
package wordpiece

import (
	"errors"
	"fmt"
	"os"
	"unicode/utf8"
)

// ErrInvalidUTF8 is returned by Encode for text that is not valid UTF-8.
var ErrInvalidUTF8 = errors.New("text is not valid UTF-8")

// Tokenizer turns text into the token ids a BERT-style model expects. It is
// immutable after Load and safe for concurrent use.
type Tokenizer struct {
	normalizers  []func(string) string
	pretokenize  bool // BertPreTokenizer present
	vocab        map[string]int32
	unkID        int32
	prefix       string // continuing subword prefix, "##" for BERT
	maxWordChars int
	added        []addedToken
	prefixIDs    []int32 // special tokens before the sequence ([CLS])
	suffixIDs    []int32 // special tokens after the sequence ([SEP])
	maxLength    int     // 0: no truncation
	truncateLeft bool
}

// Load reads a HuggingFace tokenizer.json file.
func Load(path string) (*Tokenizer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("wordpiece: %w", err)
	}
	t, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("wordpiece: %s: %w", path, err)
	}
	return t, nil
}

// WithMaxLength returns a copy of t that truncates every encoding, special
// tokens included, to at most n tokens. n <= 0 turns truncation off.
func (t *Tokenizer) WithMaxLength(n int) *Tokenizer {
	c := *t
	c.maxLength = max(n, 0)
	return &c
}

// MaxLength is the truncation length in tokens, special tokens included;
// 0 means encodings are not truncated.
func (t *Tokenizer) MaxLength() int { return t.maxLength }

// NumIDs is one more than the largest id Encode can return: the size of
// the embedding table a model for this tokenizer needs.
func (t *Tokenizer) NumIDs() int {
	n := int32(0)
	for _, id := range t.vocab {
		n = max(n, id+1)
	}
	for _, a := range t.added {
		n = max(n, a.id+1)
	}
	for _, id := range append(t.prefixIDs, t.suffixIDs...) {
		n = max(n, id+1)
	}
	return int(n)
}

// Encode returns the token ids of text, with the post-processor's special
// tokens around them and truncated to MaxLength.
func (t *Tokenizer) Encode(text string) ([]int32, error) {
	if !utf8.ValidString(text) {
		return nil, ErrInvalidUTF8
	}
	var ids []int32
	for _, seg := range t.splitAdded(text) {
		if seg.added {
			ids = append(ids, seg.id)
			continue
		}
		ids = t.encodePlain(seg.text, ids)
	}
	return t.postProcess(ids), nil
}

// encodePlain runs normalizer, normalized added tokens, pre-tokenizer and
// WordPiece over a stretch of text that holds no raw added token.
func (t *Tokenizer) encodePlain(text string, ids []int32) []int32 {
	for _, normalize := range t.normalizers {
		text = normalize(text)
	}
	for _, seg := range t.splitNormalizedAdded(text) {
		if seg.added {
			ids = append(ids, seg.id)
			continue
		}
		words := []string{seg.text}
		if t.pretokenize {
			words = bertPreTokenize(seg.text)
		}
		for _, w := range words {
			ids = t.wordPiece(w, ids)
		}
	}
	return ids
}

// wordPiece appends the ids of one pre-tokenized word: greedy longest match
// first, continuation pieces carrying the prefix; a word that cannot be
// covered entirely, or is too long, becomes a single unknown token.
func (t *Tokenizer) wordPiece(word string, ids []int32) []int32 {
	if word == "" {
		return ids
	}
	if utf8.RuneCountInString(word) > t.maxWordChars {
		return append(ids, t.unkID)
	}
	start := len(ids)
	for pos := 0; pos < len(word); {
		end := len(word)
		found := false
		for end > pos {
			piece := word[pos:end]
			if pos > 0 {
				piece = t.prefix + piece
			}
			if id, ok := t.vocab[piece]; ok {
				ids = append(ids, id)
				found = true
				break
			}
			// Step back one whole rune so pieces never split a character.
			_, size := utf8.DecodeLastRuneInString(word[pos:end])
			end -= size
		}
		if !found {
			return append(ids[:start], t.unkID)
		}
		pos = end
	}
	return ids
}

// postProcess truncates the sequence so that, with the special tokens, it
// fits MaxLength, then adds the special tokens.
func (t *Tokenizer) postProcess(ids []int32) []int32 {
	if t.maxLength > 0 {
		room := max(t.maxLength-len(t.prefixIDs)-len(t.suffixIDs), 0)
		if len(ids) > room {
			if t.truncateLeft {
				ids = ids[len(ids)-room:]
			} else {
				ids = ids[:room]
			}
		}
	}
	out := make([]int32, 0, len(t.prefixIDs)+len(ids)+len(t.suffixIDs))
	out = append(out, t.prefixIDs...)
	out = append(out, ids...)
	out = append(out, t.suffixIDs...)
	if t.maxLength > 0 && len(out) > t.maxLength {
		// Only when the specials alone exceed MaxLength.
		out = out[:t.maxLength]
	}
	return out
}
