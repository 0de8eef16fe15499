package wordpiece

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
)

// defaultMaxWordChars is the HuggingFace default for max_input_chars_per_word.
const defaultMaxWordChars = 100

type fileJSON struct {
	Truncation *struct {
		Direction string `json:"direction"`
		MaxLength int    `json:"max_length"`
	} `json:"truncation"`
	AddedTokens   []addedTokenJSON `json:"added_tokens"`
	Normalizer    json.RawMessage  `json:"normalizer"`
	PreTokenizer  json.RawMessage  `json:"pre_tokenizer"`
	PostProcessor json.RawMessage  `json:"post_processor"`
	Model         json.RawMessage  `json:"model"`
}

type addedTokenJSON struct {
	ID         int32  `json:"id"`
	Content    string `json:"content"`
	SingleWord bool   `json:"single_word"`
	LStrip     bool   `json:"lstrip"`
	RStrip     bool   `json:"rstrip"`
	Normalized bool   `json:"normalized"`
}

type modelJSON struct {
	Type                    string           `json:"type"`
	UnkToken                string           `json:"unk_token"`
	ContinuingSubwordPrefix *string          `json:"continuing_subword_prefix"`
	MaxInputCharsPerWord    *int             `json:"max_input_chars_per_word"`
	Vocab                   map[string]int32 `json:"vocab"`
}

// componentJSON is any normalizer, pre-tokenizer or post-processor: the
// fields of the kinds this package supports, picked by Type.
type componentJSON struct {
	Type string `json:"type"`
	// Sequence
	Normalizers   []json.RawMessage `json:"normalizers"`
	PreTokenizers []json.RawMessage `json:"pretokenizers"`
	// BertNormalizer
	CleanText          *bool `json:"clean_text"`
	HandleChineseChars *bool `json:"handle_chinese_chars"`
	StripAccents       *bool `json:"strip_accents"`
	Lowercase          *bool `json:"lowercase"`
	// BertProcessing
	Cls []json.RawMessage `json:"cls"`
	Sep []json.RawMessage `json:"sep"`
	// TemplateProcessing
	Single        []templatePieceJSON            `json:"single"`
	SpecialTokens map[string]templateSpecialJSON `json:"special_tokens"`
}

type templatePieceJSON struct {
	SpecialToken *struct {
		ID string `json:"id"`
	} `json:"SpecialToken"`
	Sequence *struct {
		ID string `json:"id"`
	} `json:"Sequence"`
}

type templateSpecialJSON struct {
	IDs []int32 `json:"ids"`
}

// Parse builds a Tokenizer from the contents of a tokenizer.json file.
func Parse(data []byte) (*Tokenizer, error) {
	var f fileJSON
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("not a tokenizer.json: %w", err)
	}
	t := &Tokenizer{}
	if err := t.parseModel(f.Model); err != nil {
		return nil, err
	}
	norms, err := parseNormalizer(f.Normalizer)
	if err != nil {
		return nil, err
	}
	t.normalizers = norms
	if t.pretokenize, err = parsePreTokenizer(f.PreTokenizer); err != nil {
		return nil, err
	}
	if t.prefixIDs, t.suffixIDs, err = parsePostProcessor(f.PostProcessor); err != nil {
		return nil, err
	}
	if f.Truncation != nil {
		t.maxLength = max(f.Truncation.MaxLength, 0)
		switch f.Truncation.Direction {
		case "", "Right":
		case "Left":
			t.truncateLeft = true
		default:
			return nil, fmt.Errorf("unsupported truncation direction %q", f.Truncation.Direction)
		}
	}
	for _, a := range f.AddedTokens {
		if a.Content == "" {
			continue
		}
		content := a.Content
		if a.Normalized {
			// Matched in normalized text, so normalized too, as HuggingFace
			// does ("<Y>" under a lower-casing normalizer is "<y>").
			for _, normalize := range t.normalizers {
				content = normalize(content)
			}
			if content == "" {
				continue
			}
		}
		t.added = append(t.added, addedToken{
			content: content, id: a.ID, singleWord: a.SingleWord,
			lstrip: a.LStrip, rstrip: a.RStrip, normalized: a.Normalized,
		})
	}
	// Longest first, so that at one position the longest token wins.
	sort.SliceStable(t.added, func(i, j int) bool { return len(t.added[i].content) > len(t.added[j].content) })
	return t, nil
}

func (t *Tokenizer) parseModel(raw json.RawMessage) error {
	if isNull(raw) {
		return errors.New("tokenizer.json has no model")
	}
	var m modelJSON
	if err := json.Unmarshal(raw, &m); err != nil {
		return fmt.Errorf("model: %w", err)
	}
	if m.Type != "WordPiece" {
		return fmt.Errorf("unsupported tokenizer model type %q: only WordPiece (BERT) tokenizers are supported", m.Type)
	}
	if len(m.Vocab) == 0 {
		return errors.New("WordPiece model has an empty vocab")
	}
	unk, ok := m.Vocab[m.UnkToken]
	if !ok {
		return fmt.Errorf("WordPiece unk_token %q is not in the vocab", m.UnkToken)
	}
	t.vocab, t.unkID = m.Vocab, unk
	t.prefix = "##"
	if m.ContinuingSubwordPrefix != nil {
		t.prefix = *m.ContinuingSubwordPrefix
	}
	t.maxWordChars = defaultMaxWordChars
	if m.MaxInputCharsPerWord != nil {
		t.maxWordChars = *m.MaxInputCharsPerWord
	}
	return nil
}

func parseNormalizer(raw json.RawMessage) ([]func(string) string, error) {
	if isNull(raw) {
		return nil, nil
	}
	var c componentJSON
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, fmt.Errorf("normalizer: %w", err)
	}
	switch c.Type {
	case "BertNormalizer":
		return []func(string) string{newBertNormalizer(c).normalize}, nil
	case "Sequence":
		var out []func(string) string
		for _, sub := range c.Normalizers {
			fns, err := parseNormalizer(sub)
			if err != nil {
				return nil, err
			}
			out = append(out, fns...)
		}
		return out, nil
	}
	if fn, ok := simpleNormalizers[c.Type]; ok {
		return []func(string) string{fn}, nil
	}
	return nil, fmt.Errorf("unsupported normalizer type %q", c.Type)
}

func parsePreTokenizer(raw json.RawMessage) (bool, error) {
	if isNull(raw) {
		return false, nil
	}
	var c componentJSON
	if err := json.Unmarshal(raw, &c); err != nil {
		return false, fmt.Errorf("pre_tokenizer: %w", err)
	}
	switch c.Type {
	case "BertPreTokenizer":
		return true, nil
	case "Sequence":
		// A Sequence of only BertPreTokenizers splits the same as one.
		if len(c.PreTokenizers) == 0 {
			return false, nil
		}
		for _, sub := range c.PreTokenizers {
			if _, err := parsePreTokenizer(sub); err != nil {
				return false, err
			}
		}
		return true, nil
	}
	return false, fmt.Errorf("unsupported pre_tokenizer type %q: only BertPreTokenizer is supported", c.Type)
}

func parsePostProcessor(raw json.RawMessage) (prefix, suffix []int32, err error) {
	if isNull(raw) {
		return nil, nil, nil
	}
	var c componentJSON
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, nil, fmt.Errorf("post_processor: %w", err)
	}
	switch c.Type {
	case "BertProcessing":
		cls, err := processingToken(c.Cls, "cls")
		if err != nil {
			return nil, nil, err
		}
		sep, err := processingToken(c.Sep, "sep")
		if err != nil {
			return nil, nil, err
		}
		return []int32{cls}, []int32{sep}, nil
	case "TemplateProcessing":
		seenSequence := false
		for _, p := range c.Single {
			switch {
			case p.Sequence != nil:
				if seenSequence {
					return nil, nil, errors.New("TemplateProcessing single template has two sequences")
				}
				seenSequence = true
			case p.SpecialToken != nil:
				st, ok := c.SpecialTokens[p.SpecialToken.ID]
				if !ok {
					return nil, nil, fmt.Errorf("TemplateProcessing special token %q has no entry in special_tokens", p.SpecialToken.ID)
				}
				if seenSequence {
					suffix = append(suffix, st.IDs...)
				} else {
					prefix = append(prefix, st.IDs...)
				}
			default:
				return nil, nil, errors.New("TemplateProcessing single template piece is neither SpecialToken nor Sequence")
			}
		}
		if !seenSequence {
			return nil, nil, errors.New("TemplateProcessing single template has no sequence")
		}
		return prefix, suffix, nil
	}
	return nil, nil, fmt.Errorf("unsupported post_processor type %q: only BertProcessing and TemplateProcessing are supported", c.Type)
}

// processingToken decodes BertProcessing's ["[CLS]", 101] pairs.
func processingToken(pair []json.RawMessage, field string) (int32, error) {
	var id int32
	if len(pair) != 2 || json.Unmarshal(pair[1], &id) != nil {
		return 0, fmt.Errorf("BertProcessing %s must be [token, id]", field)
	}
	return id, nil
}

func isNull(raw json.RawMessage) bool {
	raw = bytes.TrimSpace(raw)
	return len(raw) == 0 || bytes.Equal(raw, []byte("null"))
}
