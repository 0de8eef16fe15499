// Package routematch is Envoy's route matching (a path specifier plus
// header matchers), for what must pick a route exactly as Envoy does: the
// test proxy's route table, and the ext_proc server when a request's body
// names a model whose route Envoy chooses only after the body is read. It
// also holds the path normalization Envoy applies before matching, and the
// check for escapes that survive it.
package routematch

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// Matcher is one compiled RouteMatch: a path specifier plus header
// matchers.
type Matcher struct {
	prefix, path    string
	regex           *regexp.Regexp
	caseInsensitive bool
	headers         []headerMatcher
}

// Compile accepts the RouteMatch fields infergate uses (prefix, path,
// safe_regex, case_sensitive, headers) and refuses the rest, so that
// nothing is matched differently from Envoy.
func Compile(m *routev3.RouteMatch) (*Matcher, error) {
	if m.GetGrpc() != nil || m.GetRuntimeFraction() != nil || len(m.GetQueryParameters()) > 0 ||
		len(m.GetDynamicMetadata()) > 0 || m.GetFilterState() != nil || m.GetTlsContext() != nil {
		return nil, errors.New("match: only path, prefix, safe_regex and headers are supported")
	}
	rm := &Matcher{caseInsensitive: m.GetCaseSensitive() != nil && !m.GetCaseSensitive().GetValue()}
	switch ps := m.GetPathSpecifier().(type) {
	case *routev3.RouteMatch_Prefix:
		rm.prefix = ps.Prefix
	case *routev3.RouteMatch_Path:
		rm.path = ps.Path
	case *routev3.RouteMatch_SafeRegex:
		re, err := regexp.Compile("^(?:" + ps.SafeRegex.GetRegex() + ")$")
		if err != nil {
			return nil, fmt.Errorf("match.safe_regex: %w", err)
		}
		rm.regex = re
	default:
		return nil, errors.New("match: only prefix, path and safe_regex are supported")
	}
	if rm.caseInsensitive {
		rm.prefix, rm.path = strings.ToLower(rm.prefix), strings.ToLower(rm.path)
	}
	for _, h := range m.GetHeaders() {
		hm, err := compileHeader(h)
		if err != nil {
			return nil, fmt.Errorf("match.headers %q: %w", h.GetName(), err)
		}
		rm.headers = append(rm.headers, hm)
	}
	return rm, nil
}

// headerMatcher is Envoy's HeaderMatcher: a header's values joined with
// "," are matched; a missing header matches nothing (unless
// treat_missing_header_as_empty), inverted or not.
type headerMatcher struct {
	name                string
	present             *bool
	match               func(string) bool
	invert              bool
	treatMissingAsEmpty bool
}

func compileHeader(h *routev3.HeaderMatcher) (headerMatcher, error) {
	hm := headerMatcher{name: strings.ToLower(h.GetName()), invert: h.GetInvertMatch(), treatMissingAsEmpty: h.GetTreatMissingHeaderAsEmpty()}
	var err error
	switch s := h.GetHeaderMatchSpecifier().(type) {
	case *routev3.HeaderMatcher_PresentMatch:
		p := s.PresentMatch
		hm.present = &p
	case *routev3.HeaderMatcher_StringMatch:
		hm.match, err = compileString(s.StringMatch)
	case *routev3.HeaderMatcher_ExactMatch:
		hm.match = func(v string) bool { return v == s.ExactMatch }
	case *routev3.HeaderMatcher_PrefixMatch:
		hm.match = func(v string) bool { return strings.HasPrefix(v, s.PrefixMatch) }
	case *routev3.HeaderMatcher_SuffixMatch:
		hm.match = func(v string) bool { return strings.HasSuffix(v, s.SuffixMatch) }
	case *routev3.HeaderMatcher_ContainsMatch:
		hm.match = func(v string) bool { return strings.Contains(v, s.ContainsMatch) }
	case *routev3.HeaderMatcher_SafeRegexMatch:
		hm.match, err = compileString(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: s.SafeRegexMatch}})
	case nil:
		// No specifier: the header must be present (Envoy's old default).
		p := true
		hm.present = &p
	default:
		err = errors.New("only string, present and the legacy exact/prefix/suffix/contains/regex matches are supported")
	}
	return hm, err
}

func compileString(sm *matcherv3.StringMatcher) (func(string) bool, error) {
	fold := func(s string) string { return s }
	if sm.GetIgnoreCase() {
		fold = strings.ToLower
	}
	switch p := sm.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		want := fold(p.Exact)
		return func(v string) bool { return fold(v) == want }, nil
	case *matcherv3.StringMatcher_Prefix:
		want := fold(p.Prefix)
		return func(v string) bool { return strings.HasPrefix(fold(v), want) }, nil
	case *matcherv3.StringMatcher_Suffix:
		want := fold(p.Suffix)
		return func(v string) bool { return strings.HasSuffix(fold(v), want) }, nil
	case *matcherv3.StringMatcher_Contains:
		want := fold(p.Contains)
		return func(v string) bool { return strings.Contains(fold(v), want) }, nil
	case *matcherv3.StringMatcher_SafeRegex:
		re, err := regexp.Compile("^(?:" + p.SafeRegex.GetRegex() + ")$")
		if err != nil {
			return nil, fmt.Errorf("safe_regex: %w", err)
		}
		return re.MatchString, nil
	}
	return nil, errors.New("string matcher: only exact, prefix, suffix, contains and safe_regex are supported")
}

// Headers gives a request header's values by lower-case name, the
// pseudo-headers (:method, :authority, :path, :scheme) included; nil when
// the request has none.
type Headers func(name string) []string

// Matches reports whether a request with this :path and these headers
// matches, as Envoy decides it.
func (m *Matcher) Matches(h Headers, path string) bool {
	p := path
	if m.caseInsensitive {
		p = strings.ToLower(p)
	}
	switch {
	case m.regex != nil:
		if !m.regex.MatchString(stripQuery(path)) {
			return false
		}
	case m.path != "":
		if stripQuery(p) != m.path {
			return false
		}
	default:
		// A prefix is matched against the whole :path, query included.
		if !strings.HasPrefix(p, m.prefix) {
			return false
		}
	}
	for _, hm := range m.headers {
		if !hm.matches(h) {
			return false
		}
	}
	return true
}

func stripQuery(path string) string {
	if i := strings.IndexAny(path, "?#"); i >= 0 {
		return path[:i]
	}
	return path
}

func (hm *headerMatcher) matches(h Headers) bool {
	values := h(hm.name)
	if hm.present != nil {
		return ((len(values) > 0) == *hm.present) != hm.invert
	}
	if len(values) == 0 && !hm.treatMissingAsEmpty {
		return false
	}
	return hm.match(strings.Join(values, ",")) != hm.invert
}
