package harness

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"net/http"
	"strconv"
	"strings"
)

// hopByHop are the connection headers Envoy's codecs never forward.
var hopByHop = map[string]bool{
	"connection": true, "keep-alive": true, "proxy-connection": true,
	"transfer-encoding": true, "upgrade": true, "te": true,
}

// requestMessage turns a client request into the header map Envoy's HTTP/1
// codec and connection manager build: pseudo headers, lower-case headers,
// x-forwarded-proto and a generated x-request-id.
func requestMessage(req *http.Request) *message {
	host := req.Host
	if host == "" && req.URL != nil {
		host = req.URL.Host
	}
	hdrs := &headerMap{}
	hdrs.add(":authority", host)
	hdrs.add(":path", req.URL.RequestURI())
	hdrs.add(":method", req.Method)
	hdrs.add(":scheme", "http")
	regular := req.Header.Clone()
	for k := range regular {
		if hopByHop[strings.ToLower(k)] || strings.EqualFold(k, "Host") {
			regular.Del(k)
		}
	}
	hdrs.appendHTTPHeader(regular)
	noBody := req.Body == nil || req.Body == http.NoBody || req.ContentLength == 0
	if req.ContentLength > 0 && !hdrs.has("content-length") {
		hdrs.add("content-length", strconv.FormatInt(req.ContentLength, 10))
	}
	if !hdrs.has("x-forwarded-proto") {
		hdrs.add("x-forwarded-proto", "http")
	}
	if !hdrs.has("x-request-id") {
		hdrs.add("x-request-id", newRequestID())
	}
	m := &message{headers: hdrs, length: req.ContentLength}
	if !noBody {
		m.body = req.Body
		m.trailers = func() http.Header { return nonEmpty(req.Trailer) }
	}
	return m
}

func nonEmpty(h http.Header) http.Header {
	out := http.Header{}
	for k, vs := range h {
		for _, v := range vs {
			if v != "" {
				out.Add(k, v)
			}
		}
	}
	return out
}

// route is the route table: Config.Route, or the single Upstream.
func (h *Harness) route(hdrs *headerMap) string {
	if h.cfg.Route == nil {
		return h.cfg.Upstream
	}
	header := hdrs.httpHeader()
	if a, ok := hdrs.get(":authority"); ok {
		header.Set("Host", a)
	}
	for _, name := range []string{":method", ":authority", ":path", ":scheme"} {
		if v, ok := hdrs.get(name); ok {
			header[name] = []string{v}
		}
	}
	path, _ := hdrs.get(":path")
	return h.cfg.Route(header, path)
}

// upstreamCollector gathers the request as it leaves the request phase.
type upstreamCollector struct {
	hdrs    *headerMap
	body    bytes.Buffer
	trailer *headerMap
}

func (u *upstreamCollector) headers(h *headerMap) error  { u.hdrs = h; return nil }
func (u *upstreamCollector) data(p []byte) error         { u.body.Write(p); return nil }
func (u *upstreamCollector) trailers(h *headerMap) error { u.trailer = h; return nil }

// forward is Envoy's router: pick the route (recomputed only if the cache
// was cleared), send the request upstream, and hand back the response as
// the message for the response phase. A missing route is a 404 and an
// upstream failure a 503, both local replies that still go through the
// response phase.
func (f *filter) forward(up *upstreamCollector) (*message, func(), error) {
	noop := func() {}
	route := f.route
	if f.routeCleared {
		route = f.h.route(up.hdrs)
	}
	if route == "" {
		lr := &localReply{status: http.StatusNotFound, details: "route_not_found"}
		f.res.LocalReply = lr.details
		return lr.asMessage(), noop, nil
	}
	if route == NoHealthyUpstream {
		lr := &localReply{status: http.StatusServiceUnavailable, body: []byte("no healthy upstream"), details: "no_healthy_upstream"}
		f.res.LocalReply = lr.details
		return lr.asMessage(), noop, nil
	}
	method, _ := up.hdrs.get(":method")
	path, _ := up.hdrs.get(":path")
	authority, _ := up.hdrs.get(":authority")
	body := up.body.Bytes()
	req, err := http.NewRequestWithContext(f.ctx, method, strings.TrimRight(route, "/")+path, bytes.NewReader(body))
	if err != nil {
		lr := &localReply{status: http.StatusServiceUnavailable, details: "upstream_invalid_request"}
		f.res.LocalReply = lr.details
		return lr.asMessage(), noop, nil
	}
	req.Host = authority
	req.Header = up.hdrs.httpHeader()
	for k := range req.Header {
		if hopByHop[strings.ToLower(k)] {
			req.Header.Del(k)
		}
	}
	req.Header.Del("Content-Length")
	if len(body) == 0 {
		req.Body = http.NoBody
	}
	if up.trailer != nil {
		req.Trailer = up.trailer.httpHeader()
		req.ContentLength = -1
	}
	f.res.Upstream = &UpstreamRequest{
		Method: method, URL: req.URL.String(), Host: authority,
		Header: req.Header.Clone(), Body: append([]byte(nil), body...), Trailer: req.Trailer.Clone(),
	}
	resp, err := f.h.http.Do(req)
	if err != nil {
		if f.ctx.Err() != nil {
			return nil, noop, f.ctx.Err()
		}
		body := []byte("upstream connect error or disconnect/reset before headers. reset reason: connection failure")
		lr := &localReply{status: http.StatusServiceUnavailable, body: body,
			details: "upstream_reset_before_response_started{connection_failure}"}
		f.res.LocalReply = lr.details
		return lr.asMessage(), noop, nil
	}
	hdrs := &headerMap{}
	hdrs.add(":status", strconv.Itoa(resp.StatusCode))
	regular := resp.Header.Clone()
	for k := range regular {
		if hopByHop[strings.ToLower(k)] {
			regular.Del(k)
		}
	}
	if resp.ContentLength >= 0 && regular.Get("Content-Length") == "" {
		regular.Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
	}
	hdrs.appendHTTPHeader(regular)
	m := &message{headers: hdrs, length: resp.ContentLength}
	if resp.ContentLength != 0 && method != http.MethodHead &&
		resp.StatusCode != http.StatusNoContent && resp.StatusCode != http.StatusNotModified {
		m.body = resp.Body
		m.trailers = func() http.Header { return nonEmpty(resp.Trailer) }
	}
	return m, func() { resp.Body.Close() }, nil
}

// sink is the client side of the connection.
type sink interface {
	writeHeader(status int, h http.Header)
	write(p []byte) error
	writeTrailer(h http.Header)
	headersSent() bool
	markReset()
}

// responseEmitter passes the response phase's output to the client.
type responseEmitter struct{ out sink }

func (r *responseEmitter) headers(h *headerMap) error {
	code, _ := strconv.Atoi(mustGet(h, ":status"))
	r.out.writeHeader(code, h.httpHeader())
	return nil
}
func (r *responseEmitter) data(p []byte) error { return r.out.write(p) }
func (r *responseEmitter) trailers(h *headerMap) error {
	r.out.writeTrailer(h.httpHeader())
	return nil
}

// recorder is the client for Harness.Do.
type recorder struct {
	status  int
	header  http.Header
	chunks  [][]byte
	trailer http.Header
	sent    bool
	reset   bool
}

func (r *recorder) writeHeader(status int, h http.Header) {
	r.status, r.header, r.sent = status, h, true
}
func (r *recorder) write(p []byte) error {
	if len(p) > 0 {
		r.chunks = append(r.chunks, append([]byte(nil), p...))
	}
	return nil
}
func (r *recorder) writeTrailer(h http.Header) { r.trailer = h }
func (r *recorder) headersSent() bool          { return r.sent }
func (r *recorder) markReset()                 { r.reset = true }

func (r *recorder) fill(res *Result) {
	res.Status, res.Header, res.Trailer, res.Chunks = r.status, r.header, r.trailer, r.chunks
	if res.Header == nil {
		res.Header = http.Header{}
	}
	res.Body = bytes.Join(r.chunks, nil)
	if res.Body == nil {
		res.Body = []byte{}
	}
	res.Reset = res.Reset || r.reset
}

// writerSink streams to a real client, flushing each chunk so server-sent
// events arrive as they are processed.
type writerSink struct {
	w     http.ResponseWriter
	sent  bool
	reset bool
}

func (s *writerSink) writeHeader(status int, h http.Header) {
	for k, vs := range h {
		s.w.Header()[k] = vs
	}
	s.w.WriteHeader(status)
	s.sent = true
	s.flush()
}
func (s *writerSink) write(p []byte) error {
	if _, err := s.w.Write(p); err != nil {
		return err
	}
	s.flush()
	return nil
}
func (s *writerSink) writeTrailer(h http.Header) {
	for k, vs := range h {
		s.w.Header()[http.TrailerPrefix+k] = vs
	}
}
func (s *writerSink) headersSent() bool { return s.sent }
func (s *writerSink) markReset()        { s.reset = true }
func (s *writerSink) flush() {
	if fl, ok := s.w.(http.Flusher); ok {
		fl.Flush()
	}
}

func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}
