package policy

import (
	"encoding/json"
	"reflect"
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
	big := Default()
	big.Route, big.RequestsPerSecond, big.Burst = "big-model", 1, 1
	p.ModelRoutes = []ModelRoute{{Model: "big", Match: json.RawMessage(`{"prefix":"/v1/"}`), Policy: big}}
	got, err := Decode(p.Encode())
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, p) {
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
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	if got.Cache != "exact" || got.TTL != 5*time.Minute || got.Priority != 5 || got.TenantHeader != "x-tenant-id" {
		t.Errorf("documented defaults changed: %+v", got)
	}
}

func TestDecodeRefusesBadInput(t *testing.T) {
	for in, want := range map[string]string{
		`not json`:                          "policy:",
		`{"cache":"sometimes"}`:             "cache:",
		`{"ttl":"soon"}`:                    "ttl:",
		`{"semantic_threshold":1.5}`:        "semantic_threshold:",
		`{"tenant_header":"X Team"}`:        "tenant_header:",
		`{"priority":12}`:                   "priority:",
		`{"rps":-1}`:                        "requests_per_second:",
		`{"token_window":"-1m"}`:            "token_window:",
		`{"token_budget":-5}`:               "token_budget:",
		`{"api_key_header":":path"}`:        "api_key_header:",
		`{"tenant_header":"authorization"}`: `api_key_header: "authorization" is also the tenant_header`,
		`{"model_routes":[{"model":"m","match":{},"policy":{"priority":0.5}}]}`: "policy:",
		`{"model_routes":[{"model":"","match":{},"policy":{}}]}`:                "model_routes[0]",
		`{"model_routes":[{"model":"m","policy":{}}]}`:                          "model_routes[0]",
		`{"model_routes":[{"model":"m","match":{},"policy":{"cache":"x"}}]}`:    "model_routes[0]: policy: cache:",
	} {
		_, err := Decode(in)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Decode(%s) = %v, want an error naming %q", in, err, want)
		}
	}
}

// Whatever arrives as metadata, Decode returns an error or a policy that
// survives its own round trip unchanged.
func FuzzDecode(f *testing.F) {
	f.Add(`{"route":"r","cache":"semantic","ttl":"90s","rps":2.5,"token_budget":100}`)
	f.Add(`{"model_routes":[{"model":"m","match":{"prefix":"/v1/"},"policy":{"route":"m","rps":1}}]}`)
	f.Add(`{"ttl":"-1s"}`)
	f.Fuzz(func(t *testing.T, in string) {
		p, err := Decode(in)
		if err != nil {
			return
		}
		again, err := Decode(p.Encode())
		if err != nil {
			t.Fatalf("Decode(%s) accepted, but its encoding %s is refused: %v", in, p.Encode(), err)
		}
		if !reflect.DeepEqual(again, p) {
			t.Fatalf("round trip of %s changed it:\n got %+v\nwant %+v", in, again, p)
		}
	})
}
