package examples

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/infergate/infergate/config"
)

// kubeObjects decodes every manifest in kubernetes/ with Kubernetes' own
// strict decoder: an unknown or misspelt field fails here, not at apply.
func kubeObjects(t *testing.T) []runtime.Object {
	t.Helper()
	decoder := serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict).UniversalDeserializer()
	files, _ := filepath.Glob("kubernetes/*.yaml")
	if len(files) < 4 {
		t.Fatalf("found only %v", files)
	}
	var objs []runtime.Object
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range bytes.Split(data, []byte("\n---\n")) {
			obj, _, err := decoder.Decode(doc, nil, nil)
			if err != nil {
				t.Fatalf("%s, document %d: %v", f, i, err)
			}
			objs = append(objs, obj)
		}
	}
	return objs
}

// The manifests hang together: each infergate container runs a config its
// pod mounts, and that config is valid; the pool that follows a Service
// names one that exists with that port; the control plane may watch
// EndpointSlices.
func TestKubernetesManifests(t *testing.T) {
	objs := kubeObjects(t)
	configs := map[string]config.Config{} // by ConfigMap name
	services := map[string]*corev1.Service{}
	var deployments []*appsv1.Deployment
	var roles []*rbacv1.Role
	var bindings []*rbacv1.RoleBinding
	for _, o := range objs {
		switch o := o.(type) {
		case *corev1.ConfigMap:
			cfg, err := config.Parse("ConfigMap "+o.Name, []byte(o.Data["infergate.yaml"]))
			if err != nil {
				t.Error(err)
			}
			configs[o.Name] = cfg
		case *corev1.Service:
			services[o.Name] = o
		case *appsv1.Deployment:
			deployments = append(deployments, o)
		case *rbacv1.Role:
			roles = append(roles, o)
		case *rbacv1.RoleBinding:
			bindings = append(bindings, o)
		}
	}

	var xdsAccount string
	for _, d := range deployments {
		spec := d.Spec.Template.Spec
		mounted := map[string]string{} // mount path → ConfigMap
		for _, v := range spec.Volumes {
			if v.ConfigMap == nil {
				continue
			}
			for _, c := range slices.Concat(spec.InitContainers, spec.Containers) {
				for _, m := range c.VolumeMounts {
					if m.Name == v.Name {
						mounted[m.MountPath] = v.ConfigMap.Name
					}
				}
			}
		}
		for _, c := range slices.Concat(spec.InitContainers, spec.Containers) {
			if c.Image != "infergate:dev" {
				continue
			}
			if mounted["/etc/infergate"] == "" {
				t.Errorf("deployment %s, container %s: no ConfigMap mounted at /etc/infergate", d.Name, c.Name)
			} else if _, ok := configs[mounted["/etc/infergate"]]; !ok {
				t.Errorf("deployment %s mounts ConfigMap %s, which the manifests do not define", d.Name, mounted["/etc/infergate"])
			}
			if len(c.Args) > 0 && c.Args[0] == "xds" {
				xdsAccount = spec.ServiceAccountName
				cfg := configs[mounted["/etc/infergate"]]
				for _, p := range cfg.XDS.Pools {
					k := p.Kubernetes
					if k.Service == "" {
						continue
					}
					svc := services[k.Service]
					if svc == nil {
						t.Errorf("pool %s follows Service %s, which the manifests do not define", p.Name, k.Service)
						continue
					}
					if !slices.ContainsFunc(svc.Spec.Ports, func(sp corev1.ServicePort) bool { return sp.Name == k.Port }) {
						t.Errorf("pool %s uses port %q, which Service %s does not name", p.Name, k.Port, k.Service)
					}
				}
			}
		}
	}
	if xdsAccount == "" {
		t.Fatal("no deployment runs the control plane under a service account")
	}
	canWatch := false
	for _, b := range bindings {
		if !slices.ContainsFunc(b.Subjects, func(s rbacv1.Subject) bool { return s.Kind == "ServiceAccount" && s.Name == xdsAccount }) {
			continue
		}
		for _, r := range roles {
			if r.Name != b.RoleRef.Name {
				continue
			}
			for _, rule := range r.Rules {
				if slices.Contains(rule.APIGroups, "discovery.k8s.io") && slices.Contains(rule.Resources, "endpointslices") &&
					slices.Contains(rule.Verbs, "list") && slices.Contains(rule.Verbs, "watch") {
					canWatch = true
				}
			}
		}
	}
	if !canWatch {
		t.Errorf("service account %s may not list and watch endpointslices", xdsAccount)
	}
}
