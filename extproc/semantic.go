package extproc

import (
	"context"
	"net/http"
	"time"

	"github.com/infergate/infergate/config"
	"github.com/infergate/infergate/extproc/cache"
	"github.com/infergate/infergate/extproc/semantic"
	"github.com/infergate/infergate/policy"
)

// WithSemantic makes the server use c as its semantic cache instead of
// building one from the config's semantic section; the server runs c.Run
// while it serves, so the caller must not.
func WithSemantic(c *semantic.Cache) Option { return func(s *Server) { s.sem = c } }

// newSemantic builds the semantic cache of cfg, embedding with the engine at
// cfg.Semantic.EngineURL and, with Redis configured, sharing entries with
// the other replicas through it.
func (s *Server) newSemantic(cfg config.ExtProc) (*semantic.Cache, error) {
	sc := cfg.Semantic
	// One idle connection per embedding call that may be in flight, so a
	// burst of lookups does not open and close connections to the engine.
	client := &http.Client{Transport: &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		MaxIdleConns:        sc.MaxInFlight,
		MaxIdleConnsPerHost: sc.MaxInFlight,
		IdleConnTimeout:     90 * time.Second,
	}}
	sem, err := semantic.New(semantic.Config{
		EmbeddingModel: sc.Model,
		MemoryBytes:    int64(sc.MemoryMB) << 20,
		MaxTTL:         cfg.Cache.MaxTTL,
		HNSWThreshold:  sc.HNSWThreshold,
		HNSW:           semantic.HNSWParams{M: sc.HNSWM, EfConstruction: sc.HNSWEfConstruction, EfSearch: sc.HNSWEfSearch},
		EmbedTimeout:   sc.EmbedTimeout,
		MaxInFlight:    sc.MaxInFlight,
		Synonyms:       sc.SynonymGroups(),
	}, semantic.NewEngineEmbedder(sc.EngineURL, sc.Model, client), s.reg, s.log.With("stage", "semantic"))
	if err != nil {
		return nil, err
	}
	if s.redis != nil {
		sem.ShareVia(s.redis.Client, cfg.Redis.KeyPrefix, cfg.Redis.Timeout)
	}
	return sem, nil
}

type semanticStage struct{ c *semantic.Cache }

func (s semanticStage) Lookup(ctx context.Context, q *Query) (StageHit, bool) {
	// Other routes are not the semantic cache's traffic and stay out of
	// its metrics.
	if q.Policy.Cache != policy.CacheSemantic {
		return StageHit{}, false
	}
	hit, ok := s.c.Lookup(ctx, semantic.Request{Policy: q.Policy, Scope: q.Scope, Path: q.Path, Body: q.Body, ExactKey: string(q.Key)})
	if !ok {
		return StageHit{}, false
	}
	status := hit.Response.Status
	if status == 0 {
		status = 200
	}
	// The semantic cache does not report an entry's age, so no Age is sent.
	e := &cache.Entry{Status: status, Body: hit.Response.Body}
	if !hit.StoredAt.IsZero() {
		e.StoredAt, e.TTL = hit.StoredAt, hit.Expires.Sub(hit.StoredAt)
	}
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
	if q.Policy.Cache != policy.CacheSemantic {
		return
	}
	resp := semantic.StoredResponse{Status: e.Status, Body: e.Body}
	for _, h := range e.Header {
		resp.Headers = append(resp.Headers, [2]string{h.Name, h.Value})
	}
	// A request the semantic cache cannot index (not a chat or completion,
	// say) is its decision; the exact entry is stored regardless.
	// e.TTL is the route's TTL already capped by the origin's max-age.
	p := q.Policy
	p.TTL = e.TTL
	_ = s.c.Store(ctx, semantic.Request{Policy: p, Scope: q.Scope, Path: q.Path, Body: q.Body, ExactKey: string(q.Key)}, resp)
}
