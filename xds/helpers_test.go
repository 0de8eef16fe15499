package xds

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/resolver"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/infergate/infergate/config"
	"github.com/infergate/infergate/xds/endpointslice"

	// The grpc-go xDS client: an independent consumer of our ADS.
	grpcxds "google.golang.org/grpc/xds"
)

// testServer is a running control plane on loopback ports.
type testServer struct {
	*Server
	path string
	stop func()
}

// startServer writes configYAML (its xds section's listen and admin are
// replaced by free ports) to a file, and serves it with the file watched.
func startServer(t testing.TB, configYAML string) *testServer {
	t.Helper()
	path := filepath.Join(t.TempDir(), "infergate.yaml")
	writeFile(t, path, configYAML)
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return startConfig(t, cfg, path)
}

// startConfig serves cfg on free ports, watching path when it is not
// empty, as infergate up does: with the engine in the same process.
func startConfig(t testing.TB, cfg config.Config, path string) *testServer {
	t.Helper()
	return startWithKube(t, cfg, path, nil, EngineInProcess())
}

// startWithKube serves cfg with kube as the Kubernetes API.
func startWithKube(t testing.TB, cfg config.Config, path string, kube endpointslice.API, opts ...Option) *testServer {
	t.Helper()
	cfg.XDS.Listen, cfg.XDS.Admin = "127.0.0.1:0", "127.0.0.1:0"
	s, err := newServer(cfg, path, slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry(), kube, opts...)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	ts := &testServer{Server: s, path: path}
	ts.stop = func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}
	t.Cleanup(ts.stop)
	return ts
}

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	// Write then rename, as editors and config management do.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// backend starts a gRPC server (the health service stands in for an
// engine) and returns its address.
func backend(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	healthpb.RegisterHealthServer(s, health.NewServer())
	go s.Serve(ln)
	t.Cleanup(s.Stop)
	return ln.Addr().String()
}

// grpcClient dials xds:///target through grpc-go's own xDS client with a
// bootstrap naming our ADS server and node id.
func grpcClient(t testing.TB, ads, nodeID, target string) *grpc.ClientConn {
	t.Helper()
	bootstrap := fmt.Sprintf(`{
		"xds_servers": [{"server_uri": %q, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
		"node": {"id": %q, "cluster": "test"}
	}`, ads, nodeID)
	builder, err := grpcxds.NewXDSResolverWithConfigForTesting([]byte(bootstrap))
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient("xds:///"+target, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithResolvers(builder.(resolver.Builder)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// call makes one RPC and returns the address of the backend that served
// it; headers become request metadata, which routes can match.
func call(cc *grpc.ClientConn, headers ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if len(headers) > 0 {
		ctx = metadata.AppendToOutgoingContext(ctx, headers...)
	}
	var p peer.Peer
	if _, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p)); err != nil {
		return "", err
	}
	return p.Addr.String(), nil
}

// eventually retries f until it succeeds or the deadline passes; the
// deadline is generous, since only correctness is asserted here.
func eventually(t testing.TB, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// servedBy waits until RPCs (with headers) reach want.
func servedBy(t testing.TB, cc *grpc.ClientConn, want string, headers ...string) {
	t.Helper()
	eventually(t, "RPC served by "+want, func() error {
		got, err := call(cc, headers...)
		if err != nil {
			return err
		}
		if got != want {
			return fmt.Errorf("served by %s", got)
		}
		return nil
	})
}

// adminDo sends a request to the admin API and decodes a JSON answer.
func adminDo(t testing.TB, s *testServer, method, path, body string, out any) int {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+s.AdminAddr()+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if out != nil && len(bytes.TrimSpace(data)) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			t.Fatalf("%s %s: %v in %s", method, path, err, data)
		}
	}
	return resp.StatusCode
}

// adsStream is a raw state-of-the-world ADS client that presents itself
// as Envoy, for the Envoy-facing resources.
type adsStream struct {
	t      testing.TB
	stream discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	node   *corev3.Node
}

func dialADS(t testing.TB, ads string, nodeID string) *adsStream {
	t.Helper()
	cc, err := grpc.NewClient(ads, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return &adsStream{t: t, stream: st, node: &corev3.Node{Id: nodeID, Cluster: "infergate", UserAgentName: "envoy"}}
}

func (a *adsStream) send(req *discoveryv3.DiscoveryRequest) {
	a.t.Helper()
	req.Node = a.node
	if err := a.stream.Send(req); err != nil {
		a.t.Fatal(err)
	}
}

// fetch subscribes to typeURL (names empty: wildcard), ACKs the answer and
// returns its resources.
func (a *adsStream) fetch(typeURL string, names ...string) (*discoveryv3.DiscoveryResponse, []proto.Message) {
	a.t.Helper()
	a.send(&discoveryv3.DiscoveryRequest{TypeUrl: typeURL, ResourceNames: names})
	resp := a.recv()
	a.send(&discoveryv3.DiscoveryRequest{TypeUrl: typeURL, ResourceNames: names, VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()})
	return resp, unpack(a.t, resp.GetResources())
}

func (a *adsStream) recv() *discoveryv3.DiscoveryResponse {
	a.t.Helper()
	type result struct {
		resp *discoveryv3.DiscoveryResponse
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		r, err := a.stream.Recv()
		ch <- result{r, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			a.t.Fatal(r.err)
		}
		return r.resp
	case <-time.After(20 * time.Second):
		a.t.Fatal("no discovery response")
		return nil
	}
}

func unpack(t testing.TB, in []*anypb.Any) []proto.Message {
	t.Helper()
	out := make([]proto.Message, 0, len(in))
	for _, a := range in {
		m, err := a.UnmarshalNew()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}
