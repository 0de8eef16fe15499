package validate_test

import (
	"strings"
	"testing"
	"time"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/infergate/infergate/envoy/validate"
)

func mustAny(t *testing.T, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// listener builds a listener whose HTTP connection manager (an Any) holds
// an ext_proc filter (an Any inside that Any).
func listener(t *testing.T, extProcTimeout time.Duration) *listenerv3.Listener {
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix:     "ingress",
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{RouteConfigName: "local"}},
		HttpFilters: []*hcmv3.HttpFilter{
			{Name: "envoy.filters.http.ext_proc", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, &extprocv3.ExternalProcessor{
				MessageTimeout: durationpb.New(extProcTimeout),
			})}},
			{Name: "envoy.filters.http.router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, &routerv3.Router{})}},
		},
	}
	return &listenerv3.Listener{
		Name: "http",
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name:       "envoy.filters.network.http_connection_manager",
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, hcm)},
		}}}},
	}
}

func TestValidMessagePasses(t *testing.T) {
	if err := validate.Message(listener(t, 200*time.Millisecond)); err != nil {
		t.Fatalf("valid listener refused: %v", err)
	}
}

func TestInvalidValueTwoAnysDeepIsFoundWithItsPath(t *testing.T) {
	err := validate.Message(listener(t, -time.Second))
	if err == nil {
		t.Fatal("negative ext_proc message_timeout inside HCM inside a listener was accepted")
	}
	for _, want := range []string{
		"filter_chains[0].filters[0].typed_config(envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager)",
		"http_filters[0].typed_config(envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor)",
		"MessageTimeout",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestTopLevelRuleIsChecked(t *testing.T) {
	l := listener(t, time.Second)
	l.FilterChains[0].Filters[0].Name = ""
	err := validate.Message(l)
	if err == nil || !strings.Contains(err.Error(), "Name") {
		t.Fatalf("empty filter name: error %v, want one naming Name", err)
	}
}

func TestUnknownAnyTypeIsRefused(t *testing.T) {
	l := listener(t, time.Second)
	l.FilterChains[0].Filters[0].GetTypedConfig().TypeUrl = "type.googleapis.com/example.NotLinked"
	err := validate.Message(l)
	if err == nil || !strings.Contains(err.Error(), "example.NotLinked") {
		t.Fatalf("error %v, want one naming the unknown type", err)
	}
}

func TestUndecodableAnyIsRefused(t *testing.T) {
	l := listener(t, time.Second)
	l.FilterChains[0].Filters[0].GetTypedConfig().Value = []byte{0xff, 0xff, 0xff}
	err := validate.Message(l)
	if err == nil || !strings.Contains(err.Error(), "does not decode") {
		t.Fatalf("error %v, want a decode error", err)
	}
}

func TestAnyPackedFromAnotherTypeIsRefused(t *testing.T) {
	// Bytes of a Listener (field 1 = name, a string) claimed to be a Router,
	// whose field 1 is a BoolValue message: the field does not decode as the
	// claimed type's, or leaves fields it does not define.
	l := listener(t, time.Second)
	other := mustAny(t, &listenerv3.Listener{Name: "x", StatPrefix: "y"})
	other.TypeUrl = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
	l.FilterChains[0].Filters[0].ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: other}
	if err := validate.Message(l); err == nil {
		t.Fatal("mislabelled Any was accepted")
	}
}

func TestNilMessage(t *testing.T) {
	if err := validate.Message(nil); err == nil {
		t.Fatal("nil accepted")
	}
}
