// Package endpointslice follows the EndpointSlices of Kubernetes Services
// and reports their ready endpoints: one of the control plane's three
// endpoint sources, beside the config file and engines that register
// themselves.
package endpointslice

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/infergate/infergate/config"
)

// API lists and watches the EndpointSlices of a namespace.
type API interface {
	List(ctx context.Context, namespace string, opts metav1.ListOptions) (*discoveryv1.EndpointSliceList, error)
	Watch(ctx context.Context, namespace string, opts metav1.ListOptions) (watch.Interface, error)
}

// NewClient connects to the Kubernetes API: with kubeconfig when it is
// set, else with the pod's service account, else with $KUBECONFIG or
// ~/.kube/config as kubectl does.
func NewClient(kubeconfig string) (API, error) {
	var (
		cfg *rest.Config
		err error
	)
	switch {
	case kubeconfig != "":
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	default:
		if cfg, err = rest.InClusterConfig(); err == rest.ErrNotInCluster {
			rules := clientcmd.NewDefaultClientConfigLoadingRules()
			cfg, err = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, nil).ClientConfig()
		}
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes API: %w", err)
	}
	cfg.UserAgent = "infergate-xds"
	// A scheme of discovery.k8s.io/v1 alone: client-go's generated
	// clientset registers every API group, some 50 MB of binary for one
	// resource read.
	scheme := runtime.NewScheme()
	if err := discoveryv1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	metav1.AddToGroupVersion(scheme, discoveryv1.SchemeGroupVersion)
	cfg.GroupVersion = &discoveryv1.SchemeGroupVersion
	cfg.APIPath = "/apis"
	cfg.NegotiatedSerializer = serializer.NewCodecFactory(scheme).WithoutConversion()
	rc, err := rest.RESTClientFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes API: %w", err)
	}
	return &restAPI{rc: rc, params: runtime.NewParameterCodec(scheme)}, nil
}

type restAPI struct {
	rc     *rest.RESTClient
	params runtime.ParameterCodec
}

func (a *restAPI) List(ctx context.Context, namespace string, opts metav1.ListOptions) (*discoveryv1.EndpointSliceList, error) {
	out := &discoveryv1.EndpointSliceList{}
	err := a.rc.Get().Namespace(namespace).Resource("endpointslices").VersionedParams(&opts, a.params).Do(ctx).Into(out)
	return out, err
}

func (a *restAPI) Watch(ctx context.Context, namespace string, opts metav1.ListOptions) (watch.Interface, error) {
	opts.Watch = true
	return a.rc.Get().Namespace(namespace).Resource("endpointslices").VersionedParams(&opts, a.params).Watch(ctx)
}

// serviceAccountNamespace is where a pod finds its own namespace.
const serviceAccountNamespace = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// defaultNamespace is the namespace of a pool that names none: the
// control plane's own in a pod, else "default".
func defaultNamespace() string {
	if b, err := os.ReadFile(serviceAccountNamespace); err == nil && strings.TrimSpace(string(b)) != "" {
		return strings.TrimSpace(string(b))
	}
	return "default"
}

// Watcher follows the Services of the pools that name one. Its methods
// are safe for concurrent use; onChange runs on the watch's goroutine
// whenever a pool's endpoints change, and must not call Sync.
type Watcher struct {
	client   API
	onChange func()
	log      *slog.Logger
	// namespace is where a pool that names none looks, read once.
	namespace string

	mu      sync.Mutex
	watches map[string]*follow // by pool
}

// NewWatcher follows nothing until Sync names the pools.
func NewWatcher(client API, onChange func(), log *slog.Logger) *Watcher {
	// client-go reports watch failures through klog; they belong in the
	// control plane's log, in its format.
	klog.SetSlogLogger(log)
	return &Watcher{client: client, onChange: onChange, log: log, namespace: defaultNamespace(), watches: map[string]*follow{}}
}

// follow is one pool's Service, followed by an informer of its own.
type follow struct {
	src    config.XDSKubernetes // namespace filled in
	cancel context.CancelFunc
	done   chan struct{} // closed when the informer has stopped
	store  cache.Store

	mu    sync.Mutex
	addrs []string // ready endpoints, sorted
}

// Sync starts following the Service of each pool that names one, keeps
// unchanged ones, and stops the others.
func (w *Watcher) Sync(pools []config.XDSPool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	keep := map[string]bool{}
	for _, p := range pools {
		src := p.Kubernetes
		if src.Service == "" {
			continue
		}
		if src.Namespace == "" {
			src.Namespace = w.namespace
		}
		keep[p.Name] = true
		if old := w.watches[p.Name]; old != nil {
			if old.src == src {
				continue
			}
			old.close()
		}
		w.watches[p.Name] = w.start(p.Name, src)
	}
	for name, wt := range w.watches {
		if !keep[name] {
			wt.close()
			delete(w.watches, name)
		}
	}
}

func (w *Watcher) start(pool string, src config.XDSKubernetes) *follow {
	selector := discoveryv1.LabelServiceName + "=" + src.Service
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.LabelSelector = selector
			return w.client.List(ctx, src.Namespace, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.LabelSelector = selector
			return w.client.Watch(ctx, src.Namespace, o)
		},
	}
	inf := cache.NewSharedIndexInformer(cache.ToListWatcherWithWatchListSemantics(lw, w.client), &discoveryv1.EndpointSlice{}, 0, cache.Indexers{})
	ctx, cancel := context.WithCancel(context.Background())
	wt := &follow{src: src, cancel: cancel, done: make(chan struct{}), store: inf.GetStore()}
	changed := func() {
		if wt.refresh(w.log.With("pool", pool, "service", src.Namespace+"/"+src.Service)) {
			w.onChange()
		}
	}
	_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { changed() },
		UpdateFunc: func(any, any) { changed() },
		DeleteFunc: func(any) { changed() },
	})
	go func() {
		defer close(wt.done)
		inf.RunWithContext(ctx)
	}()
	w.log.Info("following EndpointSlices", "pool", pool, "service", src.Namespace+"/"+src.Service, "port", src.Port)
	return wt
}

// close stops the informer without waiting: its event handler may be
// waiting for the lock Sync's caller holds.
func (wt *follow) close() { wt.cancel() }

// refresh recomputes the ready endpoints from every slice of the Service
// and reports whether they changed.
func (wt *follow) refresh(log *slog.Logger) bool {
	var addrs []string
	for _, obj := range wt.store.List() {
		s, ok := obj.(*discoveryv1.EndpointSlice)
		// The label selector is the API server's filter; check it here
		// too, so that a slice never lands in the wrong pool.
		if !ok || s.Labels[discoveryv1.LabelServiceName] != wt.src.Service {
			continue
		}
		addrs = append(addrs, readyAddresses(s, wt.src.Port, log)...)
	}
	slices.Sort(addrs)
	addrs = slices.Compact(addrs)
	wt.mu.Lock()
	defer wt.mu.Unlock()
	if slices.Equal(addrs, wt.addrs) {
		return false
	}
	wt.addrs = addrs
	return true
}

// readyAddresses are the ip:port of the slice's ready endpoints on the
// chosen port. An endpoint whose readiness is unknown counts as ready, as
// the API says; FQDN slices are skipped, since EDS carries IP addresses.
func readyAddresses(s *discoveryv1.EndpointSlice, port string, log *slog.Logger) []string {
	if s.AddressType != discoveryv1.AddressTypeIPv4 && s.AddressType != discoveryv1.AddressTypeIPv6 {
		return nil
	}
	p, ok := pickPort(s.Ports, port)
	if !ok {
		log.Warn("EndpointSlice skipped: no single port matches", "slice", s.Name, "port", port, "ports", len(s.Ports))
		return nil
	}
	var out []string
	for _, e := range s.Endpoints {
		if e.Conditions.Ready != nil && !*e.Conditions.Ready {
			continue
		}
		for _, a := range e.Addresses {
			if net.ParseIP(a) != nil {
				out = append(out, net.JoinHostPort(a, strconv.Itoa(int(p))))
			}
		}
	}
	return out
}

// pickPort is the port named (by name or number), or the only one.
func pickPort(ports []discoveryv1.EndpointPort, want string) (int32, bool) {
	if want == "" {
		if len(ports) == 1 && ports[0].Port != nil {
			return *ports[0].Port, true
		}
		return 0, false
	}
	for _, p := range ports {
		if p.Port == nil {
			continue
		}
		if (p.Name != nil && *p.Name == want) || strconv.Itoa(int(*p.Port)) == want {
			return *p.Port, true
		}
	}
	return 0, false
}

// Addresses returns each followed pool's ready endpoints, sorted.
func (w *Watcher) Addresses() map[string][]string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make(map[string][]string, len(w.watches))
	for pool, wt := range w.watches {
		wt.mu.Lock()
		out[pool] = wt.addrs
		wt.mu.Unlock()
	}
	return out
}

// Close stops following every Service and waits for the watches to end.
func (w *Watcher) Close() {
	w.mu.Lock()
	watches := w.watches
	w.watches = map[string]*follow{}
	w.mu.Unlock()
	for _, wt := range watches {
		wt.cancel()
		<-wt.done
	}
}
