// Package batcher is the engine's per-model dynamic batcher: a bounded,
// prioritised queue of tokenized requests and a pool of workers that each,
// when free, form one batch from the head of the queue and run it.
//
// Batches are formed when a worker frees up, never on a poll timer: the
// free worker takes the oldest request of the highest priority, then keeps
// adding items until MaxBatchSize items or MaxBatchTokens padded tokens
// (items × longest item) are reached. While another batch is running it
// waits for more to arrive, at most until the oldest request in the batch
// has been queued MaxQueueDelay or that batch ends; when no batch is
// running it starts at once, since waiting would only leave the runtime
// idle. So batches grow with load by themselves: a lone request pays no
// delay, and under load each batch gathers what arrived while the previous
// one ran. Only one worker gathers at a time, so arrivals join the forming
// batch instead of starting a second small one. With PreferredBatchSizes
// the batch is then cut to the largest preferred size, so that it fills the
// runtime's padded shape bucket.
//
// A request carries one or more items (the texts of one embeddings call).
// Its items may be split across consecutive batches, and so across
// workers: a 100-text request with MaxBatchSize 32 runs as 32+32+32+4,
// and requests queued behind it join the last batch. A request completes
// when its last item has been computed; any failed batch fails it.
//
// A request whose context ends (client gone, deadline passed) is dropped
// from the queue at once and any of its items already picked are filtered
// out just before the batch runs, so it is never computed.
package batcher

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Errors Do returns besides the context's and the runner's.
var (
	// ErrQueueFull means QueueSize requests are already waiting (HTTP 429).
	ErrQueueFull = errors.New("queue is full")
	// ErrClosed means the batcher is draining for shutdown (HTTP 503).
	ErrClosed = errors.New("batcher is shutting down")
)

// RunFunc computes one batch: one output vector per input sequence, in
// order. It runs on a worker goroutine.
type RunFunc func(ctx context.Context, batch [][]int32) ([][]float32, error)

// Config is one model's batching policy; see config.EngineModel.
type Config struct {
	// Model labels metrics and errors.
	Model          string
	MaxBatchSize   int
	MaxBatchTokens int
	MaxQueueDelay  time.Duration
	// QueueSize caps waiting requests (not items).
	QueueSize int
	Workers   int
	// PriorityLevels orders the queue: higher levels are served first,
	// FIFO within a level.
	PriorityLevels int
	// PreferredBatchSizes, when set, trims a gathered batch to the
	// largest of them that fits, leaving the rest at the head of the
	// queue: runtimes pad a batch to their next shape bucket, so 17 items
	// cost as much as 32 while 16 and then 1 cost 17.
	PreferredBatchSizes []int
}

func (c Config) validate() error {
	if c.MaxBatchSize < 1 || c.MaxBatchTokens < 1 || c.QueueSize < 1 || c.Workers < 1 || c.PriorityLevels < 1 || c.MaxQueueDelay < 0 {
		return fmt.Errorf("batcher %s: invalid config %+v", c.Model, c)
	}
	for _, p := range c.PreferredBatchSizes {
		if p < 1 || p > c.MaxBatchSize {
			return fmt.Errorf("batcher %s: preferred batch size %d is outside 1..%d", c.Model, p, c.MaxBatchSize)
		}
	}
	return nil
}

// Batcher queues requests for one model and runs them in batches.
type Batcher struct {
	cfg     Config
	run     RunFunc
	metrics *modelMetrics

	// gather lets one free worker at a time form a batch.
	gather sync.Mutex
	// arrived wakes the gathering worker; capacity 1 so Submit never
	// blocks and a missed wake-up only costs one more loop.
	arrived chan struct{}

	mu     sync.Mutex
	levels []*list.List // of *request, index = priority
	depth  int
	// accepted counts every request ever queued.
	accepted int
	// running counts batches handed to workers and not yet finished.
	running int
	closed  bool
	closing chan struct{} // closed by Close: stop waiting for stragglers

	// runCtx is handed to RunFunc; it is canceled only when a drain
	// exceeds its deadline.
	runCtx    context.Context
	cancelRun context.CancelFunc
	workers   sync.WaitGroup

	// computeEWMA estimates a batch's run time, for Retry-After.
	computeEWMA time.Duration
}

// New starts cfg.Workers workers that run batches with run. metrics may
// be nil.
func New(cfg Config, run RunFunc, metrics *Metrics) (*Batcher, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	b := &Batcher{
		cfg:     cfg,
		run:     run,
		metrics: metrics.forModel(cfg.Model),
		arrived: make(chan struct{}, 1),
		levels:  make([]*list.List, cfg.PriorityLevels),
		closing: make(chan struct{}),
	}
	for i := range b.levels {
		b.levels[i] = list.New()
	}
	b.runCtx, b.cancelRun = context.WithCancel(context.Background())
	for range cfg.Workers {
		b.workers.Add(1)
		go b.work()
	}
	return b, nil
}

// request is one caller's items on their way through the queue.
type request struct {
	ctx      context.Context
	items    [][]int32
	priority int
	// warmup marks Warm's request, which no metric counts.
	warmup   bool
	enqueued time.Time

	// Guarded by Batcher.mu.
	elem      *list.Element // nil once all items are taken or it is dropped
	next      int           // first item not yet taken into a batch
	remaining int           // items not yet computed
	out       [][]float32
	err       error
	done      chan struct{}
	finished  bool
	stopWatch func() bool
}

// Do queues items at the given priority (clamped to the configured
// levels), waits for them to be computed and returns one vector per item.
// It returns ErrQueueFull, ErrClosed, ctx.Err() when the caller's context
// ends first, or the runner's error.
func (b *Batcher) Do(ctx context.Context, items [][]int32, priority int) ([][]float32, error) {
	if len(items) == 0 {
		return nil, nil
	}
	out, err := b.do(ctx, items, priority, false)
	b.metrics.outcome(err)
	return out, err
}

// Warm runs items through the queue and a worker at the highest priority,
// as Do would, and returns Do's error. Unlike Do it records nothing: it
// proves the serving path at load, and /metrics scraped right after start
// must not show a request, a batch or tokens that no client sent.
func (b *Batcher) Warm(ctx context.Context, items [][]int32) error {
	if len(items) == 0 {
		return nil
	}
	_, err := b.do(ctx, items, b.cfg.PriorityLevels-1, true)
	return err
}

func (b *Batcher) do(ctx context.Context, items [][]int32, priority int, warmup bool) ([][]float32, error) {
	r, err := b.submit(ctx, items, priority, warmup)
	if err != nil {
		return nil, err
	}
	select {
	case <-r.done:
	case <-ctx.Done():
		// The watcher removes it from the queue; wait no longer.
		b.finish(r, ctx.Err())
		<-r.done
	}
	b.mu.Lock()
	out, err := r.out, r.err
	b.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (b *Batcher) submit(ctx context.Context, items [][]int32, priority int, warmup bool) (*request, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	priority = max(0, min(priority, b.cfg.PriorityLevels-1))
	r := &request{
		ctx:       ctx,
		items:     items,
		priority:  priority,
		warmup:    warmup,
		enqueued:  time.Now(),
		remaining: len(items),
		out:       make([][]float32, len(items)),
		done:      make(chan struct{}),
	}
	b.mu.Lock()
	switch {
	case b.closed:
		b.mu.Unlock()
		return nil, ErrClosed
	case b.depth >= b.cfg.QueueSize:
		b.mu.Unlock()
		return nil, ErrQueueFull
	}
	r.elem = b.levels[priority].PushBack(r)
	b.depth++
	b.accepted++
	b.metrics.setDepth(b.depth)
	b.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { b.finish(r, ctx.Err()) })
	b.mu.Lock()
	if r.finished {
		stop()
	} else {
		r.stopWatch = stop
	}
	b.mu.Unlock()
	b.wake()
	return r, nil
}

func (b *Batcher) wake() {
	select {
	case b.arrived <- struct{}{}:
	default:
	}
}

// finish completes r with err (nil: success) once; it takes r off the
// queue if it is still there.
func (b *Batcher) finish(r *request, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.finishLocked(r, err)
}

func (b *Batcher) finishLocked(r *request, err error) {
	if r.finished {
		return
	}
	r.finished = true
	r.err = err
	if r.elem != nil {
		b.levels[r.priority].Remove(r.elem)
		r.elem = nil
		b.depth--
		b.metrics.setDepth(b.depth)
	}
	if r.stopWatch != nil {
		r.stopWatch()
	}
	close(r.done)
}

// RetryAfter estimates how long the queue needs to drain, for the
// Retry-After header of a 429; at least one second.
func (b *Batcher) RetryAfter() time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	// Batches are cut by items, and one request may hold thousands.
	items := 0
	for _, l := range b.levels {
		for e := l.Front(); e != nil; e = e.Next() {
			r := e.Value.(*request)
			items += len(r.items) - r.next
		}
	}
	batches := (items + b.cfg.MaxBatchSize - 1) / b.cfg.MaxBatchSize
	d := time.Duration(batches) * b.computeEWMA / time.Duration(b.cfg.Workers)
	// Whole seconds, rounded up: a client told to come back early is
	// refused again.
	secs := (d + time.Second - 1) / time.Second
	return max(time.Second, secs*time.Second)
}

// Full reports whether the queue holds QueueSize requests, so that Do
// would refuse one now.
func (b *Batcher) Full() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.depth >= b.cfg.QueueSize
}

// Depth is the number of queued requests.
func (b *Batcher) Depth() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.depth
}

// Close stops accepting requests and waits until every queued request has
// been computed and the workers have exited. If ctx ends first, the
// running batches are canceled and the remaining requests fail with
// ErrClosed.
func (b *Batcher) Close(ctx context.Context) error {
	b.mu.Lock()
	if !b.closed {
		b.closed = true
		close(b.closing)
	}
	b.mu.Unlock()
	b.wake()
	done := make(chan struct{})
	go func() { b.workers.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	b.cancelRun()
	b.mu.Lock()
	for _, l := range b.levels {
		for e := l.Front(); e != nil; e = l.Front() {
			b.finishLocked(e.Value.(*request), ErrClosed)
		}
	}
	b.mu.Unlock()
	<-done
	return ctx.Err()
}

// slice is the part of one request that went into a batch.
type slice struct {
	req        *request
	start, end int
}

func (b *Batcher) work() {
	defer b.workers.Done()
	for {
		batch, ok := b.formBatch()
		if !ok {
			b.wake() // let the next worker see the closed, empty queue
			return
		}
		b.execute(batch)
		b.mu.Lock()
		b.running--
		b.mu.Unlock()
		b.wake() // a gathering worker may stop waiting now
	}
}

// formBatch waits for work and gathers one batch. ok is false once the
// batcher is closed and the queue is empty.
func (b *Batcher) formBatch() (batch []slice, ok bool) {
	b.gather.Lock()
	defer b.gather.Unlock()
	var (
		items, longest int
		deadline       time.Time
		timer          *time.Timer
	)
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		b.mu.Lock()
		for items < b.cfg.MaxBatchSize {
			r := b.headLocked()
			if r == nil {
				break
			}
			if len(batch) == 0 {
				deadline = r.enqueued.Add(b.cfg.MaxQueueDelay)
			}
			n := b.takeLocked(r, &items, &longest)
			if n == 0 {
				break // token cap reached
			}
			batch = appendSlice(batch, r, n)
		}
		full := items >= b.cfg.MaxBatchSize || (items > 0 && b.tokenCapReachedLocked(items, longest))
		closed, empty, idle := b.closed, b.depth == 0, b.running == 0
		b.mu.Unlock()

		switch {
		case full, items > 0 && (closed || idle || !time.Now().Before(deadline)):
			b.mu.Lock()
			batch = b.trimLocked(batch, items)
			b.running++
			b.mu.Unlock()
			return batch, true
		case items == 0 && closed && empty:
			return nil, false
		}
		if items == 0 {
			select {
			case <-b.arrived:
			case <-b.closing:
			}
			continue
		}
		if timer == nil {
			timer = time.NewTimer(time.Until(deadline))
		}
		select {
		case <-b.arrived:
		case <-timer.C:
		case <-b.closing:
		}
	}
}

// headLocked is the oldest request of the highest non-empty priority.
func (b *Batcher) headLocked() *request {
	for p := len(b.levels) - 1; p >= 0; p-- {
		if e := b.levels[p].Front(); e != nil {
			return e.Value.(*request)
		}
	}
	return nil
}

// takeLocked moves as many of r's items into the batch as the caps allow
// and returns how many. The first item of a batch is always taken, even
// if it alone exceeds MaxBatchTokens.
func (b *Batcher) takeLocked(r *request, items, longest *int) int {
	n := 0
	for r.next+n < len(r.items) && *items < b.cfg.MaxBatchSize {
		l := max(*longest, len(r.items[r.next+n]))
		if *items > 0 && (*items+1)*l > b.cfg.MaxBatchTokens {
			break
		}
		*items++
		*longest = l
		n++
	}
	r.next += n
	if r.next == len(r.items) {
		b.levels[r.priority].Remove(r.elem)
		r.elem = nil
		b.depth--
		b.metrics.setDepth(b.depth)
	}
	return n
}

// trimLocked cuts batch (of items items) down to the largest preferred
// size and puts the cut items back at the head of their queues, in order.
func (b *Batcher) trimLocked(batch []slice, items int) []slice {
	target := 0
	for _, p := range b.cfg.PreferredBatchSizes {
		if p <= items && p > target {
			target = p
		}
	}
	if target == 0 || target == items {
		return batch
	}
	for surplus := items - target; surplus > 0; {
		last := &batch[len(batch)-1]
		n := min(surplus, last.end-last.start)
		last.end -= n
		surplus -= n
		r := last.req
		r.next -= n
		if r.elem == nil && !r.finished {
			// It had been taken whole, from the head: it goes back there.
			r.elem = b.levels[r.priority].PushFront(r)
			b.depth++
		}
		if last.end == last.start {
			batch = batch[:len(batch)-1]
		}
	}
	b.metrics.setDepth(b.depth)
	return batch
}

// tokenCapReachedLocked reports whether the head's next item would
// overflow MaxBatchTokens, so waiting for more cannot help.
func (b *Batcher) tokenCapReachedLocked(items, longest int) bool {
	r := b.headLocked()
	if r == nil {
		return (items+1)*longest > b.cfg.MaxBatchTokens
	}
	return (items+1)*max(longest, len(r.items[r.next])) > b.cfg.MaxBatchTokens
}

func appendSlice(batch []slice, r *request, n int) []slice {
	if k := len(batch) - 1; k >= 0 && batch[k].req == r {
		batch[k].end += n
		return batch
	}
	return append(batch, slice{req: r, start: r.next - n, end: r.next})
}

// execute runs one batch, skipping requests that ended while it formed.
func (b *Batcher) execute(batch []slice) {
	b.mu.Lock()
	live := batch[:0]
	for _, s := range batch {
		if !s.req.finished && s.req.ctx.Err() == nil {
			live = append(live, s)
		}
	}
	b.mu.Unlock()
	if len(live) == 0 {
		return
	}
	var (
		seqs [][]int32
		// Only what clients sent is counted.
		items, tokens int
	)
	for _, s := range live {
		if s.end == len(s.req.items) && !s.req.warmup {
			b.metrics.queued(time.Since(s.req.enqueued))
		}
		for _, it := range s.req.items[s.start:s.end] {
			seqs = append(seqs, it)
			if !s.req.warmup {
				items++
				tokens += len(it)
			}
		}
	}
	start := time.Now()
	out, err := b.run(b.runCtx, seqs)
	elapsed := time.Since(start)
	if err == nil && len(out) != len(seqs) {
		err = fmt.Errorf("model %s returned %d vectors for %d inputs", b.cfg.Model, len(out), len(seqs))
	}
	if err != nil && b.runCtx.Err() != nil {
		// Close cut the drain short: the server gave up, not the client.
		err = ErrClosed
	}
	// A batch of warm-up items alone is no serving work; its run time
	// still seeds computeEWMA, which is an estimate, not a metric.
	if items > 0 {
		b.metrics.computed(elapsed, items, tokens)
	}

	b.mu.Lock()
	defer b.mu.Unlock()
	if b.computeEWMA == 0 {
		b.computeEWMA = elapsed
	} else {
		b.computeEWMA = (7*b.computeEWMA + elapsed) / 8
	}
	i := 0
	for _, s := range live {
		n := s.end - s.start
		if err != nil {
			b.finishLocked(s.req, err)
			continue
		}
		if !s.req.finished {
			copy(s.req.out[s.start:s.end], out[i:i+n])
			s.req.remaining -= n
			if s.req.remaining == 0 {
				b.finishLocked(s.req, nil)
			}
		}
		i += n
	}
}
