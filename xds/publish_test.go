package xds

import (
	"context"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/infergate/infergate/config"
)

// recordingCache keeps every snapshot set, in order.
type recordingCache struct {
	cachev3.SnapshotCache
	sets []*cachev3.Snapshot
}

func (r *recordingCache) SetSnapshot(_ context.Context, _ string, s cachev3.ResourceSnapshot) error {
	r.sets = append(r.sets, s.(*cachev3.Snapshot))
	return nil
}

// A publish that changes clusters sets them first with the endpoints the
// node has, then the new endpoints, so that on an ordered ADS stream
// Envoy never applies new endpoints to an old cluster.
func TestClusterChangeIsPublishedBeforeItsEndpoints(t *testing.T) {
	built := func(connect time.Duration) *resources {
		t.Helper()
		cfg := config.Default()
		cfg.XDS.Pools[0].ConnectTimeout = connect
		res, err := build(modelOf(cfg), nil, nil)
		if err == nil {
			err = check(res) // also hashes the resources
		}
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	rc := &recordingCache{}
	p := newPublisher(rc)
	p.publish(built(time.Second))
	p.addNode("envoy/n", &corev3.Node{Id: "n"})
	p.publish(built(3 * time.Second))
	if len(rc.sets) != 3 {
		t.Fatalf("%d snapshots set, want the first one, then two steps", len(rc.sets))
	}
	version := func(s *cachev3.Snapshot, typeURL string) string { return s.GetVersion(typeURL) }
	before, step1, step2 := rc.sets[0], rc.sets[1], rc.sets[2]
	if version(step1, resourcev3.ClusterType) == version(before, resourcev3.ClusterType) ||
		version(step1, resourcev3.EndpointType) != version(before, resourcev3.EndpointType) {
		t.Errorf("step 1: clusters %s→%s, endpoints %s→%s; want new clusters with the endpoints Envoy has",
			version(before, resourcev3.ClusterType), version(step1, resourcev3.ClusterType),
			version(before, resourcev3.EndpointType), version(step1, resourcev3.EndpointType))
	}
	if version(step2, resourcev3.EndpointType) == version(before, resourcev3.EndpointType) ||
		version(step2, resourcev3.ClusterType) != version(step1, resourcev3.ClusterType) {
		t.Errorf("step 2: want the same clusters and new endpoints")
	}
	if len(step2.Resources[types.Endpoint].Items) == 0 {
		t.Error("step 2 carries no endpoints")
	}
}

// A restarted control plane counts its generations from 1 again; its
// versions must still differ from the ones an Envoy holds from before, or
// that Envoy, repeating its version, is never sent what changed.
func TestVersionsDifferAcrossRestarts(t *testing.T) {
	const cfg = "xds:\n  pools:\n    - name: default\n      endpoints: [127.0.0.1:1]\n"
	var versions []string
	for range 2 {
		s := startServer(t, cfg)
		resp, _ := dialADS(t, s.ADSAddr(), "restarted").fetch(resourcev3.EndpointType, "default")
		versions = append(versions, resp.GetVersionInfo())
	}
	if versions[0] == versions[1] {
		t.Fatalf("both control planes sent endpoints version %q", versions[0])
	}
}
