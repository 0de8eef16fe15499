package wordpiece

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

// addedToken is an entry of tokenizer.json's added_tokens: text that maps
// straight to one id ahead of normalization and WordPiece ("[MASK]").
type addedToken struct {
	content    string
	id         int32
	singleWord bool // only where not glued to a word character
	lstrip     bool // swallows the whitespace on its left
	rstrip     bool // swallows the whitespace on its right
	normalized bool // matched on normalized text instead of raw text
}

// segment is a stretch of text, or one added token already resolved.
type segment struct {
	text  string
	added bool
	id    int32
}

// splitAdded cuts raw text around the added tokens matched on raw text.
func (t *Tokenizer) splitAdded(text string) []segment {
	return t.split(text, false)
}

// splitNormalizedAdded cuts normalized text around the added tokens that
// are matched after normalization.
func (t *Tokenizer) splitNormalizedAdded(text string) []segment {
	return t.split(text, true)
}

func (t *Tokenizer) split(text string, normalized bool) []segment {
	var segs []segment
	rest := text
	for rest != "" {
		at, tok := t.findAdded(rest, normalized)
		if tok == nil {
			break
		}
		before, after := rest[:at], rest[at+len(tok.content):]
		if tok.lstrip {
			before = strings.TrimRightFunc(before, unicode.IsSpace)
		}
		if tok.rstrip {
			after = strings.TrimLeftFunc(after, unicode.IsSpace)
		}
		if before != "" {
			segs = append(segs, segment{text: before})
		}
		segs = append(segs, segment{added: true, id: tok.id})
		rest = after
	}
	if rest != "" {
		segs = append(segs, segment{text: rest})
	}
	return segs
}

// findAdded returns the leftmost match (longest at that position, as the
// tokens are sorted longest first) of an added token of the given kind.
func (t *Tokenizer) findAdded(s string, normalized bool) (int, *addedToken) {
	bestAt, best := -1, (*addedToken)(nil)
	for i := range t.added {
		tok := &t.added[i]
		if tok.normalized != normalized {
			continue
		}
		for from := 0; from < len(s); {
			at := strings.Index(s[from:], tok.content)
			if at < 0 {
				break
			}
			at += from
			if bestAt >= 0 && at >= bestAt {
				break
			}
			if !tok.singleWord || standsAlone(s, at, at+len(tok.content)) {
				bestAt, best = at, tok
				break
			}
			_, size := utf8.DecodeRuneInString(s[at:])
			from = at + size
		}
	}
	return bestAt, best
}

// standsAlone reports whether s[start:end] is not glued to word characters.
func standsAlone(s string, start, end int) bool {
	if r, _ := utf8.DecodeLastRuneInString(s[:start]); start > 0 && isWordChar(r) {
		return false
	}
	if r, _ := utf8.DecodeRuneInString(s[end:]); end < len(s) && isWordChar(r) {
		return false
	}
	return true
}

// isWordChar is the regex \w of HuggingFace's Rust tokenizers: letters,
// marks, decimal and letter numbers, connector punctuation, and the
// zero-width (non-)joiner.
func isWordChar(r rune) bool {
	return unicode.In(r, unicode.L, unicode.M, unicode.Nd, unicode.Nl, unicode.Pc) || r == '\u200c' || r == '\u200d'
}
