package routematch

import (
	"net/http"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func TestRouteMatchSemantics(t *testing.T) {
	str := func(s *matcherv3.StringMatcher) *routev3.HeaderMatcher_StringMatch {
		return &routev3.HeaderMatcher_StringMatch{StringMatch: s}
	}
	exact := func(v string) *matcherv3.StringMatcher {
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: v}}
	}
	cases := []struct {
		name   string
		match  *routev3.RouteMatch
		path   string
		header http.Header
		want   bool
	}{
		{"prefix sees the query", &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/v1?a"}}, "/v1?a=1", nil, true},
		{"path ignores the query", &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: "/v1/embeddings"}}, "/v1/embeddings?x=1", nil, true},
		{"path is exact", &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: "/v1"}}, "/v1/embeddings", nil, false},
		{"regex matches the whole path", &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: "/v2/models/[^/]+/infer"}}}, "/v2/models/m/infer?x", nil, true},
		{"regex is anchored", &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: "/v2"}}}, "/v2/models", nil, false},
		{"case-insensitive prefix", &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/V1"}, CaseSensitive: wrapperspb.Bool(false)}, "/v1/x", nil, true},
		{"header values are joined with commas",
			&routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}, Headers: []*routev3.HeaderMatcher{{Name: "X-Plan", HeaderMatchSpecifier: str(exact("a,b"))}}},
			"/", http.Header{"X-Plan": {"a", "b"}}, true},
		{"inverted match on a missing header fails",
			&routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}, Headers: []*routev3.HeaderMatcher{{Name: "x-plan", InvertMatch: true, HeaderMatchSpecifier: str(exact("free"))}}},
			"/", http.Header{}, false},
		{"inverted match on another value succeeds",
			&routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}, Headers: []*routev3.HeaderMatcher{{Name: "x-plan", InvertMatch: true, HeaderMatchSpecifier: str(exact("free"))}}},
			"/", http.Header{"X-Plan": {"pro"}}, true},
		{"missing treated as empty",
			&routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}, Headers: []*routev3.HeaderMatcher{{Name: "x-plan", TreatMissingHeaderAsEmpty: true, HeaderMatchSpecifier: str(exact(""))}}},
			"/", http.Header{}, true},
		{"present_match false wants the header absent",
			&routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}, Headers: []*routev3.HeaderMatcher{{Name: "x-plan", HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: false}}}},
			"/", http.Header{}, true},
		{"a pseudo-header is a header",
			&routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}, Headers: []*routev3.HeaderMatcher{{Name: ":method", HeaderMatchSpecifier: str(exact("POST"))}}},
			"/", http.Header{":method": {"POST"}}, true},
	}
	for _, c := range cases {
		m, err := Compile(c.match)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if got := m.Matches(c.header.Values, c.path); got != c.want {
			t.Errorf("%s: %s matched %v, want %v", c.name, c.path, got, c.want)
		}
	}
}
