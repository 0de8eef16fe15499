package endpointslice

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/utils/ptr"

	"github.com/infergate/infergate/config"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func TestReadyAddressesOnThePortAsked(t *testing.T) {
	ports := []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080)}, {Name: ptr.To("metrics"), Port: ptr.To[int32](9090)}}
	s := &discoveryv1.EndpointSlice{
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       ports,
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.0.0.1"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}},
			{Addresses: []string{"10.0.0.2"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(false)}},
			{Addresses: []string{"10.0.0.3"}}, // readiness unknown: ready
		},
	}
	for port, want := range map[string][]string{
		"http": {"10.0.0.1:8080", "10.0.0.3:8080"},
		"9090": {"10.0.0.1:9090", "10.0.0.3:9090"},
		"":     nil, // two ports and none named: ambiguous
		"grpc": nil,
	} {
		if got := readyAddresses(s, port, quiet); !slices.Equal(got, want) {
			t.Errorf("port %q: %v, want %v", port, got, want)
		}
	}
	s.Ports = ports[:1]
	if got := readyAddresses(s, "", quiet); !slices.Equal(got, []string{"10.0.0.1:8080", "10.0.0.3:8080"}) {
		t.Errorf("the only port, unnamed in the pool: %v", got)
	}
	s.AddressType = discoveryv1.AddressTypeFQDN
	if got := readyAddresses(s, "", quiet); got != nil {
		t.Errorf("an FQDN slice gave %v; EDS carries IP addresses", got)
	}
	v6 := &discoveryv1.EndpointSlice{AddressType: discoveryv1.AddressTypeIPv6, Ports: ports[:1],
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"fd00::1"}}}}
	if got := readyAddresses(v6, "http", quiet); !slices.Equal(got, []string{"[fd00::1]:8080"}) {
		t.Errorf("IPv6: %v", got)
	}
}

// NewClient speaks the API server's wire protocol: it authenticates with
// the kubeconfig's token, lists and watches discovery.k8s.io/v1
// EndpointSlices of the namespace with the Service's label selector, and
// the Watcher follows what the list and the watch stream say.
func TestClientListsAndWatchesOverHTTP(t *testing.T) {
	slice := func(name, ip string) string {
		return fmt.Sprintf(`{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{"name":%q,"namespace":"ml","resourceVersion":"2","labels":{"kubernetes.io/service-name":"engines"}},
			"addressType":"IPv4","ports":[{"name":"http","port":8080}],"endpoints":[{"addresses":[%q],"conditions":{"ready":true}}]}`, name, ip)
	}
	var mu sync.Mutex
	var seen []string
	api := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.URL.Path+" "+r.URL.Query().Get("labelSelector")+" "+r.Header.Get("Authorization"))
		mu.Unlock()
		if r.URL.Path != "/apis/discovery.k8s.io/v1/namespaces/ml/endpointslices" || r.URL.Query().Get("labelSelector") != "kubernetes.io/service-name=engines" ||
			r.Header.Get("Authorization") != "Bearer t0ken" {
			http.Error(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","code":403}`, http.StatusForbidden)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		q := r.URL.Query()
		if q.Get("watch") != "true" {
			fmt.Fprintf(w, `{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSliceList","metadata":{"resourceVersion":"2"},"items":[%s]}`, slice("a", "10.0.0.1"))
			return
		}
		if q.Get("sendInitialEvents") == "true" {
			// A streaming list: the initial state, then its end marker.
			fmt.Fprintf(w, `{"type":"ADDED","object":%s}`+"\n", slice("a", "10.0.0.1"))
			fmt.Fprint(w, `{"type":"BOOKMARK","object":{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{"resourceVersion":"2","annotations":{"k8s.io/initial-events-end":"true"}}}}`+"\n")
		}
		fmt.Fprintf(w, `{"type":"ADDED","object":%s}`+"\n", slice("b", "10.0.0.2"))
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}))
	t.Cleanup(api.Close)
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: test, cluster: {server: %q, insecure-skip-tls-verify: true}}]
users: [{name: test, user: {token: t0ken}}]
contexts: [{name: test, context: {cluster: test, user: test}}]
current-context: test
`, api.URL)), 0o600); err != nil {
		t.Fatal(err)
	}
	client, err := NewClient(kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	w := NewWatcher(client, func() {}, quiet)
	t.Cleanup(w.Close)
	w.Sync([]config.XDSPool{{Name: "engines", Kubernetes: config.XDSKubernetes{Service: "engines", Namespace: "ml"}}})
	deadline := time.Now().Add(20 * time.Second)
	want := []string{"10.0.0.1:8080", "10.0.0.2:8080"}
	for got := w.Addresses()["engines"]; !slices.Equal(got, want); got = w.Addresses()["engines"] {
		if time.Now().After(deadline) {
			mu.Lock()
			defer mu.Unlock()
			t.Fatalf("pool endpoints %v, want %v; requests seen: %q", got, want, seen)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
