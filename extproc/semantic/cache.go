// Package semantic is the ext_proc server's second cache stage: after the
// exact cache misses, it answers a chat or completion request with the
// stored response of an earlier request that asks the same thing in other
// words. The question text is embedded with the engine's /v1/embeddings;
// everything else that changes the answer (tenant, route, model, system
// prompt, earlier turns, sampling parameters, tools) must match exactly
// through the scope key. A candidate above the route's similarity threshold
// is served only if a guard finds no difference a sentence embedding is
// known to blur: numbers, units, dates, negation, names, their order.
//
// Embedding failures, timeouts and a saturated engine make a lookup a miss,
// never an error. Entries expire by TTL, a global memory bound evicts the
// least recently used, and with Redis configured every replica's index
// holds the entries all replicas stored.
package semantic

import (
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/infergate/infergate/policy"
)

// Embedder turns texts into embedding vectors, one per text, in order.
type Embedder interface {
	Embed(ctx context.Context, texts []string) ([][]float32, error)
}

// ErrSaturated is returned by an Embedder that is shedding load; the cache
// counts the lookup as skipped rather than failed.
var ErrSaturated = errors.New("semantic: embedding engine saturated")

// ErrTooLong is returned by an Embedder for a text longer than its model
// reads: embedding only the beginning would make questions that differ at
// the end look the same, so such a question is not semantically cached.
var ErrTooLong = errors.New("semantic: text longer than the embedding model reads")

// Config tunes the cache; the zero value gets the defaults listed.
type Config struct {
	// MemoryBytes bounds every entry's vector, response, text and index
	// links together; past it the least recently used entries are evicted.
	// Default 64 MiB.
	MemoryBytes int64
	// MaxTTL caps every route's TTL. Default 1h.
	MaxTTL time.Duration
	// HNSWThreshold is the number of entries in one scope past which the
	// scope's exact search is replaced by an HNSW graph. Default 2048.
	HNSWThreshold int
	// HNSW tunes the graph.
	HNSW HNSWParams
	// Candidates is how many nearest entries above the threshold are put
	// to the guard, most similar first. Default 4.
	Candidates int
	// MaxTextRunes is the longest question text sent to be embedded; a
	// sentence encoder blurs long inputs, so longer ones are not
	// semantically cached. Texts over the model's token limit are not
	// either, however short (see ErrTooLong). Default 1000.
	MaxTextRunes int
	// EmbedTimeout is the embedding budget of one lookup; the request's own
	// deadline applies when it is sooner. Default 150ms.
	EmbedTimeout time.Duration
	// MaxInFlight bounds concurrent embedding calls; a lookup that finds
	// them all busy is skipped. Default 64.
	MaxInFlight int
	// EmbeddingModel names the model the Embedder uses; it is part of every
	// scope.
	EmbeddingModel string
	// Synonyms are groups of words the guard treats as one topic word
	// ("thaw defrost"), added to its built-in ones; each word lower-case.
	Synonyms [][]string
	// GuardOff serves any candidate above the threshold. It exists to
	// measure what the guard buys and must stay false in production.
	GuardOff bool
}

func (c *Config) setDefaults() {
	if c.MemoryBytes <= 0 {
		c.MemoryBytes = 64 << 20
	}
	if c.MaxTTL <= 0 {
		c.MaxTTL = time.Hour
	}
	if c.HNSWThreshold <= 0 {
		c.HNSWThreshold = 2048
	}
	c.HNSW.setDefaults()
	if c.Candidates <= 0 {
		c.Candidates = 4
	}
	if c.MaxTextRunes <= 0 {
		c.MaxTextRunes = 1000
	}
	if c.EmbedTimeout <= 0 {
		c.EmbedTimeout = 150 * time.Millisecond
	}
	if c.MaxInFlight <= 0 {
		c.MaxInFlight = 64
	}
}

// Request is one request as the ext_proc server saw it.
type Request struct {
	// Policy is the route's policy; only routes with Cache "semantic" are
	// looked up or stored. Its Route, SemanticThreshold and TTL fields are
	// used; whether tenants share entries is already in Scope.
	Policy policy.Policy
	// Scope is the cache scope the exact cache uses: the tenant, or one
	// shared scope for routes whose cache is shared across tenants. Entries
	// never cross scopes.
	Scope string
	// Path is the request's :path.
	Path string
	// Body is the complete request body.
	Body []byte
	// ExactKey is the request's exact-cache key, so that a purge by that
	// key also removes the answer stored here.
	ExactKey string
}

// StoredResponse is the response kept for a question.
type StoredResponse struct {
	// Status is the HTTP status; 0 means 200.
	Status int
	// Headers are the response headers to replay (content-type and the
	// like), lower-case names.
	Headers [][2]string
	Body    []byte
}

// Hit is a semantic cache hit.
type Hit struct {
	Response StoredResponse
	// Similarity is the cosine similarity of the two questions.
	Similarity float64
	// Question is the stored question the response answered.
	Question string
	// StoredAt and Expires bound the answer's life, for Age and the TTL;
	// StoredAt is zero for an entry shared by a replica that did not say.
	StoredAt time.Time
	Expires  time.Time
}

// Headers are the response headers that mark a semantic hit: the RFC 9211
// Cache-Status and the similarity, so clients and operators can tell a
// paraphrase hit from an exact one.
func (h Hit) Headers() [][2]string {
	return [][2]string{
		{"cache-status", "infergate; hit; detail=semantic"},
		{"x-infergate-similarity", strconv.FormatFloat(h.Similarity, 'f', 2, 64)},
	}
}

// Cache is the semantic cache. It is safe for concurrent use.
type Cache struct {
	cfg      Config
	emb      Embedder
	guard    *guard // nil with GuardOff
	log      *slog.Logger
	met      *metrics
	inFlight chan struct{}
	recent   *vectorMemo
	now      func() time.Time
	share    *sharer        // nil without Redis
	bg       sync.WaitGroup // Stores embedding in the background

	mu      sync.RWMutex
	scopes  map[string]*scope
	entries map[uint64]*entry
	byKey   map[string]*entry
	lru     list.List // *entry, most recently used first
	expiry  expiryHeap
	bytes   int64
	nextID  uint64
}

// scope is the index of one tenant's requests with one exact context.
type scope struct {
	dim  int
	idx  vectorIndex
	hnsw bool
	// build is the graph being built outside the lock to replace idx (a
	// promotion, or a rebuild of a stale graph); nil when none.
	build *indexBuild
}

// indexBuild collects what changes in a scope while its new graph is
// built, to replay on the graph before it replaces the index.
type indexBuild struct {
	changes []indexChange
}

// indexChange is an entry added (vec set) or removed (vec nil).
type indexChange struct {
	id  uint64
	vec []float32
}

type entry struct {
	id       uint64
	key      string // scope and question hash: the same on every replica
	scope    string
	labels   purgeLabels
	question string
	vec      []float32
	resp     StoredResponse
	stored   time.Time
	expires  time.Time
	size     int64
	lruElem  *list.Element
	heapIdx  int
}

// entryOverhead approximates the bookkeeping of one entry (struct, map
// slots, list element, heap slot) for the memory bound.
const entryOverhead = 256

// New returns a cache that embeds with emb and registers its metrics on reg.
func New(cfg Config, emb Embedder, reg prometheus.Registerer, log *slog.Logger) (*Cache, error) {
	cfg.setDefaults()
	met, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Cache{
		cfg:      cfg,
		emb:      emb,
		guard:    newGuard(cfg.Synonyms),
		log:      log,
		met:      met,
		inFlight: make(chan struct{}, cfg.MaxInFlight),
		recent:   newVectorMemo(4096, 10*time.Minute),
		now:      time.Now,
		scopes:   make(map[string]*scope),
		entries:  make(map[uint64]*entry),
		byKey:    make(map[string]*entry),
	}
	if cfg.GuardOff {
		c.guard = nil
	}
	return c, nil
}

// prepared is a request reduced to what the index needs.
type prepared struct {
	scope    string
	question string
	key      string
	labels   purgeLabels
}

func (c *Cache) prepare(req Request) (prepared, error) {
	if req.Policy.Cache != policy.CacheSemantic {
		return prepared{}, fmt.Errorf("%w: route cache mode is %q", ErrNotSemantic, req.Policy.Cache)
	}
	id, err := ParseIdentity(req.Path, req.Body)
	if err != nil {
		return prepared{}, err
	}
	// Vectors of different models are never compared (replicas mid-way
	// through a model change, entries in Redis from before it).
	scope := hashHex(c.cfg.EmbeddingModel, req.Policy.Route, req.Scope, id.Context)
	labels := purgeLabels{Route: req.Policy.Route, Scope: req.Scope, Model: id.Model, Key: req.ExactKey}
	return prepared{scope: scope, question: id.Text, key: hashHex(scope, id.Text), labels: labels}, nil
}

func hashHex(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(strconv.Itoa(len(p))))
		h.Write([]byte{':'})
		h.Write([]byte(p))
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Lookup looks for a stored answer to a paraphrase of req. It never
// fails: anything that prevents a confident answer is a miss.
func (c *Cache) Lookup(ctx context.Context, req Request) (Hit, bool) {
	start := time.Now()
	hit, outcome := c.lookup(ctx, req)
	c.met.lookups.WithLabelValues(outcome).Inc()
	c.met.lookupSeconds.Observe(time.Since(start).Seconds())
	return hit, outcome == outcomeHit
}

// Lookup outcomes, the "outcome" label of infergate_extproc_semantic_lookups_total.
const (
	outcomeHit         = "hit"
	outcomeMiss        = "miss"        // nothing above the threshold
	outcomeRefused     = "refused"     // candidates above the threshold, all refused by the guard
	outcomeEmpty       = "empty"       // nothing stored in the scope: no embedding call made
	outcomeUncacheable = "uncacheable" // not a semantic route or request, or too long
	outcomeEmbedFailed = "embed_failed"
	outcomeSaturated   = "saturated"
)

func (c *Cache) lookup(ctx context.Context, req Request) (Hit, string) {
	p, err := c.prepare(req)
	if err != nil || utf8.RuneCountInString(p.question) > c.cfg.MaxTextRunes {
		return Hit{}, outcomeUncacheable
	}
	c.mu.RLock()
	sc := c.scopes[p.scope]
	c.mu.RUnlock()
	if sc == nil {
		return Hit{}, outcomeEmpty
	}
	vec, outcome := c.embed(ctx, p)
	if vec == nil {
		return Hit{}, outcome
	}
	cands := c.candidates(p.scope, vec)
	if len(cands) > 0 {
		c.met.bestSimilarity.Observe(float64(cands[0].sim))
	}
	best, reason := choose(cands, p.question, req.Policy.SemanticThreshold, c.guard)
	if best == nil {
		if reason != "" {
			c.met.refusals.WithLabelValues(reason).Inc()
			return Hit{}, outcomeRefused
		}
		return Hit{}, outcomeMiss
	}
	c.mu.Lock()
	if e := c.entries[best.id]; e != nil {
		c.lru.MoveToFront(e.lruElem)
	}
	c.mu.Unlock()
	return Hit{Response: best.resp, Similarity: float64(best.sim), Question: best.question, StoredAt: best.stored, Expires: best.expires}, outcomeHit
}

// candidate is a live entry near the query, copied out of the lock.
type candidate struct {
	id       uint64
	sim      float32
	question string
	resp     StoredResponse
	stored   time.Time
	expires  time.Time
}

func (c *Cache) candidates(scopeKey string, vec []float32) []candidate {
	now := c.now()
	c.mu.RLock()
	defer c.mu.RUnlock()
	sc := c.scopes[scopeKey]
	if sc == nil || sc.dim != len(vec) {
		return nil
	}
	// ask for extra neighbours so that expired entries not yet swept do
	// not crowd out live ones
	near := sc.idx.search(vec, c.cfg.Candidates+4)
	out := make([]candidate, 0, c.cfg.Candidates)
	for _, n := range near {
		e := c.entries[n.id]
		if e == nil || !now.Before(e.expires) {
			continue
		}
		out = append(out, candidate{id: e.id, sim: n.sim, question: e.question, resp: e.resp, stored: e.stored, expires: e.expires})
		if len(out) == c.cfg.Candidates {
			break
		}
	}
	return out
}

// choose returns the most similar candidate at or above threshold that g
// lets through (any, when g is nil), or, when there is none, g's reason
// for refusing the best one ("" when no candidate reached the threshold).
func choose(cands []candidate, question string, threshold float64, g *guard) (*candidate, string) {
	reason := ""
	for i := range cands {
		if float64(cands[i].sim) < threshold {
			break
		}
		if g == nil {
			return &cands[i], ""
		}
		r := g.refusal(question, cands[i].question)
		if r == "" {
			return &cands[i], ""
		}
		if reason == "" {
			reason = r
		}
	}
	return nil, reason
}

// embed returns the unit vector of p's question, from the memo of recent
// lookups or from the embedder within the budget.
func (c *Cache) embed(ctx context.Context, p prepared) ([]float32, string) {
	if v := c.recent.get(p.key); v != nil {
		return v, ""
	}
	select {
	case c.inFlight <- struct{}{}:
		defer func() { <-c.inFlight }()
	default:
		return nil, outcomeSaturated
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.EmbedTimeout)
	defer cancel()
	start := time.Now()
	vecs, err := c.emb.Embed(ctx, []string{p.question})
	c.met.embedSeconds.Observe(time.Since(start).Seconds())
	if errors.Is(err, ErrSaturated) {
		return nil, outcomeSaturated
	}
	if errors.Is(err, ErrTooLong) {
		return nil, outcomeUncacheable
	}
	if err == nil && len(vecs) != 1 {
		err = fmt.Errorf("%d embeddings for one input", len(vecs))
	}
	if err != nil {
		c.log.Debug("semantic cache: embedding failed, counting a miss", "error", err)
		return nil, outcomeEmbedFailed
	}
	v, ok := normalize(vecs[0])
	if !ok {
		return nil, outcomeEmbedFailed
	}
	c.recent.put(p.key, v)
	return v, ""
}

// Store keeps resp as the answer to req's question for the route's TTL
// (capped by Config.MaxTTL), and shares it with the other replicas when
// the cache shares through Redis (see ShareVia). It does not wait for the engine:
// when Lookup did not embed the question already (it skips the embedding
// in a scope that is still empty), the embedding runs in the background,
// bounded like lookups' and skipped when the engine is saturated. An error
// says why the request cannot be stored at all; it is never the client's
// concern.
func (c *Cache) Store(ctx context.Context, req Request, resp StoredResponse) error {
	p, ttl, err := c.storable(req)
	if err != nil {
		c.met.stores.WithLabelValues(outcomeUncacheable).Inc()
		return err
	}
	resp = cloneResponse(resp)
	if vec := c.recent.get(p.key); vec != nil {
		c.met.stores.WithLabelValues(c.storeVector(ctx, p, req, resp, vec, ttl)).Inc()
		return nil
	}
	ctx = context.WithoutCancel(ctx)
	c.bg.Go(func() {
		_ = c.storeNow(ctx, p, req, resp, ttl)
	})
	return nil
}

// storeNow embeds and stores, waiting for the embedding.
func (c *Cache) storeNow(ctx context.Context, p prepared, req Request, resp StoredResponse, ttl time.Duration) string {
	vec, outcome := c.embed(ctx, p)
	if vec != nil {
		outcome = c.storeVector(ctx, p, req, resp, vec, ttl)
	}
	c.met.stores.WithLabelValues(outcome).Inc()
	return outcome
}

func (c *Cache) storable(req Request) (prepared, time.Duration, error) {
	p, err := c.prepare(req)
	if err != nil {
		return prepared{}, 0, err
	}
	if utf8.RuneCountInString(p.question) > c.cfg.MaxTextRunes {
		return prepared{}, 0, fmt.Errorf("%w: question longer than %d characters", ErrNotSemantic, c.cfg.MaxTextRunes)
	}
	ttl := min(req.Policy.TTL, c.cfg.MaxTTL)
	if ttl <= 0 {
		return prepared{}, 0, fmt.Errorf("%w: no TTL", ErrNotSemantic)
	}
	return p, ttl, nil
}

// Store outcomes, the "outcome" label of infergate_extproc_semantic_stores_total
// (with uncacheable, embed_failed and saturated as for lookups).
const (
	storeStored   = "stored"
	storeTooLarge = "too_large"
)

func (c *Cache) storeVector(ctx context.Context, p prepared, req Request, resp StoredResponse, vec []float32, ttl time.Duration) string {
	now := c.now()
	e := &entry{key: p.key, scope: p.scope, labels: p.labels, question: p.question, vec: vec, resp: resp, stored: now, expires: now.Add(ttl)}
	if !c.insert(e) {
		return storeTooLarge
	}
	if c.share != nil {
		// the Redis round trip stays off the response path
		ctx = context.WithoutCancel(ctx)
		c.bg.Go(func() { c.share.publish(ctx, e) })
	}
	return storeStored
}

// Wait returns when the background embeddings of earlier Stores are done.
func (c *Cache) Wait() { c.bg.Wait() }

func cloneResponse(r StoredResponse) StoredResponse {
	out := StoredResponse{Status: r.Status, Body: append([]byte(nil), r.Body...)}
	if len(r.Headers) > 0 {
		out.Headers = append([][2]string(nil), r.Headers...)
	}
	return out
}

// insert adds e (replacing an entry with the same key), then sweeps
// expired entries and evicts least recently used ones past the bound.
func (c *Cache) insert(e *entry) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	if !now.Before(e.expires) {
		return false
	}
	if old := c.byKey[e.key]; old != nil {
		c.removeLocked(old)
	}
	sc := c.scopes[e.scope]
	if sc != nil && sc.dim != len(e.vec) {
		// the embedding model changed under the same name: the old vectors
		// cannot be compared with the new ones
		c.dropScopeLocked(e.scope)
		sc = nil
	}
	if sc == nil {
		sc = &scope{dim: len(e.vec), idx: newFlatIndex(len(e.vec))}
		c.scopes[e.scope] = sc
	}
	e.size = int64(4*len(e.vec)+len(e.question)+len(e.resp.Body)+len(e.scope)+len(e.key)+sc.idx.linkBytes()) + entryOverhead
	for _, h := range e.resp.Headers {
		e.size += int64(len(h[0]) + len(h[1]))
	}
	if e.size > c.cfg.MemoryBytes {
		if sc.idx.len() == 0 {
			delete(c.scopes, e.scope)
		}
		return false
	}
	c.nextID++
	e.id = c.nextID
	sc.idx.add(e.id, e.vec)
	c.entries[e.id] = e
	c.byKey[e.key] = e
	if sc.build != nil {
		sc.build.changes = append(sc.build.changes, indexChange{id: e.id, vec: e.vec})
	} else if !sc.hnsw && sc.idx.len() > c.cfg.HNSWThreshold {
		c.buildGraphLocked(e.scope, sc)
	}
	e.lruElem = c.lru.PushFront(e)
	pushExpiry(&c.expiry, e)
	c.bytes += e.size
	c.sweepLocked(now)
	for c.bytes > c.cfg.MemoryBytes {
		victim := c.lru.Back().Value.(*entry)
		c.removeLocked(victim)
		c.met.evictions.WithLabelValues("memory").Inc()
	}
	c.met.entries.Set(float64(len(c.entries)))
	c.met.bytes.Set(float64(c.bytes))
	return true
}

// promoteLocked moves a scope that outgrew exact search onto an HNSW graph.
// buildGraphLocked builds an HNSW graph of the scope's live entries in the
// background: building one of a few thousand entries takes about a second
// on two cores, which no lookup of any scope may wait for. The scope keeps
// its index meanwhile; its changes are replayed on the graph, which then
// replaces it.
func (c *Cache) buildGraphLocked(key string, sc *scope) {
	ids := sc.idx.live()
	vecs := make([][]float32, len(ids))
	for i, id := range ids {
		vecs[i] = c.entries[id].vec
	}
	b := &indexBuild{}
	sc.build = b
	c.bg.Go(func() {
		g := newHNSWIndex(sc.dim, c.cfg.HNSW)
		for i, id := range ids {
			g.add(id, vecs[i])
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.scopes[key] != sc || sc.build != b {
			return // the scope was dropped meanwhile
		}
		for _, ch := range b.changes {
			if ch.vec != nil {
				g.add(ch.id, ch.vec)
			} else {
				g.remove(ch.id)
			}
		}
		sc.idx, sc.hnsw, sc.build = g, true, nil
	})
}

func (c *Cache) removeLocked(e *entry) {
	if c.entries[e.id] != e {
		return
	}
	delete(c.entries, e.id)
	if c.byKey[e.key] == e {
		delete(c.byKey, e.key)
	}
	c.lru.Remove(e.lruElem)
	removeExpiry(&c.expiry, e)
	c.bytes -= e.size
	if sc := c.scopes[e.scope]; sc != nil {
		sc.idx.remove(e.id)
		switch g, isGraph := sc.idx.(*hnswIndex); {
		case sc.idx.len() == 0:
			delete(c.scopes, e.scope)
		case sc.build != nil:
			sc.build.changes = append(sc.build.changes, indexChange{id: e.id})
		case isGraph && g.stale():
			c.buildGraphLocked(e.scope, sc)
		}
	}
}

func (c *Cache) dropScopeLocked(key string) {
	var victims []*entry
	for _, e := range c.entries {
		if e.scope == key {
			victims = append(victims, e)
		}
	}
	for _, e := range victims {
		c.removeLocked(e)
	}
	delete(c.scopes, key)
}

// sweepLocked removes every entry whose TTL has passed.
func (c *Cache) sweepLocked(now time.Time) {
	for len(c.expiry) > 0 && !now.Before(c.expiry[0].expires) {
		c.removeLocked(c.expiry[0])
		c.met.evictions.WithLabelValues("expired").Inc()
	}
}

// Sweep removes expired entries now; Run calls it every second.
func (c *Cache) Sweep() {
	c.mu.Lock()
	c.sweepLocked(c.now())
	c.met.entries.Set(float64(len(c.entries)))
	c.met.bytes.Set(float64(c.bytes))
	c.mu.Unlock()
}

// Len is the number of entries held.
func (c *Cache) Len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.entries)
}

// Bytes is the memory the entries account for.
func (c *Cache) Bytes() int64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.bytes
}

// Run sweeps expired entries and, when the cache shares through Redis,
// keeps this replica's index in step with the others, until ctx is done.
func (c *Cache) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer c.bg.Wait()
	defer wg.Wait()
	if c.share != nil {
		wg.Go(func() { c.share.follow(ctx) })
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			c.Sweep()
		}
	}
}
