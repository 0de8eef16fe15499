package wordpiece

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// testVocab is small enough to check every expected id by hand.
var testVocab = []string{
	"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", // 0-4
	"the", "quick", "brown", "fox", "jump", // 5-9
	"##s", "##ed", "over", "lazy", "dog", // 10-14
	".", ",", "!", "cafe", "un", // 15-19
	"##aff", "##able", "中", "文", "$", // 20-24
	"hello", "world", "##ing", "i", "a", // 25-29
}

// tokenizerFile returns a BERT-style tokenizer.json as a generic map so a
// test can change any part of it before writing it.
func tokenizerFile() map[string]any {
	vocab := map[string]int{}
	for i, w := range testVocab {
		vocab[w] = i
	}
	var added []map[string]any
	for i, w := range testVocab[:5] {
		added = append(added, map[string]any{
			"id": i, "content": w, "single_word": false, "lstrip": false,
			"rstrip": false, "normalized": false, "special": true,
		})
	}
	special := func(tok string, id int) map[string]any {
		return map[string]any{"id": tok, "ids": []int{id}, "tokens": []string{tok}}
	}
	return map[string]any{
		"version":      "1.0",
		"truncation":   nil,
		"padding":      nil,
		"added_tokens": added,
		"normalizer": map[string]any{
			"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
			"strip_accents": nil, "lowercase": true,
		},
		"pre_tokenizer": map[string]any{"type": "BertPreTokenizer"},
		"post_processor": map[string]any{
			"type": "TemplateProcessing",
			"single": []any{
				map[string]any{"SpecialToken": map[string]any{"id": "[CLS]", "type_id": 0}},
				map[string]any{"Sequence": map[string]any{"id": "A", "type_id": 0}},
				map[string]any{"SpecialToken": map[string]any{"id": "[SEP]", "type_id": 0}},
			},
			"special_tokens": map[string]any{"[CLS]": special("[CLS]", 2), "[SEP]": special("[SEP]", 3)},
		},
		"decoder": map[string]any{"type": "WordPiece", "prefix": "##", "cleanup": true},
		"model": map[string]any{
			"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
			"max_input_chars_per_word": 100, "vocab": vocab,
		},
	}
}

func writeTokenizer(t testing.TB, file map[string]any) string {
	t.Helper()
	data, err := json.Marshal(file)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "tokenizer.json")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func loadTokenizer(t testing.TB, file map[string]any) *Tokenizer {
	t.Helper()
	tok, err := Load(writeTokenizer(t, file))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return tok
}

func TestEncodeBert(t *testing.T) {
	tok := loadTokenizer(t, tokenizerFile())
	cases := []struct {
		text string
		want []int32
	}{
		{"The quick brown fox jumps over the lazy dog.", []int32{2, 5, 6, 7, 8, 9, 10, 12, 5, 13, 14, 15, 3}},
		{"jumped", []int32{2, 9, 11, 3}},
		{"unaffable", []int32{2, 19, 20, 21, 3}},
		// Accents stripped and lowercased because strip_accents is null and lowercase true.
		{"CAFÉ!", []int32{2, 18, 17, 3}},
		// Decomposed input normalizes the same way.
		{"cafe\u0301", []int32{2, 18, 3}},
		// Chinese characters become words of their own even without spaces.
		{"hello中文world", []int32{2, 25, 22, 23, 26, 3}},
		// "$" is ASCII punctuation for BERT though Unicode files it as a symbol.
		{"$5", []int32{2, 24, 1, 3}},
		// A word with an uncoverable tail is one [UNK], not a partial match.
		{"jumpsx", []int32{2, 1, 3}},
		// Control characters vanish; tabs and newlines separate words.
		{"hello\x00\u200b\tworld\r\n", []int32{2, 25, 26, 3}},
		// Special tokens in raw text are matched before normalization...
		{"[MASK] fox", []int32{2, 4, 8, 3}},
		// ...but only verbatim, so a lowercased one is plain punctuation and text.
		{"[mask]", []int32{2, 1, 1, 1, 3}},
		{"", []int32{2, 3}},
		{"   ", []int32{2, 3}},
		// U+0130 decomposes to I + dot above; the dot is stripped.
		{"İ", []int32{2, 28, 3}},
	}
	for _, c := range cases {
		got, err := tok.Encode(c.text)
		if err != nil {
			t.Errorf("Encode(%q): %v", c.text, err)
			continue
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("Encode(%q) = %v, want %v", c.text, got, c.want)
		}
	}
}

func TestNormalizerFlags(t *testing.T) {
	set := func(key string, v any) *Tokenizer {
		f := tokenizerFile()
		f["normalizer"].(map[string]any)[key] = v
		return loadTokenizer(t, f)
	}
	cases := []struct {
		name string
		tok  *Tokenizer
		text string
		want []int32
	}{
		{"no lowercase", set("lowercase", false), "The fox", []int32{2, 1, 8, 3}},
		{"accents kept", set("strip_accents", false), "café", []int32{2, 1, 3}},
		{"chinese not split", set("handle_chinese_chars", false), "hello中文", []int32{2, 1, 3}},
		{"text not cleaned", set("clean_text", false), "fox\u200bdog", []int32{2, 1, 3}},
	}
	for _, c := range cases {
		got, err := c.tok.Encode(c.text)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("%s: Encode(%q) = %v, want %v", c.name, c.text, got, c.want)
		}
	}
}

func TestNormalizerSequence(t *testing.T) {
	f := tokenizerFile()
	f["normalizer"] = map[string]any{"type": "Sequence", "normalizers": []any{
		map[string]any{"type": "NFD"}, map[string]any{"type": "Lowercase"}, map[string]any{"type": "StripAccents"},
	}}
	got, err := loadTokenizer(t, f).Encode("Café Dog")
	if err != nil {
		t.Fatal(err)
	}
	if want := []int32{2, 18, 14, 3}; !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestMaxInputCharsPerWord(t *testing.T) {
	f := tokenizerFile()
	f["model"].(map[string]any)["max_input_chars_per_word"] = 8
	got, err := loadTokenizer(t, f).Encode("unaffable fox")
	if err != nil {
		t.Fatal(err)
	}
	// "unaffable" has 9 characters, one more than allowed.
	if want := []int32{2, 1, 8, 3}; !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestTruncation(t *testing.T) {
	text := "the quick brown fox jumps"
	tok := loadTokenizer(t, tokenizerFile())
	got, _ := tok.WithMaxLength(5).Encode(text)
	if want := []int32{2, 5, 6, 7, 3}; !slices.Equal(got, want) {
		t.Errorf("WithMaxLength(5) = %v, want %v", got, want)
	}
	if full, _ := tok.Encode(text); len(full) != 8 {
		t.Errorf("WithMaxLength changed the original tokenizer: %v", full)
	}

	f := tokenizerFile()
	f["truncation"] = map[string]any{"direction": "Left", "max_length": 4, "strategy": "LongestFirst", "stride": 0}
	tok = loadTokenizer(t, f)
	if tok.MaxLength() != 4 {
		t.Errorf("MaxLength() = %d, want 4 from the file", tok.MaxLength())
	}
	got, _ = tok.Encode(text)
	if want := []int32{2, 9, 10, 3}; !slices.Equal(got, want) {
		t.Errorf("left truncation = %v, want %v", got, want)
	}
}

func TestBertProcessing(t *testing.T) {
	f := tokenizerFile()
	f["post_processor"] = map[string]any{"type": "BertProcessing", "sep": []any{"[SEP]", 3}, "cls": []any{"[CLS]", 2}}
	got, err := loadTokenizer(t, f).Encode("lazy dog")
	if err != nil {
		t.Fatal(err)
	}
	if want := []int32{2, 13, 14, 3}; !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}

	f["post_processor"] = nil
	got, _ = loadTokenizer(t, f).Encode("lazy dog")
	if want := []int32{13, 14}; !slices.Equal(got, want) {
		t.Errorf("without post_processor got %v, want %v", got, want)
	}
}

func TestAddedTokenStrip(t *testing.T) {
	f := tokenizerFile()
	added := f["added_tokens"].([]map[string]any)
	added = append(added, map[string]any{
		"id": 29, "content": "<x>", "single_word": true, "lstrip": true, "rstrip": true, "normalized": false,
	})
	f["added_tokens"] = added
	tok := loadTokenizer(t, f)
	got, _ := tok.Encode("fox <x> dog")
	if want := []int32{2, 8, 29, 14, 3}; !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	// single_word: glued to a word it is ordinary text ("<", "x", ">").
	got, _ = tok.Encode("fox<x>dog")
	if want := []int32{2, 8, 1, 1, 1, 14, 3}; !slices.Equal(got, want) {
		t.Errorf("glued: got %v, want %v", got, want)
	}
	// A combining mark is a word character to HuggingFace's \w, as a
	// letter number is.
	for _, text := range []string{"cafe\u0301<x>", "fox\u216b<x>"} {
		if got, _ := tok.Encode(text); slices.Contains(got, 29) {
			t.Errorf("%q: got %v, want <x> glued to the word", text, got)
		}
	}
}

// An added token matched after normalization is normalized itself, as
// HuggingFace's tokenizers do: "<Y>" under a lower-casing normalizer.
func TestNormalizedAddedToken(t *testing.T) {
	f := tokenizerFile()
	f["added_tokens"] = append(f["added_tokens"].([]map[string]any), map[string]any{
		"id": 29, "content": "<Y>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": true,
	})
	got, _ := loadTokenizer(t, f).Encode("THE <Y> FOX")
	if want := []int32{2, 5, 29, 8, 3}; !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestLoadErrors(t *testing.T) {
	cases := []struct {
		name   string
		modify func(map[string]any)
		want   string
	}{
		{"bpe model", func(f map[string]any) { f["model"].(map[string]any)["type"] = "BPE" }, `"BPE"`},
		{"unk missing", func(f map[string]any) { f["model"].(map[string]any)["unk_token"] = "<unk>" }, "<unk>"},
		{"byte level", func(f map[string]any) { f["pre_tokenizer"] = map[string]any{"type": "ByteLevel"} }, `"ByteLevel"`},
		{"roberta", func(f map[string]any) { f["post_processor"] = map[string]any{"type": "RobertaProcessing"} }, `"RobertaProcessing"`},
		{"precompiled", func(f map[string]any) { f["normalizer"] = map[string]any{"type": "Precompiled"} }, `"Precompiled"`},
		{"no model", func(f map[string]any) { delete(f, "model") }, "no model"},
	}
	for _, c := range cases {
		f := tokenizerFile()
		c.modify(f)
		_, err := Load(writeTokenizer(t, f))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want it to mention %s", c.name, err, c.want)
		}
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.json")); err == nil {
		t.Error("Load of a missing file succeeded")
	}
	if _, err := Parse([]byte("{not json")); err == nil {
		t.Error("Parse of broken JSON succeeded")
	}
}

func TestInvalidUTF8(t *testing.T) {
	tok := loadTokenizer(t, tokenizerFile())
	if _, err := tok.Encode("fox\xff"); !errors.Is(err, ErrInvalidUTF8) {
		t.Errorf("err = %v, want ErrInvalidUTF8", err)
	}
}

func FuzzEncode(f *testing.F) {
	for _, s := range []string{"The quick brown fox.", "[MASK]", "中文$", "\x00\u200b", "İı", "unaffable!!", "##s"} {
		f.Add(s)
	}
	tok := loadTokenizer(f, tokenizerFile()).WithMaxLength(16)
	f.Fuzz(func(t *testing.T, text string) {
		ids, err := tok.Encode(text)
		if err != nil {
			if !errors.Is(err, ErrInvalidUTF8) {
				t.Fatalf("Encode(%q): unexpected error %v", text, err)
			}
			return
		}
		if len(ids) < 2 || len(ids) > 16 || ids[0] != 2 || ids[len(ids)-1] != 3 {
			t.Fatalf("Encode(%q) = %v: want [CLS] … [SEP] within 16 tokens", text, ids)
		}
		for _, id := range ids {
			if id < 0 || int(id) >= len(testVocab) {
				t.Fatalf("Encode(%q) produced id %d outside the vocab", text, id)
			}
		}
	})
}
