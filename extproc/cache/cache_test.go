package cache

import (
	"bytes"
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/infergate/infergate/config"
	"github.com/infergate/infergate/extproc/internal/redistest"
	"github.com/infergate/infergate/extproc/redisconn"
)

func TestEntryRoundTrip(t *testing.T) {
	e := Entry{Status: 200, Header: []Header{{"content-type", "application/json"}, {"x-a", ""}},
		Body: []byte(`{"ok":true}`), StoredAt: time.Unix(1700000000, 123), TTL: time.Minute}
	got, err := Decode(e.Encode())
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != e.Status || !got.StoredAt.Equal(e.StoredAt) || got.TTL != e.TTL || !bytes.Equal(got.Body, e.Body) || len(got.Header) != 2 || got.Header[0] != e.Header[0] {
		t.Fatalf("round trip: %+v", got)
	}
}

func TestDecodeRefusesCorruptEntries(t *testing.T) {
	b := (&Entry{Status: 200, Header: []Header{{"a", "b"}}, Body: []byte("body")}).Encode()
	for i := range b {
		if _, err := Decode(b[:i]); err == nil {
			t.Fatalf("truncated to %d bytes: no error", i)
		}
	}
	huge := append([]byte{entryVersion}, bytes.Repeat([]byte{0xff}, 30)...)
	if _, err := Decode(huge); err == nil {
		t.Fatal("absurd lengths: no error")
	}
}

func TestKeysSeparateEveryDimension(t *testing.T) {
	base := Request{Method: "POST", Route: "r", Path: "/v1/embeddings", Model: "m", Scope: "t:a", Body: []byte(`{}`)}
	seen := map[Key]string{NewKey(base): "base"}
	for name, mod := range map[string]func(*Request){
		"method": func(r *Request) { r.Method = "GET" },
		"route":  func(r *Request) { r.Route = "r2" },
		"path":   func(r *Request) { r.Path = "/v1/other" },
		"model":  func(r *Request) { r.Model = "m2" },
		"scope":  func(r *Request) { r.Scope = "t:b" },
		"body":   func(r *Request) { r.Body = []byte(`{"a":1}`) },
		"shift":  func(r *Request) { r.Route, r.Path = "r/v1", "/embeddings" },
	} {
		r := base
		mod(&r)
		k := NewKey(r)
		if prev, dup := seen[k]; dup {
			t.Errorf("%s shares a key with %s", name, prev)
		}
		seen[k] = name
	}
	if !validKey(string(NewKey(base))) {
		t.Fatalf("NewKey made an invalid key %q", NewKey(base))
	}
}

func TestSelectorMatches(t *testing.T) {
	k := NewKey(Request{Route: "chat", Model: "m", Scope: "t:a"})
	other := NewKey(Request{Route: "chat", Model: "m", Scope: "t:b"})
	cases := []struct {
		sel        Selector
		k, other   bool
		validation bool
	}{
		{Selector{Tenant: "t:a"}, true, false, true},
		{Selector{Route: "chat"}, true, true, true},
		{Selector{Route: "chat", Tenant: "t:b"}, false, true, true},
		{Selector{Model: "x"}, false, false, true},
		{Selector{Key: k}, true, false, true},
		{Selector{All: true}, true, true, true},
	}
	for _, c := range cases {
		if err := c.sel.Validate(); (err == nil) != c.validation {
			t.Errorf("%+v: Validate = %v", c.sel, err)
		}
		if c.sel.Matches(k) != c.k || c.sel.Matches(other) != c.other {
			t.Errorf("%+v: matches %v/%v, want %v/%v", c.sel, c.sel.Matches(k), c.sel.Matches(other), c.k, c.other)
		}
	}
	for _, bad := range []Selector{{}, {All: true, Route: "x"}, {Key: k, Model: "m"}, {Key: "nope"}} {
		if bad.Validate() == nil {
			t.Errorf("%+v validated", bad)
		}
	}
}

func newLocal(t *testing.T) *Local {
	t.Helper()
	l, err := NewLocal(LocalConfig{MemoryMB: 8, MaxEntryBytes: 64 << 10, MaxTTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}

func TestLocalHonoursEntryTTLAndSize(t *testing.T) {
	l := newLocal(t)
	now := time.Now()
	k := NewKey(Request{Route: "r"})
	if err := l.Set(k, &Entry{Status: 200, Body: []byte("x"), StoredAt: now, TTL: time.Second}); err != nil {
		t.Fatal(err)
	}
	if _, ok := l.Get(k, now.Add(500*time.Millisecond)); !ok {
		t.Fatal("fresh entry missed")
	}
	if _, ok := l.Get(k, now.Add(2*time.Second)); ok {
		t.Fatal("stale entry served")
	}
	big := &Entry{Status: 200, Body: make([]byte, 200<<10), StoredAt: now, TTL: time.Minute}
	if err := l.Set(k, big); err != ErrTooLarge {
		t.Fatalf("oversized entry: %v", err)
	}
}

func TestLocalPurgeBySelector(t *testing.T) {
	l := newLocal(t)
	e := &Entry{Status: 200, StoredAt: time.Now(), TTL: time.Minute}
	a := NewKey(Request{Route: "r", Scope: "t:a", Body: []byte("1")})
	a2 := NewKey(Request{Route: "r", Scope: "t:a", Body: []byte("2")})
	b := NewKey(Request{Route: "r", Scope: "t:b", Body: []byte("1")})
	for _, k := range []Key{a, a2, b} {
		if err := l.Set(k, e); err != nil {
			t.Fatal(err)
		}
	}
	if n := l.Purge(Selector{Tenant: "t:a"}); n != 2 {
		t.Fatalf("purged %d, want 2", n)
	}
	if _, ok := l.Get(b, time.Now()); !ok {
		t.Fatal("other tenant's entry purged")
	}
	if n := l.Purge(Selector{All: true}); n != 1 || l.Len() != 0 {
		t.Fatalf("purge all: %d, len %d", n, l.Len())
	}
}

func newRedisStore(t *testing.T, addr string) *Store {
	t.Helper()
	cfg := config.Default().ExtProc.Redis
	cfg.Addr = addr
	cfg.Timeout = time.Second
	conn := redisconn.New(cfg, slog.New(slog.DiscardHandler), nil)
	t.Cleanup(func() { _ = conn.Close() })
	return NewStore(newLocal(t), conn, slog.New(slog.DiscardHandler))
}

func TestStoreSharesEntriesAndPurgesThroughRedis(t *testing.T) {
	srv := redistest.Start(t)
	a, b := newRedisStore(t, srv.Addr), newRedisStore(t, srv.Addr)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go b.FollowPurges(ctx)

	k := NewKey(Request{Route: "r", Model: "m", Scope: "t:x"})
	e := &Entry{Status: 200, Body: []byte("shared"), StoredAt: time.Now(), TTL: time.Minute}
	if err := a.Set(ctx, k, e); err != nil {
		t.Fatal(err)
	}
	got, level, ok := b.Get(ctx, k)
	if !ok || level != LevelRedis || string(got.Body) != "shared" {
		t.Fatalf("replica b: ok=%v level=%s body=%q", ok, level, got.Body)
	}
	if _, level, _ = b.Get(ctx, k); level != LevelLocal {
		t.Fatalf("second read on b came from %s, want local", level)
	}
	waitSubscribed(t, a)
	deadline := time.Now().Add(2 * time.Minute)
	n, err := a.Purge(ctx, Selector{Model: "m"})
	if err != nil || n != 2 {
		t.Fatalf("purge: n=%d err=%v, want a's local copy and the Redis one", n, err)
	}
	for {
		if _, ok := b.local.Get(k, time.Now()); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("replica b kept its local copy after the purge")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, _, ok := b.Get(ctx, k); ok {
		t.Fatal("purged entry still served")
	}
}

// waitSubscribed waits until another replica follows s's purges.
func waitSubscribed(t *testing.T, s *Store) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		n, err := s.redis.Client.PubSubNumSub(context.Background(), s.purgeChannel()).Result()
		if err == nil && n[s.purgeChannel()] > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no replica ever subscribed to purges")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A replica whose purge subscription broke may have missed purges. When
// go-redis reconnects it, the replica empties its local level and tells
// the caches beside it; Redis still serves what was not purged.
func TestReconnectedPurgeFollowerEmptiesItsLocalLevel(t *testing.T) {
	srv := redistest.Start(t)
	a, b := newRedisStore(t, srv.Addr), newRedisStore(t, srv.Addr)
	resubscribed := make(chan struct{}, 8)
	b.OnResubscribe(func() { resubscribed <- struct{}{} })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go b.FollowPurges(ctx)
	waitSubscribed(t, a)
	k := NewKey(Request{Route: "r", Model: "m", Scope: "t:x"})
	if err := b.Set(ctx, k, &Entry{Status: 200, Body: []byte("kept in redis"), StoredAt: time.Now(), TTL: time.Minute}); err != nil {
		t.Fatal(err)
	}
	if err := a.redis.Client.ClientKillByFilter(ctx, "TYPE", "pubsub").Err(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-resubscribed:
	case <-time.After(2 * time.Minute):
		t.Fatal("the reconnected subscription emptied nothing")
	}
	if _, ok := b.local.Get(k, time.Now()); ok {
		t.Error("the local copy survived the reconnection")
	}
	if e, level, ok := b.Get(ctx, k); !ok || level != LevelRedis || string(e.Body) != "kept in redis" {
		t.Errorf("after the reconnection: ok=%v level=%s, want the entry from Redis", ok, level)
	}
}

func TestStoreFallsBackWhenRedisDies(t *testing.T) {
	srv := redistest.Start(t)
	s := newRedisStore(t, srv.Addr)
	ctx := context.Background()
	srv.Kill()
	k := NewKey(Request{Route: "r"})
	if err := s.Set(ctx, k, &Entry{Status: 200, Body: []byte("local"), StoredAt: time.Now(), TTL: time.Minute}); err != nil {
		t.Fatal(err)
	}
	if e, level, ok := s.Get(ctx, k); !ok || level != LevelLocal || string(e.Body) != "local" {
		t.Fatalf("after redis died: ok=%v level=%s", ok, level)
	}
	if s.redis.Available() {
		t.Fatal("redis still marked available after failures")
	}
}

func TestFlightsShareTheLeadersEntry(t *testing.T) {
	f := NewFlights()
	k := NewKey(Request{Route: "r"})
	lead, leader := f.Join(k)
	if !leader {
		t.Fatal("first join does not lead")
	}
	follow, leader := f.Join(k)
	if leader || follow != lead {
		t.Fatal("second join leads too")
	}
	got := make(chan *Entry)
	go func() {
		e, _ := follow.Wait(context.Background(), time.Minute)
		got <- e
	}()
	lead.Finish(&Entry{Body: []byte("answer")})
	if e := <-got; e == nil || string(e.Body) != "answer" {
		t.Fatalf("follower got %v", e)
	}
	if f.InFlight() != 0 {
		t.Fatal("finished flight still registered")
	}
	if _, leader := f.Join(k); !leader {
		t.Fatal("next request after the flight does not lead")
	}
}

func TestFlightFailureSendsFollowersUpstream(t *testing.T) {
	f := NewFlights()
	k := NewKey(Request{Route: "r"})
	lead, _ := f.Join(k)
	follow, _ := f.Join(k)
	lead.Finish(nil)
	lead.Finish(&Entry{}) // a second Finish changes nothing
	if _, ok := follow.Wait(context.Background(), time.Minute); ok {
		t.Fatal("follower got an entry from a failed leader")
	}
	other, _ := f.Join(NewKey(Request{Route: "x"}))
	if _, ok := other.Wait(context.Background(), 10*time.Millisecond); ok {
		t.Fatal("wait without a finish returned an entry")
	}
}
