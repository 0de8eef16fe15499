package cache

import (
	"context"
	"sync"
	"time"
)

// Flights collapses identical misses: the first request for a key leads
// (goes upstream), the others follow and wait for its response.
type Flights struct {
	mu sync.Mutex
	m  map[Key]*Flight
}

// NewFlights returns an empty set of flights.
func NewFlights() *Flights { return &Flights{m: map[Key]*Flight{}} }

// Flight is one miss in progress.
type Flight struct {
	key   Key
	set   *Flights
	done  chan struct{}
	entry *Entry
	once  sync.Once
}

// Join returns the flight for k and whether the caller leads it. A leader
// must call Finish exactly once, whatever happens to its request.
func (f *Flights) Join(k Key) (*Flight, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if fl, ok := f.m[k]; ok {
		return fl, false
	}
	fl := &Flight{key: k, set: f, done: make(chan struct{})}
	f.m[k] = fl
	return fl, true
}

// Finish ends the flight with the leader's stored entry, or nil when the
// leader got nothing the followers may share (an error, a response that
// may not be stored, a dropped stream). Later calls do nothing.
func (fl *Flight) Finish(e *Entry) {
	fl.once.Do(func() {
		fl.set.mu.Lock()
		if fl.set.m[fl.key] == fl {
			delete(fl.set.m, fl.key)
		}
		fl.set.mu.Unlock()
		fl.entry = e
		close(fl.done)
	})
}

// Wait blocks until the leader finishes, the timeout passes or ctx ends,
// and returns the leader's entry if it had one to share.
func (fl *Flight) Wait(ctx context.Context, timeout time.Duration) (*Entry, bool) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-fl.done:
		return fl.entry, fl.entry != nil
	case <-t.C:
	case <-ctx.Done():
	}
	return nil, false
}

// InFlight is the number of keys with a leader upstream.
func (f *Flights) InFlight() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.m)
}
