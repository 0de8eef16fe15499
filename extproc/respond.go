package extproc

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/infergate/infergate/extproc/cache"
)

// Header names the server reads or writes.
const (
	headerCacheStatus  = "cache-status"
	headerAge          = "age"
	headerRetryAfter   = "retry-after"
	headerRLPolicy     = "ratelimit-policy"
	headerRateLimit    = "ratelimit"
	headerCacheControl = "cache-control"
	headerContentType  = "content-type"
	cacheName          = "infergate"
)

// headers is a request's or response's header map as Envoy sent it, keys
// lower case, the values of a repeated field joined with ", " (RFC 9110
// §5.3), so that "Cache-Control: private" on a second line still counts.
type headers map[string]string

func readHeaders(hm *corev3.HeaderMap) headers {
	h := make(headers, len(hm.GetHeaders()))
	for _, hv := range hm.GetHeaders() {
		k := strings.ToLower(hv.GetKey())
		// Envoy fills raw_value; grpc-go's client fills value.
		v := string(hv.GetRawValue())
		if v == "" {
			v = hv.GetValue()
		}
		if prev, dup := h[k]; dup {
			v = prev + ", " + v
		}
		h[k] = v
	}
	return h
}

// directives parses a Cache-Control value into its lower-case directive
// names.
func directives(v string) map[string]bool {
	d := map[string]bool{}
	for _, part := range strings.Split(v, ",") {
		name, _, _ := strings.Cut(strings.TrimSpace(part), "=")
		if name != "" {
			d[strings.ToLower(name)] = true
		}
	}
	return d
}

// sharedMaxAge is a response's freshness lifetime for a shared cache
// (RFC 9111 §4.2.1: s-maxage, else max-age); ok is false when it names
// neither. A malformed value counts as 0, stale, as RFC 9111 §1.2.2 asks.
func sharedMaxAge(v string) (time.Duration, bool) {
	var maxAge string
	found := false
	for _, part := range strings.Split(v, ",") {
		name, value, _ := strings.Cut(strings.TrimSpace(part), "=")
		switch strings.ToLower(name) {
		case "s-maxage":
			return deltaSeconds(value), true
		case "max-age":
			maxAge, found = value, true
		}
	}
	if !found {
		return 0, false
	}
	return deltaSeconds(maxAge), true
}

func deltaSeconds(v string) time.Duration {
	n, err := strconv.ParseInt(strings.Trim(strings.TrimSpace(v), `"`), 10, 64)
	if err != nil || n <= 0 {
		return 0
	}
	if n > int64(math.MaxInt64/time.Second) {
		n = int64(math.MaxInt64 / time.Second)
	}
	return time.Duration(n) * time.Second
}

// mutation collects header sets for one response.
type mutation struct{ set []*corev3.HeaderValueOption }

func (m *mutation) add(k, v string) {
	m.set = append(m.set, &corev3.HeaderValueOption{
		Header:       &corev3.HeaderValue{Key: k, RawValue: []byte(v)},
		AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
	})
}

// proto is the HeaderMutation, nil when there is nothing to set (also for
// a nil *mutation).
func (m *mutation) proto() *extprocv3.HeaderMutation {
	if m == nil || len(m.set) == 0 {
		return nil
	}
	return &extprocv3.HeaderMutation{SetHeaders: m.set}
}

func common(m *mutation, clearRoute bool) *extprocv3.CommonResponse {
	return &extprocv3.CommonResponse{HeaderMutation: m.proto(), ClearRouteCache: clearRoute && m.proto() != nil}
}

func requestHeadersResponse(m *mutation) *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{
		RequestHeaders: &extprocv3.HeadersResponse{Response: common(m, false)}}}
}

func requestBodyResponse(m *mutation, clearRoute bool) *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{
		RequestBody: &extprocv3.BodyResponse{Response: common(m, clearRoute)}}}
}

func responseHeadersResponse(m *mutation) *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{
		ResponseHeaders: &extprocv3.HeadersResponse{Response: common(m, false)}}}
}

func responseBodyResponse(m *mutation) *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{
		ResponseBody: &extprocv3.BodyResponse{Response: common(m, false)}}}
}

func requestTrailersResponse() *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestTrailers{
		RequestTrailers: &extprocv3.TrailersResponse{}}}
}

func responseTrailersResponse() *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseTrailers{
		ResponseTrailers: &extprocv3.TrailersResponse{}}}
}

// extendTimeout asks Envoy to wait up to d for the current message's
// answer (honoured up to the filter's max_message_timeout). Envoy treats
// it as out of band: the real answer still follows.
func extendTimeout(d time.Duration) *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{OverrideMessageTimeout: durationpb.New(d)}
}

func immediate(status int, m *mutation, body []byte, details string) *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ImmediateResponse{
		ImmediateResponse: &extprocv3.ImmediateResponse{
			Status:  &typev3.HttpStatus{Code: typev3.StatusCode(status)},
			Headers: m.proto(),
			Body:    body,
			Details: details,
		}}}
}

// notReplayed are response headers never stored: hop-by-hop,
// per-response (date, cookies, request ids), or rewritten on replay.
var notReplayed = map[string]bool{
	"connection": true, "keep-alive": true, "transfer-encoding": true, "upgrade": true,
	"proxy-connection": true, "te": true, "trailer": true, "content-length": true,
	"date": true, "set-cookie": true, "age": true, headerCacheStatus: true,
	headerRLPolicy: true, headerRateLimit: true, headerRetryAfter: true,
	"x-request-id": true, "server": true,
}

// storedHeaders picks the response headers a replay may carry.
func storedHeaders(h headers) []cache.Header {
	out := make([]cache.Header, 0, len(h))
	for k, v := range h {
		if strings.HasPrefix(k, ":") || strings.HasPrefix(k, "x-envoy-") {
			continue
		}
		if notReplayed[k] {
			continue
		}
		out = append(out, cache.Header{Name: k, Value: v})
	}
	return out
}

// cacheStatus formats an RFC 9211 Cache-Status member for this cache.
func cacheStatus(params ...string) string {
	return cacheName + "; " + strings.Join(params, "; ")
}

func keyParam(k cache.Key) string { return `key="` + string(k) + `"` }

func ttlParam(d time.Duration) string { return fmt.Sprintf("ttl=%d", int64(d/time.Second)) }
