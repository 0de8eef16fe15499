package semantic

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/infergate/infergate/engine/model"
)

// EngineEmbedder calls the engine's OpenAI-compatible /v1/embeddings, so
// that cache lookups are batched on the accelerator with all other work.
// After the engine answers 429 or 503 it is left alone for the Retry-After
// period (1s when absent, at most 30s): a cache lookup must never add to
// an overload.
type EngineEmbedder struct {
	url    string
	model  string
	client *http.Client
	// quietUntil is the unix-nano time before which calls are refused
	// with ErrSaturated.
	quietUntil atomic.Int64
}

// NewEngineEmbedder returns an embedder for the engine at baseURL
// ("http://127.0.0.1:8080") and the named embedding model. A nil client
// means http.DefaultClient; the cache bounds each call with its context.
func NewEngineEmbedder(baseURL, modelName string, client *http.Client) *EngineEmbedder {
	if client == nil {
		client = http.DefaultClient
	}
	return &EngineEmbedder{url: strings.TrimSuffix(baseURL, "/") + "/v1/embeddings", model: modelName, client: client}
}

type embeddingsRequest struct {
	Model string   `json:"model"`
	Input []string `json:"input"`
	// Truncate is false: the engine refuses a question longer than its
	// model reads, instead of embedding only its beginning.
	Truncate bool `json:"truncate"`
}

type embeddingsResponse struct {
	Data []struct {
		Index     int       `json:"index"`
		Embedding []float32 `json:"embedding"`
	} `json:"data"`
}

// Embed implements Embedder.
func (e *EngineEmbedder) Embed(ctx context.Context, texts []string) ([][]float32, error) {
	if time.Now().UnixNano() < e.quietUntil.Load() {
		return nil, ErrSaturated
	}
	body, err := json.Marshal(embeddingsRequest{Model: e.model, Input: texts})
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := e.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable:
		e.quietUntil.Store(time.Now().Add(retryAfter(resp.Header.Get("Retry-After"))).UnixNano())
		return nil, fmt.Errorf("%w: engine answered %d", ErrSaturated, resp.StatusCode)
	case resp.StatusCode == http.StatusRequestEntityTooLarge:
		return nil, fmt.Errorf("%w: engine answered 413", ErrTooLong)
	case resp.StatusCode != http.StatusOK:
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, fmt.Errorf("semantic: engine answered %d: %s", resp.StatusCode, bytes.TrimSpace(msg))
	}
	var out embeddingsResponse
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&out); err != nil {
		return nil, fmt.Errorf("semantic: engine response: %w", err)
	}
	if len(out.Data) != len(texts) {
		return nil, fmt.Errorf("semantic: engine returned %d embeddings for %d inputs", len(out.Data), len(texts))
	}
	vecs := make([][]float32, len(texts))
	for _, d := range out.Data {
		if d.Index < 0 || d.Index >= len(texts) || vecs[d.Index] != nil {
			return nil, fmt.Errorf("semantic: engine returned a bad embedding index %d", d.Index)
		}
		vecs[d.Index] = d.Embedding
	}
	return vecs, nil
}

func retryAfter(h string) time.Duration {
	if s, err := strconv.Atoi(strings.TrimSpace(h)); err == nil && s > 0 {
		return min(time.Duration(s)*time.Second, 30*time.Second)
	}
	return time.Second
}

// EncoderEmbedder embeds in-process with a model.Encoder, refusing an
// input over the encoder's MaxTokens as EngineEmbedder does. The
// evaluation (infergate bench semantic) uses it to measure the encoder
// itself.
type EncoderEmbedder struct {
	Encoder model.Encoder
}

// Embed implements Embedder.
func (e EncoderEmbedder) Embed(ctx context.Context, texts []string) ([][]float32, error) {
	batch := make([][]int32, len(texts))
	for i, t := range texts {
		ids, err := e.Encoder.Tokenize(t)
		if err != nil {
			return nil, err
		}
		if n := e.Encoder.MaxTokens(); n > 0 && len(ids) > n {
			return nil, fmt.Errorf("%w: input %d has %d tokens, over %d", ErrTooLong, i, len(ids), n)
		}
		batch[i] = ids
	}
	if len(batch) == 0 {
		return nil, errors.New("semantic: nothing to embed")
	}
	return e.Encoder.Embed(ctx, batch)
}
