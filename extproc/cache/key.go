package cache

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
)

// Key identifies one cached response. Its string form is
// "r<route>.m<model>.s<scope>.<digest>": the first three parts are short
// hashes of the route, the model and the tenant scope, so purges by any of
// them can match keys without decoding entries (and as a Redis SCAN
// pattern); the digest covers the whole request.
type Key string

// SharedScope is the scope of routes whose cache is shared by all tenants.
const SharedScope = "*shared*"

// Request is what a cache key is made of.
type Request struct {
	Method string
	Route  string
	Path   string
	Model  string
	// Scope is the tenant, or SharedScope.
	Scope string
	// Body is the canonical request body.
	Body []byte
}

// NewKey derives the key of r.
func NewKey(r Request) Key {
	h := sha256.New()
	for _, part := range []string{r.Method, r.Route, r.Path, r.Model, r.Scope} {
		// Length-prefixing keeps ("ab","c") and ("a","bc") apart.
		var n [4]byte
		n[0], n[1], n[2], n[3] = byte(len(part)>>24), byte(len(part)>>16), byte(len(part)>>8), byte(len(part))
		h.Write(n[:])
		h.Write([]byte(part))
	}
	h.Write(r.Body)
	var sum [sha256.Size]byte
	digest := hex.EncodeToString(h.Sum(sum[:0])[:16])
	var b strings.Builder
	b.Grow(3*18 + len(digest))
	b.WriteString("r" + shortHash(r.Route))
	b.WriteString(".m" + shortHash(r.Model))
	b.WriteString(".s" + shortHash(r.Scope))
	b.WriteString("." + digest)
	return Key(b.String())
}

// shortHash is 8 bytes of SHA-256 in hex: enough to keep routes, models and
// tenants apart in purge patterns.
func shortHash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:8])
}

// Selector picks entries to purge. Set fields must all match; All alone
// matches everything. Key, if set, is exact and excludes the others.
type Selector struct {
	Key Key `json:"key,omitempty"`
	// Tenant is matched against the Request.Scope the key was made with.
	Tenant string `json:"tenant,omitempty"`
	Route  string `json:"route,omitempty"`
	Model  string `json:"model,omitempty"`
	All    bool   `json:"all,omitempty"`
}

// Validate refuses an empty selector (which would be a silent purge-all)
// and mixed ones that cannot mean what they say.
func (s Selector) Validate() error {
	dims := s.Tenant != "" || s.Route != "" || s.Model != ""
	switch {
	case s.All && (dims || s.Key != ""):
		return errors.New("all cannot be combined with other selectors")
	case s.Key != "" && dims:
		return errors.New("key cannot be combined with tenant, route or model")
	case s.Key != "" && !validKey(string(s.Key)):
		return errors.New("key is not a cache key (as in the Cache-Status key parameter)")
	case !s.All && s.Key == "" && !dims:
		return errors.New("name a key, tenant, route or model, or set all")
	}
	return nil
}

// Pattern is the selector as a glob over key strings (only hex digits,
// letters r/m/s, dots and '*', so it is also a valid Redis SCAN pattern).
// A Key selector's pattern is the key itself.
func (s Selector) Pattern() string {
	if s.Key != "" {
		return string(s.Key)
	}
	part := func(prefix, v string) string {
		if v == "" {
			return prefix + "*"
		}
		return prefix + shortHash(v)
	}
	return part("r", s.Route) + "." + part("m", s.Model) + "." + part("s", s.Tenant) + ".*"
}

// Matches reports whether key k is selected.
func (s Selector) Matches(k Key) bool {
	if s.All {
		return true
	}
	if s.Key != "" {
		return k == s.Key
	}
	parts := strings.SplitN(string(k), ".", 4)
	if len(parts) != 4 {
		return false
	}
	return (s.Route == "" || parts[0] == "r"+shortHash(s.Route)) &&
		(s.Model == "" || parts[1] == "m"+shortHash(s.Model)) &&
		(s.Tenant == "" || parts[2] == "s"+shortHash(s.Tenant))
}

func validKey(k string) bool {
	parts := strings.Split(k, ".")
	if len(parts) != 4 {
		return false
	}
	for i, p := range parts {
		if i < 3 {
			if len(p) != 17 || p[0] != "rms"[i] {
				return false
			}
			p = p[1:]
		} else if len(p) != 32 {
			return false
		}
		if _, err := hex.DecodeString(p); err != nil {
			return false
		}
	}
	return true
}
