package semantic

import (
	"container/heap"
	"container/list"
	"sync"
	"time"
)

// expiryHeap orders entries by expiry, soonest first, so a sweep touches
// only what has expired.
type expiryHeap []*entry

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].expires.Before(h[j].expires) }
func (h expiryHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapIdx, h[j].heapIdx = i, j
}
func (h *expiryHeap) Push(x any) {
	e := x.(*entry)
	e.heapIdx = len(*h)
	*h = append(*h, e)
}
func (h *expiryHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	e.heapIdx = -1
	return e
}

func pushExpiry(h *expiryHeap, e *entry) { heap.Push(h, e) }

func removeExpiry(h *expiryHeap, e *entry) {
	if e.heapIdx >= 0 && e.heapIdx < len(*h) && (*h)[e.heapIdx] == e {
		heap.Remove(h, e.heapIdx)
	}
}

// vectorMemo remembers the embeddings of recent lookups for a while, so
// the Store that follows a missed Lookup needs no second embedding call.
type vectorMemo struct {
	mu    sync.Mutex
	max   int
	ttl   time.Duration
	order list.List // *memoItem, newest first
	items map[string]*list.Element
}

type memoItem struct {
	key   string
	vec   []float32
	added time.Time
}

func newVectorMemo(max int, ttl time.Duration) *vectorMemo {
	return &vectorMemo{max: max, ttl: ttl, items: make(map[string]*list.Element)}
}

func (m *vectorMemo) get(key string) []float32 {
	m.mu.Lock()
	defer m.mu.Unlock()
	el := m.items[key]
	if el == nil {
		return nil
	}
	it := el.Value.(*memoItem)
	if time.Since(it.added) > m.ttl {
		m.order.Remove(el)
		delete(m.items, key)
		return nil
	}
	return it.vec
}

func (m *vectorMemo) put(key string, vec []float32) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if el := m.items[key]; el != nil {
		m.order.Remove(el)
	}
	m.items[key] = m.order.PushFront(&memoItem{key: key, vec: vec, added: time.Now()})
	for m.order.Len() > m.max {
		last := m.order.Back()
		m.order.Remove(last)
		delete(m.items, last.Value.(*memoItem).key)
	}
}
