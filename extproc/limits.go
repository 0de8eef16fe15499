package extproc

import (
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/infergate/infergate/extproc/ratelimit"
	"github.com/infergate/infergate/internal/apierror"
	"github.com/infergate/infergate/policy"
)

// enforceLimits checks the token budget (nothing taken: the cost is known
// only from the response) and takes one request from the request rate. It
// returns the 429 or 503 answer, or nil when the request may go on.
func (st *stream) enforceLimits() *extprocv3.ProcessingResponse {
	p := st.policy
	var limits []ratelimit.Limit
	if p.TokenBudget > 0 {
		limits = append(limits, tokenLimit(p))
	}
	if p.RequestsPerSecond > 0 {
		limits = append(limits, requestLimit(p))
	}
	for _, l := range limits {
		n := 1.0
		if l.Name == "tokens" {
			n = 0
		}
		d, err := st.s.limiter.Take(st.ctx, st.limitKey(l.Name), l, n)
		if err != nil {
			st.s.metrics.rateLimit.WithLabelValues(p.Route, l.Name, "unavailable").Inc()
			m := &mutation{}
			m.add(headerRetryAfter, "1")
			m.add(headerContentType, "application/json")
			return immediate(http.StatusServiceUnavailable, m, apierror.Body(st.path, http.StatusServiceUnavailable, "rate limiter unavailable", ""), "infergate_ratelimit_unavailable")
		}
		st.checks = append(st.checks, limitCheck{limit: l, window: capacityOf(l), decision: d})
		if !d.Allowed {
			st.s.metrics.rateLimit.WithLabelValues(p.Route, l.Name, "denied").Inc()
			m := &mutation{}
			limitHeaders(m, st.checks)
			m.add(headerRetryAfter, strconv.FormatInt(max(1, seconds(d.RetryAfter)), 10))
			m.add(headerContentType, "application/json")
			msg := "request rate limit exceeded"
			if l.Name == "tokens" {
				msg = "token budget exhausted"
			}
			return immediate(http.StatusTooManyRequests, m, apierror.Body(st.path, http.StatusTooManyRequests, msg, apierror.CodeRateLimitExceeded), "infergate_ratelimit_"+l.Name)
		}
		st.s.metrics.rateLimit.WithLabelValues(p.Route, l.Name, "allowed").Inc()
	}
	return nil
}

func requestLimit(p policy.Policy) ratelimit.Limit {
	return ratelimit.Limit{Name: "requests", Quota: p.RequestsPerSecond, Window: time.Second, Burst: float64(p.Burst)}
}

func tokenLimit(p policy.Policy) ratelimit.Limit {
	return ratelimit.Limit{Name: "tokens", Quota: float64(p.TokenBudget), Window: p.TokenWindow, Burst: float64(p.TokenBudget)}
}

// capacityOf is the window a limit's full quota (its burst) refills in.
func capacityOf(l ratelimit.Limit) time.Duration {
	return time.Duration(l.Burst * float64(l.Window) / l.Quota)
}

// limitKey names one limit's state: the route is length-prefixed so that
// no route and tenant pair can spell another's key.
func (st *stream) limitKey(name string) string {
	return strconv.Itoa(len(st.policy.Route)) + ":" + st.policy.Route + "|" + st.tenant + "|" + name
}

// limitHeaders adds the IETF draft RateLimit-Policy and RateLimit fields
// (draft-ietf-httpapi-ratelimit-headers, structured-field form) for the
// limits a request was checked against.
func limitHeaders(m *mutation, checks []limitCheck) {
	if len(checks) == 0 {
		return
	}
	policies := make([]string, 0, len(checks))
	states := make([]string, 0, len(checks))
	for _, c := range checks {
		// The window is whole seconds, so the quota is what the sustained
		// rate allows in it (at least the burst): rounding the burst's
		// refill time up alone would advertise a slower rate.
		w := seconds(c.window)
		q := max(int64(c.limit.Burst), int64(math.Round(c.limit.Quota*float64(w)*float64(time.Second)/float64(c.limit.Window))))
		policies = append(policies, fmt.Sprintf(`"%s";q=%d;w=%d`, c.limit.Name, q, w))
		reset := c.decision.Reset
		if !c.decision.Allowed {
			reset = c.decision.RetryAfter
		}
		states = append(states, fmt.Sprintf(`"%s";r=%d;t=%d`, c.limit.Name, c.decision.Remaining, seconds(reset)))
	}
	m.add(headerRLPolicy, strings.Join(policies, ", "))
	m.add(headerRateLimit, strings.Join(states, ", "))
}

// seconds rounds d up to whole seconds, as delta-seconds fields require.
func seconds(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + time.Second - 1) / time.Second)
}

// limitCheck is one limit a request was checked against.
type limitCheck struct {
	limit    ratelimit.Limit
	window   time.Duration
	decision ratelimit.Decision
}
