// Package harnesstest runs a real ext_proc gRPC server on 127.0.0.1 whose
// answers a test scripts, for testing the harness itself and anything else
// that talks to an ext_proc server the way Envoy does.
package harnesstest

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// Script handles one Process stream (one HTTP request). Returning nil ends
// the stream with OK; returning a gRPC status error ends it with that status.
type Script func(s *Stream) error

// Stream is one Process stream as the script sees it.
type Stream struct {
	inner extprocv3.ExternalProcessor_ProcessServer
	// Metadata is the stream's initial gRPC metadata.
	Metadata metadata.MD
}

// Recv returns the next message; io.EOF when Envoy half-closed the stream.
func (s *Stream) Recv() (*extprocv3.ProcessingRequest, error) { return s.inner.Recv() }

// Send answers.
func (s *Stream) Send(r *extprocv3.ProcessingResponse) error { return s.inner.Send(r) }

// Context ends when the stream does.
func (s *Stream) Context() context.Context { return s.inner.Context() }

// Server is a scripted ext_proc server.
type Server struct {
	// Addr is host:port to give to harness.New.
	Addr   string
	script Script
	grpc   *grpc.Server

	mu       sync.Mutex
	streams  int
	metadata []metadata.MD
}

// Start serves script on 127.0.0.1:0 until the test ends.
func Start(t testing.TB, script Script) *Server {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("harnesstest: listen: %v", err)
	}
	s := &Server{Addr: lis.Addr().String(), script: script, grpc: grpc.NewServer()}
	extprocv3.RegisterExternalProcessorServer(s.grpc, &service{s: s})
	go func() { _ = s.grpc.Serve(lis) }()
	t.Cleanup(s.grpc.Stop)
	return s
}

// Streams is how many Process streams were opened.
func (s *Server) Streams() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.streams
}

// Metadata is each stream's initial metadata, in order of arrival.
func (s *Server) Metadata() []metadata.MD {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]metadata.MD(nil), s.metadata...)
}

type service struct {
	extprocv3.UnimplementedExternalProcessorServer
	s *Server
}

func (svc *service) Process(stream extprocv3.ExternalProcessor_ProcessServer) error {
	md, _ := metadata.FromIncomingContext(stream.Context())
	svc.s.mu.Lock()
	svc.s.streams++
	svc.s.metadata = append(svc.s.metadata, md)
	svc.s.mu.Unlock()
	return svc.s.script(&Stream{inner: stream, Metadata: md})
}

// Answer builds the response to one message; returning nil sends nothing.
type Answer func(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse

// Loop is a Script that answers every message with answer until Envoy
// half-closes the stream.
func Loop(answer Answer) Script {
	return func(s *Stream) error {
		for {
			req, err := s.Recv()
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				// Envoy reset the stream; nothing more to answer.
				return nil
			}
			if resp := answer(req); resp != nil {
				if err := s.Send(resp); err != nil {
					return nil
				}
			}
		}
	}
}

// ContinueAll answers every message with CONTINUE and no changes.
func ContinueAll() Script { return Loop(Continue) }

// Continue is the do-nothing answer matching req.
func Continue(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
	return Reply(req, &extprocv3.CommonResponse{})
}

// Reply answers req with common in the matching oneof case (a trailers
// message gets common.header_mutation).
func Reply(req *extprocv3.ProcessingRequest, common *extprocv3.CommonResponse) *extprocv3.ProcessingResponse {
	switch req.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{
			RequestHeaders: &extprocv3.HeadersResponse{Response: common}}}
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{
			ResponseHeaders: &extprocv3.HeadersResponse{Response: common}}}
	case *extprocv3.ProcessingRequest_RequestBody:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{
			RequestBody: &extprocv3.BodyResponse{Response: common}}}
	case *extprocv3.ProcessingRequest_ResponseBody:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{
			ResponseBody: &extprocv3.BodyResponse{Response: common}}}
	case *extprocv3.ProcessingRequest_RequestTrailers:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestTrailers{
			RequestTrailers: &extprocv3.TrailersResponse{HeaderMutation: common.GetHeaderMutation()}}}
	case *extprocv3.ProcessingRequest_ResponseTrailers:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseTrailers{
			ResponseTrailers: &extprocv3.TrailersResponse{HeaderMutation: common.GetHeaderMutation()}}}
	}
	return nil
}

// Kind names the message's oneof case: "request_headers", "request_body",
// "request_trailers", "response_headers", "response_body",
// "response_trailers".
func Kind(req *extprocv3.ProcessingRequest) string {
	switch req.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		return "request_headers"
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		return "response_headers"
	case *extprocv3.ProcessingRequest_RequestBody:
		return "request_body"
	case *extprocv3.ProcessingRequest_ResponseBody:
		return "response_body"
	case *extprocv3.ProcessingRequest_RequestTrailers:
		return "request_trailers"
	case *extprocv3.ProcessingRequest_ResponseTrailers:
		return "response_trailers"
	}
	return "unknown"
}

// Header returns the raw_value (or value) of key in a headers message.
func Header(req *extprocv3.ProcessingRequest, key string) (string, bool) {
	h := req.GetRequestHeaders()
	if h == nil {
		h = req.GetResponseHeaders()
	}
	for _, hv := range h.GetHeaders().GetHeaders() {
		if hv.GetKey() == key {
			if len(hv.GetRawValue()) > 0 {
				return string(hv.GetRawValue()), true
			}
			return hv.GetValue(), true
		}
	}
	return "", false
}
