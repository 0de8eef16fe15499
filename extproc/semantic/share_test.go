package semantic

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// startRedis runs a private redis-server on a free port for the test.
func startRedis(t *testing.T) *redis.Client {
	t.Helper()
	path, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server not on PATH (make deps installs it): %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cmd := exec.Command(path, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	client := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", port)})
	t.Cleanup(func() { client.Close() })
	deadline := time.Now().Add(10 * time.Second)
	for client.Ping(context.Background()).Err() != nil {
		if time.Now().After(deadline) {
			t.Fatal("redis-server did not come up")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return client
}

// replica is one ext_proc replica's semantic cache, following Redis.
func replica(t *testing.T, client *redis.Client) *Cache {
	t.Helper()
	c := newTestCache(t, Config{}, useLite(t))
	c.ShareVia(client, "infergate:", time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = c.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return c
}

func sharedReq(question string) Request {
	r := req("acme", "You are a support bot.", question)
	r.Policy.SharedCache = true
	return r
}

// eventuallyHit polls until c answers r: replication is asynchronous.
func eventuallyHit(t *testing.T, c *Cache, r Request) Hit {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if hit, ok := c.Lookup(context.Background(), r); ok {
			return hit
		}
		if time.Now().After(deadline) {
			t.Fatalf("no hit for %q on the other replica", r.Body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestReplicasShareHitsThroughRedis(t *testing.T) {
	client := startRedis(t)
	a, b := replica(t, client), replica(t, client)

	mustStore(t, a, sharedReq("How do I reset my password?"), answer("answered by A"))
	hit := eventuallyHit(t, b, sharedReq("How can I reset my password?"))
	if string(hit.Response.Body) != "answered by A" || hit.Response.Status != 200 || hit.Response.Headers[0][0] != "content-type" {
		t.Fatalf("B served %+v", hit.Response)
	}
	// the guard holds on the other replica too
	if _, ok := b.Lookup(context.Background(), sharedReq("How do I reset my PIN?")); ok {
		t.Error("B served a different question")
	}

	// a replica that starts later loads what is already there
	c := replica(t, client)
	eventuallyHit(t, c, sharedReq("How can I reset my password?"))

	// a tenant's entry reaches the other replicas too, and still answers
	// only that tenant there
	tenant := req("acme", "You are a support bot.", "How do I update my billing address?")
	mustStore(t, b, tenant, answer("acme's address"))
	if hit := eventuallyHit(t, a, req("acme", "You are a support bot.", "How can I update my billing address?")); string(hit.Response.Body) != "acme's address" {
		t.Fatalf("A served %q", hit.Response.Body)
	}
	if _, ok := a.Lookup(context.Background(), req("globex", "You are a support bot.", "How can I update my billing address?")); ok {
		t.Error("a shared entry crossed tenants on another replica")
	}

	// Redis holds each entry with its TTL
	keys, err := client.Keys(context.Background(), "infergate:sem:e:*").Result()
	if err != nil || len(keys) != 2 {
		t.Fatalf("entry keys in Redis = %v (%v), want 2", keys, err)
	}
	if ttl := client.PTTL(context.Background(), keys[0]).Val(); ttl <= 0 || ttl > time.Minute {
		t.Errorf("entry TTL in Redis = %v, want within the route's 1m", ttl)
	}
}

func TestRedisDownLeavesTheLocalCacheWorking(t *testing.T) {
	client := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1})
	defer client.Close()
	c := replica(t, client)
	mustStore(t, c, sharedReq("How do I reset my password?"), answer("a"))
	if _, ok := c.Lookup(context.Background(), sharedReq("How can I reset my password?")); !ok {
		t.Fatal("local hit lost while Redis is down")
	}
	if got := counterValue(c.met.shared.WithLabelValues("failed")); got == 0 {
		t.Error("Redis failures not counted")
	}
}

// A purged answer must not come back: not from this replica, not from
// Redis into a replica that starts later.
func TestPurgeRemovesEntriesHereAndInRedis(t *testing.T) {
	client := startRedis(t)
	a := replica(t, client)
	const system = "You are a support bot."
	mustStore(t, a, req("acme", system, "How do I reset my password?"), answer("acme"))
	mustStore(t, a, req("globex", system, "How do I reset my password?"), answer("globex"))

	n, err := a.Purge(context.Background(), Selector{Scope: "acme"})
	if err != nil || n != 1 {
		t.Fatalf("Purge = %d, %v; want 1 entry", n, err)
	}
	if _, ok := a.Lookup(context.Background(), req("acme", system, "How can I reset my password?")); ok {
		t.Fatal("the purged tenant's answer is still served")
	}
	if _, ok := a.Lookup(context.Background(), req("globex", system, "How can I reset my password?")); !ok {
		t.Fatal("another tenant's answer was purged")
	}
	later := replica(t, client)
	eventuallyHit(t, later, req("globex", system, "How can I reset my password?"))
	if _, ok := later.Lookup(context.Background(), req("acme", system, "How can I reset my password?")); ok {
		t.Fatal("a replica loaded the purged answer back from Redis")
	}

	if n, err := a.Purge(context.Background(), Selector{Route: "chat", Model: "other-model"}); err != nil || n != 0 {
		t.Fatalf("purge of another model: %d, %v", n, err)
	}
	if n, err := a.Purge(context.Background(), Selector{All: true}); err != nil || n != 1 {
		t.Fatalf("purge all: %d, %v", n, err)
	}
	if keys := client.Keys(context.Background(), "infergate:sem:e:*").Val(); len(keys) != 0 {
		t.Fatalf("Redis still holds %v after purging all", keys)
	}
	if later.PurgeLocal(Selector{}) != 0 {
		t.Fatal("an empty selector purged entries")
	}
}

// A replica that fell behind a trimmed stream would skip the entries
// trimmed away; it notices, and starts over (loading every entry).
func TestFallingBehindTheTrimmedStreamIsNoticed(t *testing.T) {
	client := startRedis(t)
	c := newTestCache(t, Config{}, useLite(t))
	c.ShareVia(client, "infergate:", time.Second)
	ctx := context.Background()
	var ids []string
	for i := range 2 * logBatch {
		id, err := client.XAdd(ctx, &redis.XAddArgs{Stream: c.share.logKey(), Values: []any{"key", fmt.Sprint(i), "origin", "other"}}).Result()
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	// The replica had read the first ten when the stream was trimmed.
	if err := client.XTrimMaxLen(ctx, c.share.logKey(), int64(logBatch+10)).Err(); err != nil {
		t.Fatal(err)
	}
	if err := c.share.tail(ctx, ids[9]); err == nil || !strings.Contains(err.Error(), "fell behind") {
		t.Errorf("tail after the trim = %v, want it to notice the gap", err)
	}
}

// After missing purges a replica drops what it holds and loads again what
// Redis still has: an entry purged elsewhere is gone, the others return.
func TestResyncDropsWhatRedisNoLongerHolds(t *testing.T) {
	client := startRedis(t)
	a, b := replica(t, client), replica(t, client)
	mustStore(t, a, sharedReq("How do I reset my password?"), answer("kept"))
	mustStore(t, a, sharedReq("How do I close my account?"), answer("purged"))
	eventuallyHit(t, b, sharedReq("How can I reset my password?"))
	closing := eventuallyHit(t, b, sharedReq("How can I close my account?"))
	// A purge b never heard of: the entry is gone from Redis.
	key := a.share.entryKey(mustPrepare(t, a, sharedReq("How do I close my account?")).key)
	if err := client.Del(context.Background(), key).Err(); err != nil {
		t.Fatal(err)
	}
	if string(closing.Response.Body) != "purged" {
		t.Fatalf("b served %q", closing.Response.Body)
	}
	b.Resync()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, ok := b.Lookup(context.Background(), sharedReq("How can I close my account?")); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("after the resync b still serves an answer Redis no longer holds")
		}
		time.Sleep(50 * time.Millisecond)
	}
	eventuallyHit(t, b, sharedReq("How can I reset my password?"))
}
