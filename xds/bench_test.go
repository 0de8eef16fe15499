//go:build unix

package xds

import (
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/infergate/infergate/config"
)

// manyRoutes is a config with n routes over four pools and two policies:
// path prefixes, a header match on every third route and a canary split
// on every tenth. The first models routes also match on a model, so every
// later route's policy carries them.
func manyRoutes(n, models int) string {
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
		if i < models {
			fmt.Fprintf(&b, ", model: m%d", i)
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

// BenchmarkSnapshotBuild times one accepted change, end to end: validate
// the model, build the resources, run the generated validation and the
// cross-checks, hash, and cut the snapshot of one connected Envoy. With
// changed=all every route differs from the last build (the cost of a cold
// start); with changed=1 one route does (an operator's edit).
func BenchmarkSnapshotBuild(b *testing.B) {
	for _, tc := range []struct{ routes, models int }{{100, 0}, {1000, 0}, {10000, 0}, {1000, 20}} {
		n := tc.routes
		for _, all := range []bool{true, false} {
			name := fmt.Sprintf("routes=%d/changed=1", n)
			if all {
				name = fmt.Sprintf("routes=%d/changed=all", n)
			}
			if tc.models > 0 {
				name += fmt.Sprintf("/model_routes=%d", tc.models)
			}
			b.Run(name, func(b *testing.B) {
				cfg, err := config.Parse("bench.yaml", []byte(manyRoutes(n, tc.models)))
				if err != nil {
					b.Fatal(err)
				}
				s, err := newServer(cfg, "", slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry(), nil)
				if err != nil {
					b.Fatal(err)
				}
				s.pub.addNode("envoy/bench", &corev3.Node{Id: "bench", UserAgentName: "envoy"})
				m := modelOf(cfg)
				routes := m.routing.Listeners[0].VirtualHosts[0].Routes
				i := 0
				cpu := cpuTime()
				for b.Loop() {
					i++
					routes[0].Timeout = time.Duration(i) * time.Second
					if all {
						for j := range routes {
							routes[j].Timeout = time.Duration(i) * time.Second
						}
					}
					if _, err := s.apply(m, "bench", ""); err != nil {
						b.Fatal(err)
					}
				}
				// CPU time does not depend on what else the machine runs.
				b.ReportMetric(float64((cpuTime()-cpu).Milliseconds())/float64(b.N), "cpu-ms/op")
			})
		}
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
				acks := routeACKs(s)
				m := s.currentModel()
				m.routing.Listeners[0].VirtualHosts[0].Routes[0].Timeout = time.Duration(i) * time.Second
				if _, err := s.apply(m, "bench", ""); err != nil {
					b.Fatal(err)
				}
				latencies = append(latencies, waitAllAcked(b, s, n, acks)...)
			}
			sort.Float64s(latencies)
			b.ReportMetric(quantile(latencies, 0.50)*1e3, "p50-ms")
			b.ReportMetric(quantile(latencies, 0.99)*1e3, "p99-ms")
		})
	}
}

// waitAllAcked waits until the n connected nodes have ACKed the route
// version just sent (acksBefore is the route ACK count before the push)
// and returns their push-to-ACK times. It polls a counter, not the node
// table, so that waiting does not compete for the tracker's lock.
func waitAllAcked(b *testing.B, s *testServer, n int, acksBefore float64) []float64 {
	deadline := time.Now().Add(30 * time.Second)
	for routeACKs(s) < acksBefore+float64(n) {
		if time.Now().After(deadline) {
			b.Fatalf("not every client ACKed within 30s")
		}
		time.Sleep(100 * time.Microsecond)
	}
	version := s.pub.currentVersion()
	var out []float64
	for id, ns := range s.Nodes() {
		ts := ns.Types["route"]
		if ts == nil || ts.AckedVersion != version {
			b.Fatalf("node %s: route status %+v, want version %s ACKed", id, ts, version)
		}
		out = append(out, ts.AnswerSeconds)
	}
	return out
}

func quantile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[int(q*float64(len(sorted)-1))]
}

func routeACKs(s *testServer) float64 {
	var m dto.Metric
	if err := s.m.acks.WithLabelValues("route").Write(&m); err != nil {
		return 0
	}
	return m.GetCounter().GetValue()
}

// cpuTime is the CPU time (user and system) the process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
