// Package embedcache keeps the embeddings the engine computed, keyed by
// model and exact input text, so that a /v1/embeddings request whose
// inputs were seen before computes only the new ones. Sentence encoders
// embed each input independently of the others in its batch, so a cached
// vector stands in for a fresh one (see the package test for the measured
// difference across batch shapes).
//
// The engine uses it in two steps around its queue: Split before queueing
// (only Plan.Compute goes to the batcher), Merge after the batch returns.
package embedcache

import (
	"container/list"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// entryOverhead approximates the bookkeeping of one entry (list element,
// map slot, slice headers) for the memory bound.
const entryOverhead = 128

// Cache is an LRU of embeddings bounded in bytes. It is safe for
// concurrent use.
type Cache struct {
	maxBytes int64

	mu    sync.Mutex
	items map[string]*list.Element
	lru   list.List // *item, most recently used first
	bytes int64

	hits, misses, savedTokens, evictions prometheus.Counter
	bytesGauge, entriesGauge             prometheus.Gauge
}

type item struct {
	key    string
	vec    []float32
	tokens int
	size   int64
}

// New returns a cache holding at most maxBytes of keys and vectors, with
// its metrics registered on reg.
func New(maxBytes int64, reg prometheus.Registerer) (*Cache, error) {
	if maxBytes <= 0 {
		return nil, fmt.Errorf("embedcache: memory bound %d must be positive", maxBytes)
	}
	c := &Cache{
		maxBytes: maxBytes,
		items:    make(map[string]*list.Element),
		hits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "infergate_engine_embedcache_hits_total",
			Help: "Embedding inputs answered from the embedding cache.",
		}),
		misses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "infergate_engine_embedcache_misses_total",
			Help: "Embedding inputs that had to be computed.",
		}),
		savedTokens: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "infergate_engine_embedcache_saved_tokens_total",
			Help: "Tokens the model did not have to run thanks to the embedding cache.",
		}),
		evictions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "infergate_engine_embedcache_evictions_total",
			Help: "Embeddings evicted to stay within the memory bound.",
		}),
		bytesGauge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "infergate_engine_embedcache_bytes",
			Help: "Memory held by cached embeddings and their keys.",
		}),
		entriesGauge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "infergate_engine_embedcache_entries",
			Help: "Embeddings held.",
		}),
	}
	for _, m := range []prometheus.Collector{c.hits, c.misses, c.savedTokens, c.evictions, c.bytesGauge, c.entriesGauge} {
		if err := reg.Register(m); err != nil {
			return nil, err
		}
	}
	return c, nil
}

func cacheKey(model, text string) string { return model + "\x00" + text }

// Plan is one request's inputs split into cached and to-compute.
type Plan struct {
	model   string
	vectors [][]float32 // per input; nil until known
	// Compute are the distinct inputs to run through the model, in order
	// of first appearance.
	Compute []string
	// at[i] lists the input positions that Compute[i] fills.
	at [][]int
}

// Cached is the number of inputs answered from the cache.
func (p *Plan) Cached() int {
	n := len(p.vectors)
	for _, pos := range p.at {
		n -= len(pos)
	}
	return n
}

// Split looks up every input of a request to model. The returned plan's
// Compute holds the distinct inputs the model must still run; an input
// repeated within the request is computed once.
// Covers reports whether every input is cached, without counting a hit or
// touching the eviction order: for deciding whether a request needs the
// model at all before it is accepted.
func (c *Cache) Covers(model string, inputs []string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, text := range inputs {
		if c.items[cacheKey(model, text)] == nil {
			return false
		}
	}
	return true
}

func (c *Cache) Split(model string, inputs []string) *Plan {
	p := &Plan{model: model, vectors: make([][]float32, len(inputs))}
	pending := map[string]int{} // text -> index in Compute
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, text := range inputs {
		if el := c.items[cacheKey(model, text)]; el != nil {
			it := el.Value.(*item)
			c.lru.MoveToFront(el)
			p.vectors[i] = it.vec
			c.hits.Inc()
			c.savedTokens.Add(float64(it.tokens))
			continue
		}
		c.misses.Inc()
		if j, ok := pending[text]; ok {
			p.at[j] = append(p.at[j], i)
			continue
		}
		pending[text] = len(p.Compute)
		p.Compute = append(p.Compute, text)
		p.at = append(p.at, []int{i})
	}
	return p
}

// Merge takes the model's vectors for p.Compute, in order, with the
// number of tokens each input ran, stores them, and returns the vectors
// of all the request's inputs in input order. The returned vectors are
// shared with the cache and must not be modified.
func (c *Cache) Merge(p *Plan, computed [][]float32, tokens []int) ([][]float32, error) {
	if len(computed) != len(p.Compute) || len(tokens) != len(p.Compute) {
		return nil, fmt.Errorf("embedcache: %d vectors and %d token counts for %d computed inputs", len(computed), len(tokens), len(p.Compute))
	}
	for j, vec := range computed {
		if len(vec) == 0 {
			return nil, errors.New("embedcache: empty vector")
		}
		for _, i := range p.at[j] {
			p.vectors[i] = vec
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for j, text := range p.Compute {
		c.putLocked(cacheKey(p.model, text), computed[j], tokens[j])
	}
	c.bytesGauge.Set(float64(c.bytes))
	c.entriesGauge.Set(float64(len(c.items)))
	return p.vectors, nil
}

func (c *Cache) putLocked(key string, vec []float32, tokens int) {
	size := int64(len(key)+4*len(vec)) + entryOverhead
	if size > c.maxBytes {
		return
	}
	if el := c.items[key]; el != nil {
		c.lru.MoveToFront(el)
		return
	}
	// vec is usually a window into the encoder's array for the whole
	// padded batch; a copy keeps the entry to the bytes it is charged.
	c.items[key] = c.lru.PushFront(&item{key: key, vec: slices.Clone(vec), tokens: tokens, size: size})
	c.bytes += size
	for c.bytes > c.maxBytes {
		last := c.lru.Back()
		it := last.Value.(*item)
		c.lru.Remove(last)
		delete(c.items, it.key)
		c.bytes -= it.size
		c.evictions.Inc()
	}
}

// Len is the number of embeddings held.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.items)
}

// Bytes is the memory the cache accounts for.
func (c *Cache) Bytes() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bytes
}
