package xds

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/infergate/infergate/config"
	"github.com/infergate/infergate/xds/endpointslice/endpointslicetest"
)

// engineSlice is one of the EndpointSlices Kubernetes keeps for Service
// "engines": one backend (ip:port) with its readiness. The slice lists two
// ports, so that the pool's choice of port matters.
func engineSlice(t *testing.T, name, addr string, ready *bool) *discoveryv1.EndpointSlice {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(port)
	return &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name, Namespace: "ml", Labels: map[string]string{discoveryv1.LabelServiceName: "engines"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("metrics"), Port: ptr.To[int32](9090)}, {Name: ptr.To("grpc"), Port: ptr.To(int32(n))}},
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{host}, Conditions: discoveryv1.EndpointConditions{Ready: ready}}},
	}
}

// A pool that names a Service follows its EndpointSlices: ready engines
// join EDS (here as grpc-go's xDS client sees it), one that turns unready
// leaves, and a deleted slice takes its engines with it.
func TestPoolFollowsKubernetesEndpointSlices(t *testing.T) {
	a, b := backend(t), backend(t)
	kube := endpointslicetest.New(engineSlice(t, "engines-a", a, ptr.To(true)))
	path := filepath.Join(t.TempDir(), "infergate.yaml")
	writeFile(t, path, `engine:
  listen: 127.0.0.1:1
xds:
  listeners:
    - name: ingress
      virtual_hosts:
        - name: all
          routes: [{name: main, pool: engines}]
  pools:
    - name: engines
      kubernetes: {service: engines, namespace: ml, port: grpc}
`)
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	s := startWithKube(t, cfg, "", kube, EngineInProcess())
	cc := grpcClient(t, s.ADSAddr(), "k8s-client", "ingress")
	servedBy(t, cc, a)
	endpoints := func(want string) {
		t.Helper()
		eventually(t, "the pool's endpoint gauge", func() error {
			if got := grepLines(scrape(t, s), `infergate_xds_pool_endpoints{pool="engines"}`); got != `infergate_xds_pool_endpoints{pool="engines"} `+want {
				return fmt.Errorf("got %q, want %s", got, want)
			}
			return nil
		})
	}
	endpoints("1")

	slices := kube.DiscoveryV1().EndpointSlices("ml")
	ctx := context.Background()
	// Readiness unknown counts as ready, as the API says.
	if _, err := slices.Create(ctx, engineSlice(t, "engines-b", b, nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := slices.Update(ctx, engineSlice(t, "engines-a", a, ptr.To(false)), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	servedBy(t, cc, b)

	if err := slices.Delete(ctx, "engines-b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "no engine left in the pool", func() error {
		if _, err := call(cc); status.Code(err) != codes.Unavailable {
			return fmt.Errorf("RPC error %v, want Unavailable", err)
		}
		return nil
	})
	endpoints("0")

	// A slice of another Service in the namespace is not the pool's.
	other := engineSlice(t, "web-1", a, ptr.To(true))
	other.Labels[discoveryv1.LabelServiceName] = "web"
	if _, err := slices.Create(ctx, other, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := slices.Create(ctx, engineSlice(t, "engines-b", b, ptr.To(true)), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	servedBy(t, cc, b)
	for range 5 {
		if got, err := call(cc); err != nil || got != b {
			t.Fatalf("served by %s (%v), want only %s: web's slice is not the pool's", got, err, b)
		}
	}

	// A pool that stops following the Service keeps none of its engines.
	if code := adminDo(t, s, "PUT", "/v1/config", fmt.Sprintf(`{"listeners": [{"name": "ingress", "virtual_hosts": [{"name": "all", "routes": [{"name": "main", "pool": "engines"}]}]}], "pools": [{"name": "engines", "endpoints": [%q]}]}`, a), nil); code != http.StatusOK {
		t.Fatalf("PUT /v1/config: %d", code)
	}
	servedBy(t, cc, a)
	for range 5 {
		if got, err := call(cc); err != nil || got != a {
			t.Fatalf("served by %s (%v), want only %s: the pool no longer follows the Service", got, err, a)
		}
	}
}

// A pool that names a Service where no Kubernetes API can be reached is
// refused with the reason, at start as on a change.
func TestKubernetesPoolWithoutAnAPIIsRefused(t *testing.T) {
	cfg := config.Default()
	cfg.XDS.Kubeconfig = filepath.Join(t.TempDir(), "missing-kubeconfig")
	cfg.XDS.Pools = append(cfg.XDS.Pools, config.XDSPool{Name: "engines", LB: "least_request", Kubernetes: config.XDSKubernetes{Service: "engines"}})
	cfg.XDS.Pools[1].HealthCheck = cfg.XDS.Pools[0].HealthCheck
	cfg.XDS.Listen, cfg.XDS.Admin = "127.0.0.1:0", "127.0.0.1:0"
	_, err := New(cfg, "", slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err == nil || !strings.Contains(err.Error(), "Kubernetes") {
		t.Fatalf("New: %v, want an error saying the Kubernetes API cannot be reached", err)
	}
}
