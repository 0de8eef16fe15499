// Package canonical turns a request body into the bytes the exact cache
// keys on, so that requests that differ only in key order, whitespace or
// per-caller fields share one entry, and reads the few request fields the
// ext_proc server decides on (model, determinism).
package canonical

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Volatile lists the top-level fields dropped from the key: they identify
// the caller, not the answer. (stream_options is not one: include_usage
// adds a usage event to a stream, which some clients do not expect.)
var Volatile = []string{"user"}

// maxDepth bounds nesting so a hostile body cannot make the canonicaliser
// recurse without end; deeper bodies are keyed on their raw bytes.
const maxDepth = 128

// Request is what the server learns from one request body.
type Request struct {
	// Canonical is the key material: canonical JSON for a JSON body, the raw
	// bytes otherwise.
	Canonical []byte
	// JSON reports whether the body was one well-formed JSON value with no
	// duplicate keys.
	JSON bool
	// Model is the top-level "model" string, if any.
	Model string
	// Stream is the top-level "stream": true of the OpenAI APIs.
	Stream bool
	// Deterministic is false when the same request may rightly get a
	// different answer: several choices (n > 1), or sampling (temperature
	// above 0, which is the default of generative APIs) without a seed.
	Deterministic bool
	// Ambiguous says why parsers may read the body differently, or is
	// empty. Go's encoding/json keeps the last of duplicate keys and
	// matches field names regardless of case, so {"model":"a","model":"b"}
	// or {"Model":"b"} would be routed and cached as one model and served
	// as another.
	Ambiguous string
}

// interpreted lists the top-level fields Parse reads; a key that differs
// from one of them only in case makes a body ambiguous.
var interpreted = []string{"model", "stream", "temperature", "seed", "n", "messages", "prompt"}

// Parse canonicalises body. It never fails: a body that is not canonical
// JSON is keyed on its bytes and reported with JSON false.
func Parse(body []byte) Request {
	canon, top, err := canonicalize(body)
	if errors.Is(err, errDuplicateKey) {
		return Request{Canonical: body, Ambiguous: err.Error()}
	}
	if err != nil {
		return Request{Canonical: body, Deterministic: true}
	}
	r := Request{Canonical: canon, JSON: true, Deterministic: true}
	if top == nil {
		return r
	}
	if top.ambiguous != "" {
		r.Ambiguous, r.Deterministic = top.ambiguous, false
		return r
	}
	if m, ok := top.strings["model"]; ok {
		r.Model = m
	}
	r.Stream = top.bools["stream"]
	generative := top.has["messages"] || top.has["prompt"]
	temperature, hasTemperature := top.numbers["temperature"]
	if !hasTemperature && generative {
		temperature = 1
	}
	_, hasSeed := top.numbers["seed"]
	if temperature > 0 && !hasSeed {
		r.Deterministic = false
	}
	if n, ok := top.numbers["n"]; ok && n > 1 {
		r.Deterministic = false
	}
	return r
}

// Canonicalize returns the canonical JSON of body: object keys sorted,
// insignificant whitespace removed, strings re-escaped one way, volatile
// top-level fields dropped. Numbers keep their text. It fails on anything
// but exactly one JSON value, and on duplicate keys, whose meaning differs
// between parsers.
func Canonicalize(body []byte) ([]byte, error) {
	canon, _, err := canonicalize(body)
	return canon, err
}

// topFields holds the scalar top-level fields Parse needs, collected during
// the one pass over the body.
type topFields struct {
	has     map[string]bool
	strings map[string]string
	numbers map[string]float64
	bools   map[string]bool
	// ambiguous names the first key that differs from an interpreted
	// field only in case.
	ambiguous string
}

type duplicateKeyError struct{ key string }

func (e *duplicateKeyError) Error() string { return fmt.Sprintf("duplicate object key %q", e.key) }

func (e *duplicateKeyError) Is(target error) bool { return target == errDuplicateKey }

var errDuplicateKey = errors.New("duplicate object key")

func canonicalize(body []byte) ([]byte, *topFields, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	c := canonicalizer{dec: dec, out: make([]byte, 0, len(body))}
	out, err := c.value(0)
	if err != nil {
		return nil, nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, nil, errors.New("data after the JSON value")
	}
	return out, c.top, nil
}

type canonicalizer struct {
	dec *json.Decoder
	out []byte
	top *topFields
}

// value appends the canonical form of the next value to c.out and returns
// the buffer.
func (c *canonicalizer) value(depth int) ([]byte, error) {
	if depth > maxDepth {
		return nil, fmt.Errorf("nested deeper than %d", maxDepth)
	}
	tok, err := c.dec.Token()
	if err != nil {
		return nil, err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			return c.object(depth)
		case '[':
			return c.array(depth)
		}
		return nil, fmt.Errorf("unexpected %q", t)
	case string:
		c.out = appendString(c.out, t)
	case json.Number:
		c.out = append(c.out, t...)
	case bool:
		c.out = strconv.AppendBool(c.out, t)
	case nil:
		c.out = append(c.out, "null"...)
	}
	return c.out, nil
}

type member struct {
	key   string
	value []byte
}

func (c *canonicalizer) object(depth int) ([]byte, error) {
	var members []member
	var top *topFields
	if depth == 0 {
		top = &topFields{has: map[string]bool{}, strings: map[string]string{}, numbers: map[string]float64{}, bools: map[string]bool{}}
		c.top = top
	}
	seen := map[string]bool{}
	outer := c.out
	for c.dec.More() {
		tok, err := c.dec.Token()
		if err != nil {
			return nil, err
		}
		key, ok := tok.(string)
		if !ok {
			return nil, errors.New("object key is not a string")
		}
		if seen[key] {
			return nil, &duplicateKeyError{key}
		}
		seen[key] = true
		// Each member is rendered into its own buffer so members can be
		// sorted by key afterwards.
		c.out = nil
		v, err := c.value(depth + 1)
		if err != nil {
			return nil, err
		}
		if top != nil {
			top.record(key, v)
			if slices.Contains(Volatile, key) {
				continue
			}
		}
		members = append(members, member{key: key, value: v})
	}
	if _, err := c.dec.Token(); err != nil {
		return nil, err
	}
	slices.SortFunc(members, func(a, b member) int { return strings.Compare(a.key, b.key) })
	out := append(outer, '{')
	for i, m := range members {
		if i > 0 {
			out = append(out, ',')
		}
		out = appendString(out, m.key)
		out = append(out, ':')
		out = append(out, m.value...)
	}
	c.out = append(out, '}')
	return c.out, nil
}

func (c *canonicalizer) array(depth int) ([]byte, error) {
	c.out = append(c.out, '[')
	for first := true; c.dec.More(); first = false {
		if !first {
			c.out = append(c.out, ',')
		}
		if _, err := c.value(depth + 1); err != nil {
			return nil, err
		}
	}
	if _, err := c.dec.Token(); err != nil {
		return nil, err
	}
	c.out = append(c.out, ']')
	return c.out, nil
}

// record keeps the top-level scalars Parse decides on; v is already canonical.
func (t *topFields) record(key string, v []byte) {
	t.has[key] = true
	if t.ambiguous == "" && !slices.Contains(interpreted, key) {
		if i := slices.IndexFunc(interpreted, func(f string) bool { return strings.EqualFold(f, key) }); i >= 0 {
			t.ambiguous = fmt.Sprintf("field %q is %q in another case; write it %q", key, interpreted[i], interpreted[i])
		}
	}
	switch {
	case len(v) > 0 && v[0] == '"':
		var s string
		if json.Unmarshal(v, &s) == nil {
			t.strings[key] = s
		}
	case string(v) == "true":
		t.bools[key] = true
	default:
		if f, err := strconv.ParseFloat(string(v), 64); err == nil {
			t.numbers[key] = f
		}
	}
}

const hexDigits = "0123456789abcdef"

// appendString writes s as a JSON string with one escaping for every input
// spelling: only the quote, the backslash and control characters are
// escaped. The decoder has already replaced invalid UTF-8.
func appendString(out []byte, s string) []byte {
	out = append(out, '"')
	for i := 0; i < len(s); {
		b := s[i]
		if b < utf8.RuneSelf {
			switch {
			case b == '"' || b == '\\':
				out = append(out, '\\', b)
			case b < 0x20:
				out = append(out, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xf])
			default:
				out = append(out, b)
			}
			i++
			continue
		}
		_, size := utf8.DecodeRuneInString(s[i:])
		out = append(out, s[i:i+size]...)
		i += size
	}
	return append(out, '"')
}
