package extproc

import (
	"bytes"
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"time"

	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/infergate/infergate/extproc/cache"
	"github.com/infergate/infergate/policy"
)

// sseTail is how much of the end of an event stream is kept to find the
// usage event and the final [DONE] when the stream itself is not kept.
const sseTail = 64 << 10

// ProcessingMode is the ext_proc filter's processing mode the server is
// written for: headers and whole (BUFFERED) bodies both ways, and trailers,
// which Envoy sends only when a message has them. A body followed by
// trailers arrives with end_of_stream false; the trailers message then
// completes it, so a response with trailers is still charged to the token
// budget.
var ProcessingMode = &extprocfilterv3.ProcessingMode{
	RequestHeaderMode:   extprocfilterv3.ProcessingMode_SEND,
	ResponseHeaderMode:  extprocfilterv3.ProcessingMode_SEND,
	RequestBodyMode:     extprocfilterv3.ProcessingMode_BUFFERED,
	ResponseBodyMode:    extprocfilterv3.ProcessingMode_BUFFERED,
	RequestTrailerMode:  extprocfilterv3.ProcessingMode_SEND,
	ResponseTrailerMode: extprocfilterv3.ProcessingMode_SEND,
}

// StreamedResponseMode is the processing mode the server asks for (as
// mode_override on response headers) when a response is an event stream,
// so that chunks reach the client as they come: ProcessingMode with a
// STREAMED response body. Envoy honours it only with allow_mode_override,
// and, when allowed_override_modes is set, only if it lists exactly this
// mode.
var StreamedResponseMode = &extprocfilterv3.ProcessingMode{
	RequestHeaderMode:   extprocfilterv3.ProcessingMode_SEND,
	ResponseHeaderMode:  extprocfilterv3.ProcessingMode_SEND,
	RequestBodyMode:     extprocfilterv3.ProcessingMode_BUFFERED,
	ResponseBodyMode:    extprocfilterv3.ProcessingMode_STREAMED,
	RequestTrailerMode:  extprocfilterv3.ProcessingMode_SEND,
	ResponseTrailerMode: extprocfilterv3.ProcessingMode_SEND,
}

// responseHeaders decides whether the response may be stored, switches an
// event stream to STREAMED, and adds RateLimit headers.
func (st *stream) responseHeaders(hm *extprocv3.HttpHeaders) error {
	if st.phase == wantRequestBody {
		// The upstream answered before the request was complete; the
		// request was never looked up, so there is nothing to store under.
		st.cacheable, st.bypass = false, "early-response"
	}
	h := readHeaders(hm.GetHeaders())
	st.respHdr = h
	st.status, _ = strconv.Atoi(h[":status"])
	st.sse = strings.HasPrefix(strings.ToLower(h[headerContentType]), "text/event-stream")
	cc := directives(h[headerCacheControl])
	switch {
	case !st.cacheable:
	case st.status != 200:
		st.storeNot = "status"
	case cc["no-store"]:
		st.storeNot = "no-store"
	case cc["private"]:
		st.storeNot = "private"
	default:
		if n, err := strconv.Atoi(h["content-length"]); err == nil && n > st.s.cfg.Cache.MaxEntryBytes {
			st.storeNot = "too-large"
		}
		if fresh, ok := sharedMaxAge(h[headerCacheControl]); ok {
			if fresh <= 0 {
				st.storeNot = "stale"
			}
			st.freshFor = fresh
		}
	}
	m := &mutation{}
	limitHeaders(m, st.checks)
	if !st.cacheable || st.storeNot != "" {
		// Followers need not wait for a body they cannot use.
		st.finishFlight(nil)
	}
	if hm.GetEndOfStream() {
		m.add(headerCacheStatus, st.responseComplete())
		st.phase = finished
		return st.send(responseHeadersResponse(m))
	}
	st.phase = wantResponseBody
	if st.sse || !st.cacheable || st.storeNot != "" {
		// The outcome is known now, or, for an event stream whose chunks
		// pass to the client as they come, the headers must go now.
		m.add(headerCacheStatus, st.cacheStatus(false))
	}
	resp := responseHeadersResponse(m)
	if st.sse {
		resp.ModeOverride = StreamedResponseMode
	}
	return st.send(resp)
}

// wantBody reports whether the response body must be kept: to store it,
// or to read its token usage.
func (st *stream) wantBody() bool {
	return (st.cacheable && st.storeNot == "") || st.policy.TokenBudget > 0
}

func (st *stream) responseBody(b *extprocv3.HttpBody) error {
	chunk := b.GetBody()
	st.respChunks++
	st.respBytes += int64(len(chunk))
	if st.sse {
		st.respEvents += int64(bytes.Count(chunk, []byte("data:")))
	}
	if st.wantBody() && !st.respOver {
		limit := st.s.cfg.MaxBodyBytes
		if st.sse {
			limit = st.s.cfg.Cache.MaxEntryBytes
		}
		if len(st.respBody)+len(chunk) > limit {
			st.respOver, st.respBody = true, nil
		} else {
			st.respBody = append(st.respBody, chunk...)
		}
	}
	if st.sse {
		st.respTail = append(st.respTail, chunk...)
		if len(st.respTail) > sseTail {
			st.respTail = append(st.respTail[:0], st.respTail[len(st.respTail)-sseTail:]...)
		}
	}
	if !b.GetEndOfStream() {
		return st.send(responseBodyResponse(nil))
	}
	// A Cache-Status not sent with the headers waits for the outcome:
	// BUFFERED, so Envoy still holds the response headers.
	report := !st.sse && st.cacheable && st.storeNot == "" && st.respChunks == 1
	status := st.responseComplete()
	st.phase = finished
	m := &mutation{}
	if report {
		m.add(headerCacheStatus, status)
	}
	return st.send(responseBodyResponse(m))
}

// responseComplete charges token usage, stores the response if it may be
// stored, releases followers, and returns the Cache-Status value.
func (st *stream) responseComplete() string {
	p := st.policy
	if p.TokenBudget > 0 {
		src := st.respBody
		if st.sse {
			src = st.respTail
		}
		st.chargeTokens(usageTokens(src, st.sse))
	}
	if !st.cacheable {
		return st.cacheStatus(false)
	}
	if st.storeNot == "" {
		switch {
		case st.respOver || len(st.respBody) > st.s.cfg.Cache.MaxEntryBytes:
			st.storeNot = "too-large"
		case st.sse && !endsWithDone(st.respTail):
			st.storeNot = "incomplete-stream"
		}
	}
	if st.storeNot != "" {
		st.s.metrics.stores.WithLabelValues(p.Route, st.storeNot).Inc()
		st.finishFlight(nil)
		return st.cacheStatus(false)
	}
	ttl := min(p.TTL, st.s.cfg.Cache.MaxTTL)
	if st.freshFor > 0 {
		// The origin's own freshness lifetime caps the route's TTL.
		ttl = min(ttl, st.freshFor)
	}
	e := &cache.Entry{Status: st.status, Header: storedHeaders(st.respHdr), Body: st.respBody, StoredAt: time.Now(), TTL: ttl}
	if err := st.s.store.Set(st.ctx, st.key, e); err != nil {
		st.storeNot = "too-large"
		st.s.metrics.stores.WithLabelValues(p.Route, st.storeNot).Inc()
		st.finishFlight(nil)
		return st.cacheStatus(false)
	}
	st.s.metrics.stores.WithLabelValues(p.Route, "stored").Inc()
	if p.Cache == policy.CacheSemantic {
		for _, stage := range st.s.stages {
			stage.Store(st.ctx, st.query, e)
		}
	}
	st.finishFlight(e)
	return st.cacheStatus(true)
}

// endsWithDone reports whether an event stream's last event is the
// OpenAI terminator "data: [DONE]"; the same words inside an earlier
// event's answer do not make a stream that broke off complete.
func endsWithDone(tail []byte) bool {
	tail = bytes.TrimRight(tail, "\r\n\t ")
	last := tail[bytes.LastIndexAny(tail, "\r\n")+1:]
	data, ok := bytes.CutPrefix(last, []byte("data:"))
	return ok && string(bytes.TrimSpace(data)) == "[DONE]"
}

// cacheStatus is the RFC 9211 value for a request that went upstream.
func (st *stream) cacheStatus(stored bool) string {
	params := []string{}
	switch {
	case st.bypass != "":
		params = append(params, "fwd=bypass")
	case st.noCache:
		params = append(params, "fwd=request")
	default:
		params = append(params, "fwd=miss")
	}
	if st.status != 0 {
		params = append(params, "fwd-status="+strconv.Itoa(st.status))
	}
	if stored {
		params = append(params, "stored", keyParam(st.key))
	}
	detail := st.bypass
	if detail == "" {
		detail = st.storeNot
	}
	if detail != "" {
		params = append(params, `detail="`+detail+`"`)
	}
	return cacheStatus(params...)
}

// usage is the OpenAI "usage" object; the engine's KServe v2 responses
// carry the same counts in "parameters".
type usage struct {
	PromptTokens     int64 `json:"prompt_tokens"`
	CompletionTokens int64 `json:"completion_tokens"`
	TotalTokens      int64 `json:"total_tokens"`
}

func (u *usage) tokens() int64 {
	if u == nil {
		return 0
	}
	if u.TotalTokens > 0 {
		return u.TotalTokens
	}
	return u.PromptTokens + u.CompletionTokens
}

type usageBody struct {
	Usage      *usage `json:"usage"`
	Parameters *usage `json:"parameters"`
}

// usageTokens reads the tokens a response used: from its JSON body, or from
// the last event of an event stream that carries usage.
// chargeTokens charges a successful answer to the route's token budget,
// once: tokens as its usage reports them, or, when it reports none (an
// event stream without stream_options.include_usage, an answer too large
// to read, a client gone mid-stream), an estimate: a token per 4 bytes
// of the request, plus one per streamed event or per 4 bytes of the
// answer. A failure was counted by the Redis connection; the budget is
// best effort on the way back.
func (st *stream) chargeTokens(tokens int64) {
	p := st.policy
	if p.TokenBudget <= 0 || st.charged || st.status < 200 || st.status > 299 {
		return
	}
	if tokens <= 0 {
		answer := (st.respBytes + 3) / 4
		if st.sse {
			answer = st.respEvents
		}
		tokens = (int64(len(st.body))+3)/4 + answer
	}
	if tokens <= 0 {
		return
	}
	st.charged = true
	_ = st.s.limiter.Charge(context.WithoutCancel(st.ctx), st.limitKey("tokens"), tokenLimit(p), float64(tokens))
}

func usageTokens(body []byte, sse bool) int64 {
	if !sse {
		var u usageBody
		if json.Unmarshal(body, &u) != nil {
			return 0
		}
		if t := u.Usage.tokens(); t > 0 {
			return t
		}
		return u.Parameters.tokens()
	}
	var last int64
	for _, line := range bytes.Split(body, []byte("\n")) {
		data, ok := bytes.CutPrefix(bytes.TrimSpace(line), []byte("data:"))
		if !ok || !bytes.Contains(data, []byte(`"usage"`)) {
			continue
		}
		var u usageBody
		if json.Unmarshal(bytes.TrimSpace(data), &u) == nil {
			if t := u.Usage.tokens(); t > 0 {
				last = t
			}
		}
	}
	return last
}
