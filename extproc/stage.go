package extproc

import (
	"context"

	"github.com/infergate/infergate/extproc/cache"
	"github.com/infergate/infergate/extproc/canonical"
	"github.com/infergate/infergate/policy"
)

// Stage is a second cache lookup that runs after an exact-cache miss and
// before the request is forwarded (the semantic cache). It sees every
// response the exact cache stores, so it can index it too. Stages run only
// on routes whose policy cache mode is "semantic".
type Stage interface {
	// Lookup returns a stored response that answers q, if any.
	Lookup(ctx context.Context, q *Query) (StageHit, bool)
	// Store is handed each response the exact cache stored for q.
	Store(ctx context.Context, q *Query, e *cache.Entry)
}

// StageHit is a stage's answer.
type StageHit struct {
	Entry *cache.Entry
	// Header is set on the replay after the stored headers; a stage names
	// its own hits here (Cache-Status with a detail, a similarity score).
	Header []cache.Header
}

// Query is what a Stage knows of the request.
type Query struct {
	Policy policy.Policy
	Method string
	Path   string
	// Scope is the cache scope: the tenant, or cache.SharedScope when the
	// route shares its cache across tenants. Entries never cross scopes.
	Scope string
	// Body is the request body as received; Request its canonical reading.
	Body    []byte
	Request canonical.Request
	// Key is the exact-cache key of the request.
	Key cache.Key
}
