package extproc_test

import (
	"context"
	"fmt"
	"io"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/infergate/infergate/policy"
)

// grpcClient is one connection to the server, as Envoy keeps one per
// worker thread.
func grpcClient(b *testing.B, addr string) (extprocv3.ExternalProcessorClient, context.Context) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = conn.Close() })
	p := policy.Policy{Route: "embed"}
	p.Normalize()
	ctx := metadata.AppendToOutgoingContext(context.Background(), policy.MetadataKey, p.Encode())
	return extprocv3.NewExternalProcessorClient(conn), ctx
}

var benchHeaders = requestHeaders(false, ":method", "POST", ":path", "/v1/embeddings", ":authority", "infergate.local",
	"content-type", "application/json", "x-tenant-id", "acme")

// oneRequest runs the request half of a stream (headers, body) and, for a
// miss, a 200 response; it returns whether the answer was a cache hit.
func oneRequest(client extprocv3.ExternalProcessorClient, ctx context.Context, reqBody []byte) (bool, error) {
	// Cancelling releases the stream even when it ended on an
	// ImmediateResponse the client did not read to the end.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := client.Process(ctx)
	if err != nil {
		return false, err
	}
	defer func() { _ = s.CloseSend() }()
	if err := s.Send(benchHeaders); err != nil {
		return false, err
	}
	if _, err := s.Recv(); err != nil {
		return false, err
	}
	if err := s.Send(body(string(reqBody), false)); err != nil {
		return false, err
	}
	r, err := s.Recv()
	if err != nil {
		return false, err
	}
	if r.GetImmediateResponse() != nil {
		return true, nil
	}
	for _, m := range []*extprocv3.ProcessingRequest{
		{Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{
			Headers: requestHeaders(false, ":status", "200", "content-type", "application/json").GetRequestHeaders().GetHeaders()}}},
		body(`{"object":"list","data":[{"embedding":[0.1,0.2]}],"usage":{"total_tokens":8}}`, true),
	} {
		if err := s.Send(m); err != nil {
			return false, err
		}
		if _, err := s.Recv(); err != nil {
			return false, err
		}
	}
	if _, err := s.Recv(); err != io.EOF {
		return false, fmt.Errorf("stream did not end: %v", err)
	}
	return false, nil
}

func BenchmarkGRPCHit(b *testing.B) {
	srv := startExtProc(b, nil)
	client, ctx := grpcClient(b, srv.Addr())
	req := []byte(embedBody)
	if _, err := oneRequest(client, ctx, req); err != nil {
		b.Fatal(err)
	}
	lat := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	for b.Loop() {
		start := time.Now()
		hit, err := oneRequest(client, ctx, req)
		if err != nil || !hit {
			b.Fatalf("hit=%v err=%v", hit, err)
		}
		lat = append(lat, time.Since(start))
	}
	reportPercentiles(b, lat)
}

func BenchmarkGRPCMiss(b *testing.B) {
	srv := startExtProc(b, nil)
	client, ctx := grpcClient(b, srv.Addr())
	lat := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		req := fmt.Appendf(nil, `{"model":"use-lite","input":"sentence %d"}`, i)
		start := time.Now()
		if hit, err := oneRequest(client, ctx, req); err != nil || hit {
			b.Fatalf("hit=%v err=%v", hit, err)
		}
		lat = append(lat, time.Since(start))
	}
	reportPercentiles(b, lat)
}

// BenchmarkGRPCHitParallel is the throughput of one ext_proc process
// answering cache hits on many concurrent streams (GOMAXPROCS × 16).
func BenchmarkGRPCHitParallel(b *testing.B) {
	srv := startExtProc(b, nil)
	client, ctx := grpcClient(b, srv.Addr())
	req := []byte(embedBody)
	if _, err := oneRequest(client, ctx, req); err != nil {
		b.Fatal(err)
	}
	var failed atomic.Int64
	b.SetParallelism(16)
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if hit, err := oneRequest(client, ctx, req); err != nil || !hit {
				failed.Add(1)
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "req/s")
	if failed.Load() > 0 {
		b.Fatalf("%d requests failed", failed.Load())
	}
}

func reportPercentiles(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1e3, "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1e3, "p99-µs")
}
