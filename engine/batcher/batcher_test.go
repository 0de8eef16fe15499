package batcher

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// gatedRunner is a RunFunc whose batches are recorded and, while gated,
// held until the test releases them one by one, so that tests decide
// exactly what is queued while a worker is busy.
type gatedRunner struct {
	mu      sync.Mutex
	batches [][][]int32
	started chan struct{} // one send per batch that started
	gate    chan struct{} // nil: run at once
}

func newGatedRunner(gated bool) *gatedRunner {
	r := &gatedRunner{started: make(chan struct{}, 100)}
	if gated {
		r.gate = make(chan struct{})
	}
	return r
}

// run answers each sequence with {first token, length}.
func (g *gatedRunner) run(ctx context.Context, batch [][]int32) ([][]float32, error) {
	g.mu.Lock()
	g.batches = append(g.batches, slices.Clone(batch))
	g.mu.Unlock()
	g.started <- struct{}{}
	if g.gate != nil {
		select {
		case <-g.gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	out := make([][]float32, len(batch))
	for i, s := range batch {
		out[i] = []float32{float32(s[0]), float32(len(s))}
	}
	return out, nil
}

func (g *gatedRunner) waitStarted(t *testing.T) {
	t.Helper()
	select {
	case <-g.started:
	case <-time.After(10 * time.Second):
		t.Fatal("no batch started")
	}
}

func (g *gatedRunner) release() { g.gate <- struct{}{} }

// firstTokens lists each batch as the first tokens of its sequences.
func (g *gatedRunner) firstTokens() [][]int32 {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out [][]int32
	for _, b := range g.batches {
		var ids []int32
		for _, s := range b {
			ids = append(ids, s[0])
		}
		out = append(out, ids)
	}
	return out
}

func testConfig() Config {
	return Config{Model: "m", MaxBatchSize: 8, MaxBatchTokens: 1 << 20, QueueSize: 64, Workers: 1, PriorityLevels: 3}
}

func newBatcher(t *testing.T, cfg Config, g *gatedRunner) *Batcher {
	t.Helper()
	b, err := New(cfg, g.run, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = b.Close(ctx)
	})
	return b
}

func (b *Batcher) acceptedCount() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.accepted
}

type result struct {
	out [][]float32
	err error
}

// doAsync submits one request and waits until it is queued.
func doAsync(t *testing.T, ctx context.Context, b *Batcher, priority int, items ...[]int32) chan result {
	t.Helper()
	before := b.acceptedCount()
	ch := make(chan result, 1)
	go func() {
		out, err := b.Do(ctx, items, priority)
		ch <- result{out, err}
	}()
	waitFor(t, func() bool { return b.acceptedCount() > before })
	return ch
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached")
		}
		time.Sleep(time.Millisecond)
	}
}

func get(t *testing.T, ch chan result) result {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("request did not complete")
		return result{}
	}
}

func seq(first int32, n int) []int32 {
	s := make([]int32, n)
	s[0] = first
	return s
}

// Requests that arrive while the only worker is busy are batched together
// the moment it frees up.
func TestBatchFormsWhenWorkerFreesUp(t *testing.T) {
	g := newGatedRunner(true)
	b := newBatcher(t, testConfig(), g)
	ctx := context.Background()

	a := doAsync(t, ctx, b, 1, seq(1, 3))
	g.waitStarted(t)
	var rest []chan result
	for i := int32(2); i <= 4; i++ {
		rest = append(rest, doAsync(t, ctx, b, 1, seq(i, 3)))
	}
	g.release()
	g.waitStarted(t)
	g.release()
	if r := get(t, a); r.err != nil || r.out[0][0] != 1 {
		t.Fatalf("first request: %+v", r)
	}
	for i, ch := range rest {
		r := get(t, ch)
		if r.err != nil || r.out[0][0] != float32(i+2) {
			t.Fatalf("request %d: %+v", i+2, r)
		}
	}
	if got, want := g.firstTokens(), [][]int32{{1}, {2, 3, 4}}; !slices.EqualFunc(got, want, slices.Equal) {
		t.Fatalf("batches %v, want %v", got, want)
	}
}

func TestBatchCappedBySize(t *testing.T) {
	g := newGatedRunner(true)
	cfg := testConfig()
	cfg.MaxBatchSize = 2
	b := newBatcher(t, cfg, g)
	ctx := context.Background()

	first := doAsync(t, ctx, b, 1, seq(1, 1))
	g.waitStarted(t)
	var chs []chan result
	for i := int32(2); i <= 6; i++ {
		chs = append(chs, doAsync(t, ctx, b, 1, seq(i, 1)))
	}
	for range 3 {
		g.release()
		g.waitStarted(t)
	}
	g.release()
	get(t, first)
	for _, ch := range chs {
		if r := get(t, ch); r.err != nil {
			t.Fatal(r.err)
		}
	}
	if got, want := g.firstTokens(), [][]int32{{1}, {2, 3}, {4, 5}, {6}}; !slices.EqualFunc(got, want, slices.Equal) {
		t.Fatalf("batches %v, want %v", got, want)
	}
}

// max_batch_tokens counts padded tokens: items × the longest item.
func TestBatchCappedByPaddedTokens(t *testing.T) {
	g := newGatedRunner(true)
	cfg := testConfig()
	cfg.MaxBatchTokens = 10
	b := newBatcher(t, cfg, g)
	ctx := context.Background()

	first := doAsync(t, ctx, b, 1, seq(1, 1))
	g.waitStarted(t)
	// 4+4 = 8 fits; a third 4 makes 12. 4 and 2 pad to 8; adding the 8
	// pads to 24. 8 then 20 pads to 40: apart. 20 alone exceeds the cap,
	// but a batch always takes one item.
	chs := []chan result{
		doAsync(t, ctx, b, 1, seq(2, 4)),
		doAsync(t, ctx, b, 1, seq(3, 4)),
		doAsync(t, ctx, b, 1, seq(4, 4)),
		doAsync(t, ctx, b, 1, seq(5, 2)),
		doAsync(t, ctx, b, 1, seq(6, 8)),
		doAsync(t, ctx, b, 1, seq(7, 20)),
	}
	for range 4 {
		g.release()
		g.waitStarted(t)
	}
	g.release()
	get(t, first)
	for _, ch := range chs {
		if r := get(t, ch); r.err != nil {
			t.Fatal(r.err)
		}
	}
	want := [][]int32{{1}, {2, 3}, {4, 5}, {6}, {7}}
	if got := g.firstTokens(); !slices.EqualFunc(got[:len(want)], want, slices.Equal) || len(got) != len(want) {
		t.Fatalf("batches %v, want %v", got, want)
	}
}

// A gathered batch is cut to the largest preferred size; the rest stays
// at the head of the queue, in order, for the next batch.
func TestPreferredBatchSizes(t *testing.T) {
	g := newGatedRunner(true)
	cfg := testConfig()
	cfg.PreferredBatchSizes = []int{1, 2, 4, 8}
	b := newBatcher(t, cfg, g)
	ctx := context.Background()

	first := doAsync(t, ctx, b, 1, seq(1, 1))
	g.waitStarted(t)
	chs := []chan result{
		doAsync(t, ctx, b, 1, seq(2, 1), seq(3, 1), seq(4, 1)),
		doAsync(t, ctx, b, 1, seq(5, 1), seq(6, 1)),
		doAsync(t, ctx, b, 1, seq(7, 1), seq(8, 1)),
	}
	for range 3 {
		g.release()
		g.waitStarted(t)
	}
	g.release()
	get(t, first)
	for _, ch := range chs {
		r := get(t, ch)
		if r.err != nil {
			t.Fatal(r.err)
		}
	}
	// Seven queued items run as 4 then 2 then 1, never padded.
	want := [][]int32{{1}, {2, 3, 4, 5}, {6, 7}, {8}}
	if got := g.firstTokens(); !slices.EqualFunc(got, want, slices.Equal) {
		t.Fatalf("batches %v, want %v", got, want)
	}
}

// busyBatcher has two workers, the first of them held inside a batch of
// the request {0}, so the second gathers while the runtime is busy.
func busyBatcher(t *testing.T, cfg Config) (*Batcher, *gatedRunner, chan result) {
	t.Helper()
	g := newGatedRunner(true)
	cfg.Workers = 2
	b := newBatcher(t, cfg, g)
	held := doAsync(t, context.Background(), b, 1, seq(0, 1))
	g.waitStarted(t)
	return b, g, held
}

// A batch that fills up starts at once, even while another runs and the
// queue delay is long.
func TestFullBatchDoesNotWaitForQueueDelay(t *testing.T) {
	cfg := testConfig()
	cfg.MaxBatchSize = 2
	cfg.MaxQueueDelay = time.Hour
	b, g, held := busyBatcher(t, cfg)
	ctx := context.Background()
	a := doAsync(t, ctx, b, 1, seq(1, 1))
	c := doAsync(t, ctx, b, 1, seq(2, 1))
	g.waitStarted(t) // with the first batch still held
	g.release()
	g.release()
	get(t, a)
	get(t, c)
	get(t, held)
	if got, want := g.firstTokens(), [][]int32{{0}, {1, 2}}; !slices.EqualFunc(got, want, slices.Equal) {
		t.Fatalf("batches %v, want %v", got, want)
	}
}

// With the runtime idle a lone request starts at once, whatever the queue
// delay: waiting would leave the runtime idle for nothing.
func TestIdleRuntimeDoesNotWaitForQueueDelay(t *testing.T) {
	g := newGatedRunner(false)
	cfg := testConfig()
	cfg.MaxQueueDelay = time.Hour
	b := newBatcher(t, cfg, g)
	if r := get(t, doAsync(t, context.Background(), b, 1, seq(7, 1))); r.err != nil || r.out[0][0] != 7 {
		t.Fatalf("%+v", r)
	}
}

// While a batch runs, the next one gathers later arrivals and starts when
// the running batch ends, before its queue delay is up.
func TestQueueDelayGathersWhileBusy(t *testing.T) {
	cfg := testConfig()
	cfg.MaxQueueDelay = time.Hour
	cfg.MaxBatchSize = 4
	b, g, held := busyBatcher(t, cfg)
	ctx := context.Background()
	a := doAsync(t, ctx, b, 1, seq(1, 1))
	time.Sleep(20 * time.Millisecond)
	c := doAsync(t, ctx, b, 1, seq(2, 1))
	d := doAsync(t, ctx, b, 1, seq(3, 1))
	g.release() // the held batch ends: the gathered one starts
	g.waitStarted(t)
	g.release()
	for _, ch := range []chan result{held, a, c, d} {
		if r := get(t, ch); r.err != nil {
			t.Fatal(r.err)
		}
	}
	if got, want := g.firstTokens(), [][]int32{{0}, {1, 2, 3}}; !slices.EqualFunc(got, want, slices.Equal) {
		t.Fatalf("batches %v, want %v", got, want)
	}
}

// While a batch runs for long, the next still starts once its oldest
// request has waited the queue delay.
func TestQueueDelayIsBounded(t *testing.T) {
	cfg := testConfig()
	cfg.MaxQueueDelay = 50 * time.Millisecond
	b, g, held := busyBatcher(t, cfg)
	a := doAsync(t, context.Background(), b, 1, seq(7, 1))
	g.waitStarted(t) // with the first batch still held
	g.release()
	g.release()
	if r := get(t, a); r.err != nil || r.out[0][0] != 7 {
		t.Fatalf("%+v", r)
	}
	get(t, held)
}

func TestHigherPriorityFirstFIFOWithinLevel(t *testing.T) {
	g := newGatedRunner(true)
	cfg := testConfig()
	cfg.MaxBatchSize = 1
	b := newBatcher(t, cfg, g)
	ctx := context.Background()

	first := doAsync(t, ctx, b, 1, seq(1, 1))
	g.waitStarted(t)
	chs := []chan result{
		doAsync(t, ctx, b, 0, seq(10, 1)),
		doAsync(t, ctx, b, 1, seq(20, 1)),
		doAsync(t, ctx, b, 2, seq(30, 1)),
		doAsync(t, ctx, b, 0, seq(11, 1)),
		doAsync(t, ctx, b, 2, seq(31, 1)),
		doAsync(t, ctx, b, 9, seq(32, 1)), // clamped to the highest level
	}
	for range len(chs) {
		g.release()
		g.waitStarted(t)
	}
	g.release()
	get(t, first)
	for _, ch := range chs {
		get(t, ch)
	}
	want := [][]int32{{1}, {30}, {31}, {32}, {20}, {10}, {11}}
	if got := g.firstTokens(); !slices.EqualFunc(got, want, slices.Equal) {
		t.Fatalf("batches %v, want %v", got, want)
	}
}

func TestDeadlinePassedIsNeverComputed(t *testing.T) {
	g := newGatedRunner(true)
	b := newBatcher(t, testConfig(), g)
	first := doAsync(t, context.Background(), b, 1, seq(1, 1))
	g.waitStarted(t)

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	late := doAsync(t, ctx, b, 1, seq(2, 1))
	r := get(t, late)
	if !errors.Is(r.err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want deadline exceeded", r.err)
	}
	if b.Depth() != 0 {
		t.Fatalf("expired request still queued: depth %d", b.Depth())
	}
	g.release()
	get(t, first)
	if got := g.firstTokens(); len(got) != 1 {
		t.Fatalf("batches %v: the expired request was computed", got)
	}
}

// A request whose client went away while queued is dropped and never
// computed; the requests behind it still are.
func TestCanceledRequestIsDroppedBeforeCompute(t *testing.T) {
	g := newGatedRunner(true)
	cfg := testConfig()
	cfg.Workers = 1
	b := newBatcher(t, cfg, g)
	first := doAsync(t, context.Background(), b, 1, seq(1, 1))
	g.waitStarted(t)

	ctx, cancel := context.WithCancel(context.Background())
	gone := doAsync(t, ctx, b, 1, seq(2, 1))
	stays := doAsync(t, context.Background(), b, 1, seq(3, 1))
	cancel()
	if r := get(t, gone); !errors.Is(r.err, context.Canceled) {
		t.Fatalf("err = %v, want canceled", r.err)
	}
	g.release()
	g.waitStarted(t)
	g.release()
	get(t, first)
	if r := get(t, stays); r.err != nil || r.out[0][0] != 3 {
		t.Fatalf("%+v", r)
	}
	if got, want := g.firstTokens(), [][]int32{{1}, {3}}; !slices.EqualFunc(got, want, slices.Equal) {
		t.Fatalf("batches %v, want %v", got, want)
	}
}

func TestBoundedQueueRejectsWhenFull(t *testing.T) {
	g := newGatedRunner(true)
	cfg := testConfig()
	cfg.QueueSize = 2
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	b, err := New(cfg, g.run, m)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	first := doAsync(t, ctx, b, 1, seq(1, 1))
	g.waitStarted(t)
	q1 := doAsync(t, ctx, b, 1, seq(2, 1))
	q2 := doAsync(t, ctx, b, 1, seq(3, 1))
	if _, err := b.Do(ctx, [][]int32{seq(4, 1)}, 1); !errors.Is(err, ErrQueueFull) {
		t.Fatalf("err = %v, want ErrQueueFull", err)
	}
	if ra := b.RetryAfter(); ra < time.Second {
		t.Fatalf("RetryAfter %v, want at least 1s", ra)
	}
	if got := value(t, m.depth.WithLabelValues("m")); got != 2 {
		t.Fatalf("queue depth gauge %v, want 2", got)
	}
	g.release()
	g.waitStarted(t)
	g.release()
	for _, ch := range []chan result{first, q1, q2} {
		if r := get(t, ch); r.err != nil {
			t.Fatal(r.err)
		}
	}
	if got := value(t, m.requests.WithLabelValues("m", OutcomeRejected)); got != 1 {
		t.Fatalf("rejected count %v, want 1", got)
	}
	if got := value(t, m.requests.WithLabelValues("m", OutcomeSuccess)); got != 3 {
		t.Fatalf("success count %v, want 3", got)
	}
	if got := value(t, m.tokens.WithLabelValues("m")); got != 3 {
		t.Fatalf("tokens %v, want 3", got)
	}
	_ = b.Close(ctx)
}

// Warm runs its items through a worker, ahead of queued requests, and
// records none of the request, queue or batch metrics.
func TestWarmRunsButIsNotCounted(t *testing.T) {
	g := newGatedRunner(false)
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	b, err := New(testConfig(), g.run, m)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = b.Close(context.Background()) }()
	if err := b.Warm(context.Background(), [][]int32{seq(7, 3)}); err != nil {
		t.Fatal(err)
	}
	if got, want := g.firstTokens(), [][]int32{{7}}; !slices.EqualFunc(got, want, slices.Equal) {
		t.Fatalf("batches %v, want the warm-up batch %v", got, want)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		for _, s := range f.GetMetric() {
			if s.GetCounter().GetValue() != 0 || s.GetHistogram().GetSampleCount() != 0 {
				t.Errorf("warm-up recorded %s %v", f.GetName(), s)
			}
		}
	}
}

// Items of one request are split across batches and come back in order.
func TestRequestSplitAcrossBatches(t *testing.T) {
	g := newGatedRunner(false)
	cfg := testConfig()
	cfg.MaxBatchSize = 2
	b := newBatcher(t, cfg, g)
	items := [][]int32{seq(1, 1), seq(2, 1), seq(3, 1), seq(4, 1), seq(5, 1)}
	out, err := b.Do(context.Background(), items, 1)
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range out {
		if v[0] != float32(i+1) {
			t.Fatalf("out[%d] = %v", i, v)
		}
	}
	if got, want := g.firstTokens(), [][]int32{{1, 2}, {3, 4}, {5}}; !slices.EqualFunc(got, want, slices.Equal) {
		t.Fatalf("batches %v, want %v", got, want)
	}
}

func TestRunnerErrorFailsRequest(t *testing.T) {
	boom := errors.New("boom")
	b, err := New(testConfig(), func(context.Context, [][]int32) ([][]float32, error) { return nil, boom }, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(context.Background())
	if _, err := b.Do(context.Background(), [][]int32{seq(1, 1)}, 1); !errors.Is(err, boom) {
		t.Fatalf("err = %v, want boom", err)
	}
}

// Close refuses new work but finishes everything already accepted.
func TestCloseDrainsAcceptedRequests(t *testing.T) {
	g := newGatedRunner(true)
	b, err := New(testConfig(), g.run, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	first := doAsync(t, ctx, b, 1, seq(1, 1))
	g.waitStarted(t)
	queued := []chan result{doAsync(t, ctx, b, 1, seq(2, 1)), doAsync(t, ctx, b, 0, seq(3, 1))}

	closed := make(chan error, 1)
	go func() { closed <- b.Close(ctx) }()
	waitFor(t, func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return b.closed
	})
	if _, err := b.Do(ctx, [][]int32{seq(9, 1)}, 1); !errors.Is(err, ErrClosed) {
		t.Fatalf("Do while closing: %v, want ErrClosed", err)
	}
	g.release()
	g.waitStarted(t)
	g.release()
	for _, ch := range append(queued, first) {
		if r := get(t, ch); r.err != nil {
			t.Fatalf("accepted request failed during drain: %v", r.err)
		}
	}
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return after the queue drained")
	}
}

// Several workers run batches at the same time.
func TestWorkersRunConcurrently(t *testing.T) {
	g := newGatedRunner(true)
	cfg := testConfig()
	cfg.Workers = 2
	cfg.MaxBatchSize = 1
	b := newBatcher(t, cfg, g)
	ctx := context.Background()
	a := doAsync(t, ctx, b, 1, seq(1, 1))
	g.waitStarted(t)
	c := doAsync(t, ctx, b, 1, seq(2, 1))
	g.waitStarted(t) // the second worker started while the first is held
	g.release()
	g.release()
	get(t, a)
	get(t, c)
}

func TestConfigValidation(t *testing.T) {
	cfg := testConfig()
	cfg.Workers = 0
	if _, err := New(cfg, nil, nil); err == nil {
		t.Fatal("zero workers accepted")
	}
}

// value reads a counter or gauge.
func value(t *testing.T, c prometheus.Metric) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	if m.Counter != nil {
		return m.Counter.GetValue()
	}
	return m.Gauge.GetValue()
}

// Retry-After counts the batches the queued items need, not the queued
// requests: two 40-text requests are ten batches of 8, not one.
func TestRetryAfterCountsQueuedItems(t *testing.T) {
	g := newGatedRunner(true)
	b := newBatcher(t, testConfig(), g)
	ctx := context.Background()
	first := doAsync(t, ctx, b, 1, seq(1, 1))
	g.waitStarted(t)
	texts := make([][]int32, 40)
	for i := range texts {
		texts[i] = seq(int32(i), 1)
	}
	a := doAsync(t, ctx, b, 1, texts...)
	c := doAsync(t, ctx, b, 1, texts...)
	b.mu.Lock()
	b.computeEWMA = time.Second
	b.mu.Unlock()
	if got := b.RetryAfter(); got != 10*time.Second {
		t.Errorf("RetryAfter %v with 80 items queued, batches of 8 taking 1s on one worker; want 10s", got)
	}
	close(g.gate)
	for _, ch := range []chan result{first, a, c} {
		if r := get(t, ch); r.err != nil {
			t.Fatal(r.err)
		}
	}
}

// A drain cut short fails both the queued requests and the one whose
// batch was running with ErrClosed (503), not with the canceled context
// the runner saw, which the engine would report as the client's doing.
func TestDrainCutShortFailsRunningBatchWithErrClosed(t *testing.T) {
	g := newGatedRunner(true)
	b, err := New(testConfig(), g.run, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	running := doAsync(t, ctx, b, 1, seq(1, 1))
	g.waitStarted(t)
	queued := doAsync(t, ctx, b, 1, seq(2, 1))
	expired, cancel := context.WithCancel(ctx)
	cancel()
	if err := b.Close(expired); !errors.Is(err, context.Canceled) {
		t.Fatalf("Close: %v, want the drain context's error", err)
	}
	for name, ch := range map[string]chan result{"running": running, "queued": queued} {
		if r := get(t, ch); !errors.Is(r.err, ErrClosed) {
			t.Errorf("%s request: %v, want ErrClosed", name, r.err)
		}
	}
}
