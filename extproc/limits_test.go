package extproc

import (
	"testing"

	"github.com/infergate/infergate/extproc/ratelimit"
	"github.com/infergate/infergate/policy"
)

// RateLimit-Policy states the sustained rate over a whole-second window:
// a client pacing itself by it must not go slower than the limit allows.
func TestRateLimitPolicyStatesTheSustainedRate(t *testing.T) {
	for _, tc := range []struct {
		rps   float64
		burst int
		want  string
	}{
		{100, 5, `"requests";q=100;w=1`},
		{1000, 1, `"requests";q=1000;w=1`},
		{3, 5, `"requests";q=6;w=2`},
		{0.01, 2, `"requests";q=2;w=200`},
	} {
		l := requestLimit(policy.Policy{RequestsPerSecond: tc.rps, Burst: tc.burst})
		m := &mutation{}
		limitHeaders(m, []limitCheck{{limit: l, window: capacityOf(l), decision: ratelimit.Decision{Allowed: true}}})
		if got := string(m.set[0].GetHeader().GetRawValue()); got != tc.want {
			t.Errorf("rps %g burst %d: RateLimit-Policy %s, want %s", tc.rps, tc.burst, got, tc.want)
		}
	}
}
