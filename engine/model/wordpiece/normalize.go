package wordpiece

import (
	"strings"
	"unicode"

	"golang.org/x/text/unicode/norm"
)

// bertNormalizer mirrors HuggingFace's BertNormalizer; the steps run in the
// same order as there: clean, Chinese characters, accents, lowercase.
type bertNormalizer struct {
	cleanText, chineseChars, stripAccents, lowercase bool
}

func newBertNormalizer(c componentJSON) *bertNormalizer {
	flag := func(p *bool, def bool) bool {
		if p == nil {
			return def
		}
		return *p
	}
	n := &bertNormalizer{
		cleanText:    flag(c.CleanText, true),
		chineseChars: flag(c.HandleChineseChars, true),
		lowercase:    flag(c.Lowercase, true),
	}
	// strip_accents: null means "whatever lowercase is", as in BERT.
	n.stripAccents = flag(c.StripAccents, n.lowercase)
	return n
}

func (n *bertNormalizer) normalize(s string) string {
	if n.cleanText || n.chineseChars {
		var b strings.Builder
		b.Grow(len(s))
		for _, r := range s {
			if n.cleanText {
				if r == 0 || r == unicode.ReplacementChar || isControl(r) {
					continue
				}
				if isWhitespace(r) {
					r = ' '
				}
			}
			if n.chineseChars && isChinese(r) {
				b.WriteByte(' ')
				b.WriteRune(r)
				b.WriteByte(' ')
				continue
			}
			b.WriteRune(r)
		}
		s = b.String()
	}
	if n.stripAccents {
		s = stripAccents(norm.NFD.String(s))
	}
	if n.lowercase {
		s = lowercase(s)
	}
	return s
}

// simpleNormalizers are the stand-alone normalizers a Sequence may hold.
var simpleNormalizers = map[string]func(string) string{
	"Lowercase":    lowercase,
	"StripAccents": stripAccents,
	"NFD":          norm.NFD.String,
	"NFC":          norm.NFC.String,
	"NFKD":         norm.NFKD.String,
	"NFKC":         norm.NFKC.String,
}

// lowercase applies Unicode's per-character full lowercase mapping, as
// Rust's char::to_lowercase does. The only unconditional mapping that
// differs from Go's simple mapping is U+0130, which becomes "i̇".
func lowercase(s string) string {
	return strings.Map(unicode.ToLower, strings.ReplaceAll(s, "\u0130", "i\u0307"))
}

// stripAccents drops non-spacing marks (Mn); callers decompose first.
func stripAccents(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.Is(unicode.Mn, r) {
			return -1
		}
		return r
	}, s)
}

// isWhitespace: tab, newline and carriage return are control characters
// that BERT counts as whitespace.
func isWhitespace(r rune) bool {
	return r == '\t' || r == '\n' || r == '\r' || unicode.IsSpace(r)
}

// isControl is Unicode's "Other" category (Cc, Cf, Co, Cs and unassigned),
// tab, newline and carriage return excepted.
func isControl(r rune) bool {
	if r == '\t' || r == '\n' || r == '\r' {
		return false
	}
	return unicode.In(r, unicode.Cc, unicode.Cf, unicode.Co, unicode.Cs) || !isAssigned(r)
}

func isAssigned(r rune) bool {
	return unicode.In(r, unicode.L, unicode.M, unicode.N, unicode.P, unicode.S, unicode.Z, unicode.C)
}

// isChinese covers the CJK Unified Ideographs blocks BERT pads with spaces.
func isChinese(r rune) bool {
	switch {
	case r >= 0x4E00 && r <= 0x9FFF,
		r >= 0x3400 && r <= 0x4DBF,
		r >= 0x20000 && r <= 0x2A6DF,
		r >= 0x2A700 && r <= 0x2B73F,
		r >= 0x2B740 && r <= 0x2B81F,
		r >= 0x2B920 && r <= 0x2CEAF,
		r >= 0xF900 && r <= 0xFAFF,
		r >= 0x2F800 && r <= 0x2FA1F:
		return true
	}
	return false
}

// isPunctuation is BERT's notion: all ASCII punctuation (which Unicode
// files partly under symbols, like "$" and "^") plus Unicode P*.
func isPunctuation(r rune) bool {
	if r < 0x80 {
		return (r >= '!' && r <= '/') || (r >= ':' && r <= '@') || (r >= '[' && r <= '`') || (r >= '{' && r <= '~')
	}
	return unicode.IsPunct(r)
}

// bertPreTokenize splits on whitespace (dropped) and isolates every
// punctuation character as its own word.
func bertPreTokenize(s string) []string {
	var words []string
	start := -1
	for i, r := range s {
		switch {
		case unicode.IsSpace(r):
			if start >= 0 {
				words = append(words, s[start:i])
				start = -1
			}
		case isPunctuation(r):
			if start >= 0 {
				words = append(words, s[start:i])
				start = -1
			}
			words = append(words, string(r))
		default:
			if start < 0 {
				start = i
			}
		}
	}
	if start >= 0 {
		words = append(words, s[start:])
	}
	return words
}
