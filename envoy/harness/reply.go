package harness

import (
	"bytes"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/codes"
)

// localReply is Envoy answering the client itself. It travels as an error
// through the phase that produced it.
type localReply struct {
	status     int
	body       []byte
	headers    *extprocv3.HeaderMutation
	grpcStatus *uint32
	details    string
	// encode marks replies made by the router or the filter manager
	// (no route, upstream failure, request too large): Envoy runs them
	// through the response phase of ext_proc. Replies made by ext_proc
	// itself are not processed again.
	encode bool
}

func (l *localReply) Error() string { return fmt.Sprintf("local reply %d: %s", l.status, l.details) }

// immediateReply is sendImmediateResponse: status default 200, also when
// invalid.
func immediateReply(ir *extprocv3.ImmediateResponse) *localReply {
	code := http.StatusOK
	if ir.GetStatus() != nil {
		code = int(ir.GetStatus().GetCode())
	}
	if !validHTTPStatus(code) {
		code = http.StatusOK
	}
	lr := &localReply{status: code, body: ir.GetBody(), headers: ir.GetHeaders(), details: ir.GetDetails()}
	if lr.details == "" {
		lr.details = "ext_proc_immediate_response"
	}
	lr.details = strings.Join(strings.Fields(lr.details), "_")
	if gs := ir.GetGrpcStatus(); gs != nil {
		s := gs.GetStatus()
		lr.grpcStatus = &s
	}
	return lr
}

// writeLocalReply is Envoy's sendLocalReply: text/plain body for HTTP, a
// trailers-only answer with grpc-status and grpc-message for gRPC.
func (f *filter) writeLocalReply(lr *localReply, out sink) {
	f.res.LocalReply = lr.details
	hdrs := lr.headerMap(f.isGRPC)
	if lr.headers != nil {
		rejected, _ := applyHeaderMutation(lr.headers, hdrs, false, permissiveChecker())
		f.res.RejectedHeaderMutations += rejected
	}
	code, _ := strconv.Atoi(mustGet(hdrs, ":status"))
	out.writeHeader(code, hdrs.httpHeader())
	if !f.isGRPC && len(lr.body) > 0 {
		_ = out.write(lr.body)
	}
}

func (lr *localReply) headerMap(grpcRequest bool) *headerMap {
	hdrs := &headerMap{}
	if grpcRequest {
		hdrs.add(":status", "200")
		hdrs.add("content-type", "application/grpc")
		gs := httpToGRPC(lr.status)
		if lr.grpcStatus != nil {
			gs = *lr.grpcStatus
		}
		hdrs.add("grpc-status", strconv.Itoa(int(gs)))
		if len(lr.body) > 0 {
			hdrs.add("grpc-message", percentEncode(string(lr.body)))
		}
		return hdrs
	}
	hdrs.add(":status", strconv.Itoa(lr.status))
	if len(lr.body) > 0 {
		hdrs.add("content-length", strconv.Itoa(len(lr.body)))
		hdrs.add("content-type", "text/plain")
	}
	return hdrs
}

// asMessage turns a router or filter-manager reply into the response that
// then goes through ext_proc's response phase.
func (lr *localReply) asMessage() *message {
	hdrs := lr.headerMap(false)
	m := &message{headers: hdrs, length: int64(len(lr.body))}
	if len(lr.body) > 0 {
		m.body = bytes.NewReader(lr.body)
	}
	return m
}

func mustGet(m *headerMap, k string) string {
	v, _ := m.get(k)
	return v
}

// httpToGRPC is Envoy's Grpc::Utility::httpToGrpcStatus.
func httpToGRPC(code int) uint32 {
	switch code {
	case 400:
		return uint32(codes.Internal)
	case 401:
		return uint32(codes.Unauthenticated)
	case 403:
		return uint32(codes.PermissionDenied)
	case 404:
		return uint32(codes.Unimplemented)
	case 429, 502, 503, 504:
		return uint32(codes.Unavailable)
	}
	return uint32(codes.Unknown)
}

func percentEncode(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < ' ' || c > '~' || c == '%' {
			fmt.Fprintf(&b, "%%%02X", c)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}
