package extproc

import (
	"context"

	"github.com/infergate/infergate/extproc/cache"
	"github.com/infergate/infergate/extproc/semantic"
)

// WithSemantic plugs the semantic cache in as the Stage after the exact
// cache, on routes whose policy cache mode is "semantic".
func WithSemantic(c *semantic.Cache) Option { return WithStage(semanticStage{c: c}) }

type semanticStage struct{ c *semantic.Cache }

func (s semanticStage) Lookup(ctx context.Context, q *Query) (StageHit, bool) {
	hit, ok := s.c.Lookup(ctx, semantic.Request{Policy: q.Policy, Scope: q.Scope, Path: q.Path, Body: q.Body})
	if !ok {
		return StageHit{}, false
	}
	status := hit.Response.Status
	if status == 0 {
		status = 200
	}
	// The semantic cache does not report an entry's age, so no Age is sent.
	e := &cache.Entry{Status: status, Body: hit.Response.Body}
	for _, h := range hit.Response.Headers {
		e.Header = append(e.Header, cache.Header{Name: h[0], Value: h[1]})
	}
	var extra []cache.Header
	for _, h := range hit.Headers() {
		extra = append(extra, cache.Header{Name: h[0], Value: h[1]})
	}
	return StageHit{Entry: e, Header: extra}, true
}

func (s semanticStage) Store(ctx context.Context, q *Query, e *cache.Entry) {
	resp := semantic.StoredResponse{Status: e.Status, Body: e.Body}
	for _, h := range e.Header {
		resp.Headers = append(resp.Headers, [2]string{h.Name, h.Value})
	}
	// A request the semantic cache cannot index (not a chat or completion,
	// say) is its decision; the exact entry is stored regardless.
	_ = s.c.Store(ctx, semantic.Request{Policy: q.Policy, Scope: q.Scope, Path: q.Path, Body: q.Body}, resp)
}
