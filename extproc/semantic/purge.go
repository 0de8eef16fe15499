package semantic

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// purgeLabels are what the purge API selects entries by; the scope hash
// alone cannot be matched against a tenant, route or model.
type purgeLabels struct {
	Route string
	Scope string // the tenant's cache scope, as in Request.Scope
	Model string
	Key   string // the exact-cache key of the request that stored it
}

// Selector picks the entries to purge: every entry when All, those stored
// by the request with exact-cache key Key, otherwise those whose route,
// scope and model equal the fields that are set.
type Selector struct {
	All   bool
	Key   string
	Route string
	Scope string
	Model string
}

func (s Selector) matches(l purgeLabels) bool {
	if s.All {
		return true
	}
	if s.Key != "" {
		return s.Key == l.Key
	}
	if s.Route == "" && s.Scope == "" && s.Model == "" {
		return false
	}
	return (s.Route == "" || s.Route == l.Route) &&
		(s.Scope == "" || s.Scope == l.Scope) &&
		(s.Model == "" || s.Model == l.Model)
}

// PurgeLocal removes the matching entries this replica holds and returns
// how many; a replica that hears of another's purge calls it.
func (c *Cache) PurgeLocal(sel Selector) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	var victims []*entry
	for _, e := range c.entries {
		if sel.matches(e.labels) {
			victims = append(victims, e)
		}
	}
	for _, e := range victims {
		c.removeLocked(e)
	}
	c.met.entries.Set(float64(len(c.entries)))
	c.met.bytes.Set(float64(c.bytes))
	return len(victims)
}

// Purge removes the matching entries here and, when entries are shared,
// from Redis, so that no replica loads them again. It returns how many
// entries this replica held.
func (c *Cache) Purge(ctx context.Context, sel Selector) (int, error) {
	n := c.PurgeLocal(sel)
	if c.share == nil {
		return n, nil
	}
	return n, c.share.purge(ctx, sel)
}

// purge deletes the shared entries sel matches. It may take longer than
// one call's timeout: it walks every shared entry.
func (s *sharer) purge(ctx context.Context, sel Selector) error {
	ctx, cancel := context.WithTimeout(ctx, 100*s.timeout+10*time.Second)
	defer cancel()
	iter := s.client.Scan(ctx, 0, s.prefix+entryKeyPart+"*", 512).Iterator()
	var batch []string
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		cmds, err := s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, k := range batch {
				p.HMGet(ctx, k, "route", "tenant", "model", "xkey")
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("semantic purge: %w", err)
		}
		var victims []string
		for i, cmd := range cmds {
			v := cmd.(*redis.SliceCmd).Val()
			str := func(j int) string { s, _ := v[j].(string); return s }
			if len(v) == 4 && sel.matches(purgeLabels{Route: str(0), Scope: str(1), Model: str(2), Key: str(3)}) {
				victims = append(victims, batch[i])
			}
		}
		batch = batch[:0]
		if len(victims) == 0 {
			return nil
		}
		if err := s.client.Unlink(ctx, victims...).Err(); err != nil {
			return fmt.Errorf("semantic purge: %w", err)
		}
		return nil
	}
	for iter.Next(ctx) {
		batch = append(batch, iter.Val())
		if len(batch) == 512 {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := iter.Err(); err != nil {
		return fmt.Errorf("semantic purge: %w", err)
	}
	return flush()
}
