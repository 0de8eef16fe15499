package xds

import (
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/infergate/infergate/config"
)

// manyRoutes is a config with n routes over four pools and two policies:
// path prefixes, a header match on every third route and a canary split
// on every tenth.
func manyRoutes(n int) string {
	var b strings.Builder
	b.WriteString(`engine:
  listen: 127.0.0.1:1
xds:
  policies:
    cached: {cache: semantic, ttl: 10m, requests_per_second: 20}
    plain: {cache: "off"}
  pools:
    - {name: p0, endpoints: ["127.0.0.1:9000"]}
    - {name: p1, endpoints: ["127.0.0.1:9001"]}
    - {name: p2, endpoints: ["127.0.0.1:9002"]}
    - {name: p3, endpoints: ["127.0.0.1:9003"]}
  listeners:
    - name: ingress
      virtual_hosts:
        - name: all
          routes:
`)
	for i := range n {
		fmt.Fprintf(&b, "            - name: r%d\n              match: {prefix: /r%d/", i, i)
		if i%3 == 0 {
			fmt.Fprintf(&b, ", headers: [{name: x-tenant-id, exact: t%d}]", i)
		}
		b.WriteString("}\n")
		if i%10 == 0 {
			fmt.Fprintf(&b, "              destinations: [{pool: p%d, weight: 90}, {pool: p%d, weight: 10}]\n", i%4, (i+1)%4)
		} else {
			fmt.Fprintf(&b, "              pool: p%d\n", i%4)
		}
		fmt.Fprintf(&b, "              policy: %s\n", []string{"cached", "plain"}[i%2])
	}
	return b.String()
}

// BenchmarkSnapshotBuild times one accepted change: validate the model,
// build every resource, run the generated validation on all of them and
// the cross-checks, and cut the snapshot of one connected Envoy.
func BenchmarkSnapshotBuild(b *testing.B) {
	for _, n := range []int{100, 1000, 10000} {
		b.Run(fmt.Sprintf("routes=%d", n), func(b *testing.B) {
			cfg, err := config.Parse("bench.yaml", []byte(manyRoutes(n)))
			if err != nil {
				b.Fatal(err)
			}
			s, err := newServer(cfg, "", slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())
			if err != nil {
				b.Fatal(err)
			}
			s.pub.addNode("envoy/bench", &corev3.Node{Id: "bench", UserAgentName: "envoy"})
			m := modelOf(cfg)
			routes := m.routing.Listeners[0].VirtualHosts[0].Routes
			i := 0
			for b.Loop() {
				i++
				routes[0].Timeout = time.Duration(i) * time.Second // a real change every time
				if _, err := s.apply(m, "bench", ""); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkPushToAck measures, with n grpc-go clients on loopback (each
// its own node and ADS stream), the time from sending a route change to
// each client's ACK of it, as the control plane observes it.
func BenchmarkPushToAck(b *testing.B) {
	for _, n := range []int{1, 10, 100} {
		b.Run(fmt.Sprintf("clients=%d", n), func(b *testing.B) {
			be := backend(b)
			s := startServer(b, twoPools(be, be, "pool: a"))
			for i := range n {
				cc := grpcClient(b, s.ADSAddr(), fmt.Sprintf("bench-%d", i), "ingress")
				servedBy(b, cc, be)
			}
			var latencies []float64
			i := 0
			for b.Loop() {
				i++
				m := s.currentModel()
				m.routing.Listeners[0].VirtualHosts[0].Routes[0].Timeout = time.Duration(i) * time.Second
				if _, err := s.apply(m, "bench", ""); err != nil {
					b.Fatal(err)
				}
				latencies = append(latencies, waitAllAcked(b, s, n)...)
			}
			sort.Float64s(latencies)
			b.ReportMetric(quantile(latencies, 0.50)*1e3, "p50-ms")
			b.ReportMetric(quantile(latencies, 0.99)*1e3, "p99-ms")
		})
	}
}

// waitAllAcked waits until every connected node has ACKed the route
// version just sent and returns their push-to-ACK times.
func waitAllAcked(b *testing.B, s *testServer, n int) []float64 {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		nodes := s.Nodes()
		var out []float64
		for _, ns := range nodes {
			ts := ns.Types["route"]
			if ts != nil && ts.SentVersion == ts.AckedVersion && ts.SentVersion == fmt.Sprint(s.pub.currentGeneration()) {
				out = append(out, ts.AnswerSeconds)
			}
		}
		if len(out) == n {
			return out
		}
		time.Sleep(200 * time.Microsecond)
	}
	b.Fatalf("not every client ACKed within 30s")
	return nil
}

func quantile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[int(q*float64(len(sorted)-1))]
}
