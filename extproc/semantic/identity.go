package semantic

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"
)

// ErrNotSemantic marks a request the semantic cache must not answer: an
// embeddings or KServe call, a batch of prompts, a message with images, or a
// body that is not the JSON of a chat or completion request. It is not a
// client error; the request simply goes on to the exact cache's verdict.
var ErrNotSemantic = errors.New("semantic: request is not semantically cacheable")

// Identity is what the semantic cache knows about a request: the text whose
// meaning is compared, and a hash of everything else that changes the answer.
type Identity struct {
	// Kind is "chat" or "completion".
	Kind string
	// Model is the body's model field.
	Model string
	// Text is the question: the last user message of a chat, or the prompt
	// of a completion.
	Text string
	// Context is the hex SHA-256 of the canonical JSON of the body with
	// Text taken out: system prompt, earlier turns, model, sampling
	// parameters, tools and response format all count, exactly.
	Context string
}

// fieldsWithoutEffect are top-level fields that never change the answer, so
// two requests that differ only in them share a scope. Everything else counts.
var fieldsWithoutEffect = []string{"user", "metadata", "store"}

// ParseIdentity reads the identity of a request to path (query string
// allowed) with the given JSON body. It returns an error wrapping
// ErrNotSemantic for anything that must not be semantically cached.
func ParseIdentity(path string, body []byte) (Identity, error) {
	if i := strings.IndexAny(path, "?#"); i >= 0 {
		path = path[:i]
	}
	var kind string
	switch {
	case strings.HasSuffix(path, "/v1/chat/completions"):
		kind = "chat"
	case strings.HasSuffix(path, "/v1/completions"):
		kind = "completion"
	default:
		return Identity{}, fmt.Errorf("%w: path %q", ErrNotSemantic, path)
	}
	if !utf8.Valid(body) {
		return Identity{}, fmt.Errorf("%w: body is not valid UTF-8", ErrNotSemantic)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var doc map[string]any
	if err := dec.Decode(&doc); err != nil {
		return Identity{}, fmt.Errorf("%w: body: %v", ErrNotSemantic, err)
	}
	if dec.More() {
		return Identity{}, fmt.Errorf("%w: body has data after the JSON object", ErrNotSemantic)
	}
	model, _ := doc["model"].(string)
	id := Identity{Kind: kind, Model: model}
	var err error
	if kind == "chat" {
		id.Text, err = takeLastUserMessage(doc)
	} else {
		id.Text, err = takePrompt(doc)
	}
	if err != nil {
		return Identity{}, err
	}
	if strings.TrimSpace(id.Text) == "" {
		return Identity{}, fmt.Errorf("%w: empty question text", ErrNotSemantic)
	}
	for _, f := range fieldsWithoutEffect {
		delete(doc, f)
	}
	canon, err := json.Marshal(canonical(doc))
	if err != nil {
		return Identity{}, fmt.Errorf("%w: %v", ErrNotSemantic, err)
	}
	sum := sha256.Sum256(append([]byte(kind+"\x00"), canon...))
	id.Context = hex.EncodeToString(sum[:])
	return id, nil
}

// takeLastUserMessage returns the text of the last user message and puts a
// placeholder in its place, so the rest of the conversation stays in the
// context hash, in order.
func takeLastUserMessage(doc map[string]any) (string, error) {
	msgs, ok := doc["messages"].([]any)
	if !ok || len(msgs) == 0 {
		return "", fmt.Errorf("%w: no messages", ErrNotSemantic)
	}
	for i := len(msgs) - 1; i >= 0; i-- {
		m, ok := msgs[i].(map[string]any)
		if !ok {
			return "", fmt.Errorf("%w: message %d is not an object", ErrNotSemantic, i)
		}
		if m["role"] != "user" {
			continue
		}
		text, err := contentText(m["content"])
		if err != nil {
			return "", err
		}
		q := make(map[string]any, len(m))
		for k, v := range m {
			q[k] = v
		}
		q["content"] = questionPlaceholder
		msgs[i] = q
		return text, nil
	}
	return "", fmt.Errorf("%w: no user message", ErrNotSemantic)
}

// questionPlaceholder stands for the compared text inside the context hash.
const questionPlaceholder = "\x00question"

// contentText accepts a string or an array of text parts; any other part
// (an image, audio, a file) carries meaning the embedding does not see.
func contentText(content any) (string, error) {
	switch c := content.(type) {
	case string:
		return c, nil
	case []any:
		var sb strings.Builder
		for _, p := range c {
			part, ok := p.(map[string]any)
			if !ok || part["type"] != "text" {
				return "", fmt.Errorf("%w: content part other than text", ErrNotSemantic)
			}
			// Only type and text are read, and the part is left out of the
			// context; another key ("Text", which Go's encoding/json would
			// read as text) could change the answer unseen.
			if len(part) != 2 {
				return "", fmt.Errorf("%w: text part with keys other than type and text", ErrNotSemantic)
			}
			t, ok := part["text"].(string)
			if !ok {
				return "", fmt.Errorf("%w: text part without text", ErrNotSemantic)
			}
			if sb.Len() > 0 {
				sb.WriteByte('\n')
			}
			sb.WriteString(t)
		}
		return sb.String(), nil
	default:
		return "", fmt.Errorf("%w: message content is neither a string nor parts", ErrNotSemantic)
	}
}

// takePrompt returns a completion's single prompt; a batch of prompts or
// token ids has no one question.
func takePrompt(doc map[string]any) (string, error) {
	var text string
	switch p := doc["prompt"].(type) {
	case string:
		text = p
	case []any:
		if len(p) != 1 {
			return "", fmt.Errorf("%w: %d prompts", ErrNotSemantic, len(p))
		}
		s, ok := p[0].(string)
		if !ok {
			return "", fmt.Errorf("%w: prompt is not text", ErrNotSemantic)
		}
		text = s
	default:
		return "", fmt.Errorf("%w: no text prompt", ErrNotSemantic)
	}
	doc["prompt"] = questionPlaceholder
	return text, nil
}

// canonical rewrites numbers to one spelling (1.0 and 1 are the same
// temperature); encoding/json already sorts object keys.
func canonical(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = canonical(e)
		}
		return x
	case []any:
		for i, e := range x {
			x[i] = canonical(e)
		}
		return x
	case json.Number:
		if !strings.ContainsAny(string(x), ".eE") {
			// An integer keeps its digits: seeds above 2^53 differ only
			// past float64's precision.
			return x
		}
		if f, err := strconv.ParseFloat(string(x), 64); err == nil {
			if f == math.Trunc(f) && math.Abs(f) < 1<<53 {
				return json.Number(strconv.FormatInt(int64(f), 10))
			}
			return json.Number(strconv.FormatFloat(f, 'g', -1, 64))
		}
		return x
	default:
		return v
	}
}
