// Package endpointslicetest serves tests an endpointslice.API backed by
// client-go's fake clientset, which keeps objects and streams watch
// events as the API server does.
package endpointslicetest

import (
	"context"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
)

// API is an endpointslice.API over a fake clientset.
type API struct{ *fake.Clientset }

// New holds the given slices.
func New(slices ...*discoveryv1.EndpointSlice) API {
	objs := make([]runtime.Object, len(slices))
	for i, s := range slices {
		objs[i] = s
	}
	return API{fake.NewClientset(objs...)}
}

func (a API) List(ctx context.Context, namespace string, opts metav1.ListOptions) (*discoveryv1.EndpointSliceList, error) {
	return a.DiscoveryV1().EndpointSlices(namespace).List(ctx, opts)
}

func (a API) Watch(ctx context.Context, namespace string, opts metav1.ListOptions) (watch.Interface, error) {
	return a.DiscoveryV1().EndpointSlices(namespace).Watch(ctx, opts)
}

// IsWatchListSemanticsUnSupported tells client-go's informer that the fake
// cannot stream the initial list, so that it lists first.
func (API) IsWatchListSemanticsUnSupported() bool { return true }
