package xdsproxy

import (
	"testing"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func TestPathRulesFollowEnvoy(t *testing.T) {
	rules, err := decodePathRules(&hcmv3.HttpConnectionManager{
		NormalizePath:                wrapperspb.Bool(true),
		MergeSlashes:                 true,
		PathWithEscapedSlashesAction: hcmv3.HttpConnectionManager_REJECT_REQUEST,
	})
	if err != nil {
		t.Fatal(err)
	}
	for in, want := range map[string]string{
		"/v1/embeddings":           "/v1/embeddings",
		"/v1/%65mbeddings?a=%65":   "/v1/embeddings?a=%65", // the query is left alone
		"/v1//embeddings":          "/v1/embeddings",
		"/v1/a/b/../../embeddings": "/v1/embeddings",
		"/v1/%2e%2e/v2/models":     "/v2/models",
		"/../../v1/models":         "/v1/models",
		"/v1/models/.":             "/v1/models/",
		"/v2/models/a%20b/infer":   "/v2/models/a%20b/infer",
		"/v2/models/a%c3%a9":       "/v2/models/a%C3%A9",
		"/v1/x%zz":                 "/v1/x%zz",
	} {
		if got, ok := rules.apply(in); !ok || got != want {
			t.Errorf("apply(%q) = %q, %t; want %q", in, got, ok, want)
		}
	}
	for _, in := range []string{"/v1%2Fembeddings", "/v1%5cembeddings"} {
		if got, ok := rules.apply(in); ok {
			t.Errorf("apply(%q) = %q, want the request refused", in, got)
		}
	}
	if got, _ := (pathRules{}).apply("/v1//./%65"); got != "/v1//./%65" {
		t.Errorf("without rules the path changed to %q", got)
	}
	if _, err := decodePathRules(&hcmv3.HttpConnectionManager{PathWithEscapedSlashesAction: hcmv3.HttpConnectionManager_UNESCAPE_AND_REDIRECT}); err == nil {
		t.Error("UNESCAPE_AND_REDIRECT was accepted; the proxy cannot redirect, so it must NACK")
	}
}
