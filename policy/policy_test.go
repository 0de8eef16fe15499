package policy

import (
	"strings"
	"testing"
	"time"
)

func TestRoundTrip(t *testing.T) {
	p := Policy{Route: "chat", Cache: CacheSemantic, TTL: 90 * time.Second, SemanticThreshold: 0.95,
		TenantHeader: "x-team", APIKeyHeader: "x-api-key", SharedCache: true, CacheNonDeterministic: true, RequestsPerSecond: 2.5,
		TokenBudget: 10000, TokenWindow: time.Hour, Priority: 9}
	p.Normalize()
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	got, err := Decode(p.Encode())
	if err != nil {
		t.Fatal(err)
	}
	if got != p {
		t.Fatalf("round trip changed the policy:\n got %+v\nwant %+v", got, p)
	}
	if got.Burst != 3 {
		t.Errorf("burst defaults to the rate rounded up: got %d, want 3", got.Burst)
	}
}

func TestDecodeFillsDefaults(t *testing.T) {
	got, err := Decode(`{"route":"r","future_field":1}`)
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.Route = "r"
	if got != want {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	if got.Cache != "exact" || got.TTL != 5*time.Minute || got.Priority != 5 || got.TenantHeader != "x-tenant-id" {
		t.Errorf("documented defaults changed: %+v", got)
	}
}

func TestDecodeRefusesBadInput(t *testing.T) {
	for in, want := range map[string]string{
		`not json`:                   "policy:",
		`{"cache":"sometimes"}`:      "cache:",
		`{"ttl":"soon"}`:             "ttl:",
		`{"semantic_threshold":1.5}`: "semantic_threshold:",
		`{"tenant_header":"X Team"}`: "tenant_header:",
		`{"priority":12}`:            "priority:",
		`{"rps":-1}`:                 "requests_per_second:",
		`{"token_window":"-1m"}`:     "token_window:",
		`{"token_budget":-5}`:        "token_budget:",
		`{"api_key_header":":path"}`: "api_key_header:",
	} {
		_, err := Decode(in)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Decode(%s) = %v, want an error naming %q", in, err, want)
		}
	}
}
