package xds

import (
	"fmt"
	"sync"
	"testing"
)

// Each admin change edits the model being served when it is applied, so
// that concurrent changes (from admins, or the file watcher) never undo
// one another.
func TestConcurrentAdminChangesAreAllKept(t *testing.T) {
	a, b := backend(t), backend(t)
	s := startServer(t, twoPools(a, b, "pool: a"))
	const n = 12
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			if code := adminDo(t, s, "PUT", fmt.Sprintf("/v1/policies/p%d", i), `{"priority": 3}`, nil); code != 200 {
				t.Errorf("PUT policy p%d: %d", i, code)
			}
		})
	}
	wg.Wait()
	var cur struct {
		Version int
		Config  struct{ Policies map[string]any }
	}
	adminDo(t, s, "GET", "/v1/config", "", &cur)
	for i := range n {
		if _, ok := cur.Config.Policies[fmt.Sprintf("p%d", i)]; !ok {
			t.Errorf("policy p%d was accepted but is not in version %d: %v", i, cur.Version, cur.Config.Policies)
		}
	}
}
