package harness

import (
	"fmt"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"

	mutationrulesv3 "github.com/envoyproxy/go-control-plane/envoy/config/common/mutation_rules/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// header is one entry of an Envoy header map: lower-case key, order kept.
type header struct{ key, value string }

// headerMap mirrors Envoy's HeaderMap: ordered, lower-case keys, pseudo
// headers first, repeated keys allowed.
type headerMap struct{ list []header }

func (m *headerMap) get(key string) (string, bool) {
	for _, h := range m.list {
		if h.key == key {
			return h.value, true
		}
	}
	return "", false
}

func (m *headerMap) has(key string) bool { _, ok := m.get(key); return ok }

func (m *headerMap) add(key, value string) { m.list = append(m.list, header{key, value}) }

func (m *headerMap) set(key, value string) {
	m.remove(key)
	m.add(key, value)
}

func (m *headerMap) remove(key string) {
	kept := m.list[:0]
	for _, h := range m.list {
		if h.key != key {
			kept = append(kept, h)
		}
	}
	m.list = kept
}

func (m *headerMap) clone() *headerMap {
	return &headerMap{list: append([]header(nil), m.list...)}
}

// httpHeader returns the regular (non-pseudo) headers as an http.Header.
func (m *headerMap) httpHeader() http.Header {
	h := http.Header{}
	for _, e := range m.list {
		if !strings.HasPrefix(e.key, ":") {
			h.Add(e.key, e.value)
		}
	}
	return h
}

// fromHTTPHeader appends h in a stable order (sorted keys) after whatever
// pseudo headers m already holds, lower-casing names as Envoy's codecs do.
func (m *headerMap) appendHTTPHeader(h http.Header) {
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		for _, v := range h[k] {
			m.add(strings.ToLower(k), v)
		}
	}
}

// proto renders the map as Envoy puts it on the wire: raw_value only,
// filtered by the forward rules.
func (m *headerMap) proto(rules *forwardRules) *corev3.HeaderMap {
	out := &corev3.HeaderMap{}
	for _, h := range m.list {
		if rules.forward(h.key) {
			out.Headers = append(out.Headers, &corev3.HeaderValue{Key: h.key, RawValue: []byte(h.value)})
		}
	}
	return out
}

// forwardRules implements ExternalProcessor.forward_rules.
type forwardRules struct {
	allowed, disallowed []*stringMatcher
}

func newForwardRules(r interface {
	GetAllowedHeaders() *matcherv3.ListStringMatcher
	GetDisallowedHeaders() *matcherv3.ListStringMatcher
}) (*forwardRules, error) {
	fr := &forwardRules{}
	if r == nil {
		return fr, nil
	}
	var err error
	if fr.allowed, err = compileMatchers(r.GetAllowedHeaders()); err != nil {
		return nil, fmt.Errorf("forward_rules.allowed_headers: %w", err)
	}
	if fr.disallowed, err = compileMatchers(r.GetDisallowedHeaders()); err != nil {
		return nil, fmt.Errorf("forward_rules.disallowed_headers: %w", err)
	}
	return fr, nil
}

func (r *forwardRules) forward(key string) bool {
	if r == nil {
		return true
	}
	if r.allowed != nil && !anyMatch(r.allowed, key) {
		return false
	}
	return !anyMatch(r.disallowed, key)
}

type stringMatcher struct {
	m  *matcherv3.StringMatcher
	re *regexp.Regexp
}

func compileMatchers(l *matcherv3.ListStringMatcher) ([]*stringMatcher, error) {
	if l == nil {
		return nil, nil
	}
	out := make([]*stringMatcher, 0, len(l.GetPatterns()))
	for _, p := range l.GetPatterns() {
		sm := &stringMatcher{m: p}
		if re := p.GetSafeRegex(); re != nil {
			c, err := regexp.Compile("^(?:" + re.GetRegex() + ")$")
			if err != nil {
				return nil, err
			}
			sm.re = c
		}
		out = append(out, sm)
	}
	return out, nil
}

func anyMatch(ms []*stringMatcher, s string) bool {
	for _, m := range ms {
		if m.match(s) {
			return true
		}
	}
	return false
}

func (sm *stringMatcher) match(s string) bool {
	m := sm.m
	if sm.re != nil {
		return sm.re.MatchString(s)
	}
	norm := func(x string) string {
		if m.GetIgnoreCase() {
			return strings.ToLower(x)
		}
		return x
	}
	switch p := m.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		return norm(s) == norm(p.Exact)
	case *matcherv3.StringMatcher_Prefix:
		return strings.HasPrefix(norm(s), norm(p.Prefix))
	case *matcherv3.StringMatcher_Suffix:
		return strings.HasSuffix(norm(s), norm(p.Suffix))
	case *matcherv3.StringMatcher_Contains:
		return strings.Contains(norm(s), norm(p.Contains))
	}
	return false
}

// checkResult is the verdict of the mutation checker, as in Envoy's
// mutation_rules Checker.
type checkResult int

const (
	checkOK checkResult = iota
	checkIgnore
	checkFail
)

type checkOp int

const (
	opSet checkOp = iota
	opAppend
	opRemove
)

// mutationChecker applies HeaderMutationRules. With no rules set (Envoy's
// default), a disallowed mutation is ignored and counted; only with
// disallow_is_error does it fail the request with a 500.
type mutationChecker struct {
	rules               *mutationrulesv3.HeaderMutationRules
	allowRe, disallowRe *regexp.Regexp
}

func newMutationChecker(r *mutationrulesv3.HeaderMutationRules) (*mutationChecker, error) {
	c := &mutationChecker{rules: r}
	if r == nil {
		c.rules = &mutationrulesv3.HeaderMutationRules{}
	}
	var err error
	if re := c.rules.GetAllowExpression(); re != nil {
		if c.allowRe, err = regexp.Compile("^(?:" + re.GetRegex() + ")$"); err != nil {
			return nil, fmt.Errorf("mutation_rules.allow_expression: %w", err)
		}
	}
	if re := c.rules.GetDisallowExpression(); re != nil {
		if c.disallowRe, err = regexp.Compile("^(?:" + re.GetRegex() + ")$"); err != nil {
			return nil, fmt.Errorf("mutation_rules.disallow_expression: %w", err)
		}
	}
	return c, nil
}

// permissiveChecker is what Envoy uses for ImmediateResponse headers: routing
// and x-envoy headers are allowed so a processor can shape its own reply.
func permissiveChecker() *mutationChecker {
	return &mutationChecker{rules: &mutationrulesv3.HeaderMutationRules{
		AllowAllRouting: wrapTrue(), AllowEnvoy: wrapTrue(),
	}}
}

func (c *mutationChecker) check(op checkOp, name, value string) checkResult {
	if c.allowed(op, name, value) {
		return checkOK
	}
	if c.rules.GetDisallowIsError().GetValue() {
		return checkFail
	}
	return checkIgnore
}

func (c *mutationChecker) allowed(op checkOp, name, value string) bool {
	r := c.rules
	if op == opRemove && (strings.HasPrefix(name, ":") || name == "host") {
		return false
	}
	if name == ":status" && op != opRemove {
		code, err := strconv.Atoi(value)
		if err != nil || !validHTTPStatus(code) {
			return false
		}
	}
	if c.disallowRe != nil && c.disallowRe.MatchString(name) {
		return false
	}
	if c.allowRe != nil && c.allowRe.MatchString(name) {
		return true
	}
	if r.GetDisallowAll().GetValue() {
		return false
	}
	switch {
	case name == ":method" || name == ":scheme" || name == ":authority" || name == "host":
		return r.GetAllowAllRouting().GetValue()
	case strings.HasPrefix(name, "x-envoy"):
		return r.GetAllowEnvoy().GetValue()
	case strings.HasPrefix(name, ":"):
		return !r.GetDisallowSystem().GetValue()
	}
	return true
}

// validHTTPStatus is Envoy's MutationUtils::isValidHttpStatus.
func validHTTPStatus(code int) bool { return code >= 200 }

// mutationError is a mutation Envoy refuses outright: the request ends with
// a 500 whatever failure_mode_allow says.
type mutationError struct{ msg string }

func (e *mutationError) Error() string { return e.msg }

// applyHeaderMutation follows Envoy's MutationUtils::applyHeaderMutations:
// removals first, then sets; each checked against the rules. It returns how
// many mutations were ignored.
func applyHeaderMutation(mut *extprocv3.HeaderMutation, m *headerMap, replacing bool, c *mutationChecker) (int, error) {
	rejected := 0
	for _, name := range mut.GetRemoveHeaders() {
		if !validHeaderName(name) {
			return rejected, &mutationError{fmt.Sprintf("invalid character in remove_headers mutation %q", name)}
		}
		key := strings.ToLower(name)
		switch c.check(opRemove, key, "") {
		case checkOK:
			m.remove(key)
		case checkIgnore:
			rejected++
		case checkFail:
			return rejected + 1, &mutationError{fmt.Sprintf("header %q may not be removed", key)}
		}
	}
	for _, opt := range mut.GetSetHeaders() {
		hv := opt.GetHeader()
		if hv == nil {
			continue
		}
		if hv.GetValue() != "" && len(hv.GetRawValue()) != 0 {
			return rejected + 1, &mutationError{fmt.Sprintf("header %q sets both value and raw_value; only one may be set", hv.GetKey())}
		}
		// Envoy reads raw_value only: a processor that fills in value
		// alone sets the header to the empty string.
		value := string(hv.GetRawValue())
		if !validHeaderName(hv.GetKey()) || !validHeaderValue(value) {
			return rejected + 1, &mutationError{fmt.Sprintf("invalid header %q in set_headers mutation", hv.GetKey())}
		}
		key := strings.ToLower(hv.GetKey())
		exists := m.has(key)
		// A non-default append_action decides; otherwise the legacy append
		// flag does, and it defaults to overwrite.
		appendValue, apply := opt.GetAppend().GetValue(), true
		switch opt.GetAppendAction() {
		case corev3.HeaderValueOption_ADD_IF_ABSENT:
			appendValue, apply = true, !exists
		case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD:
			appendValue = false
		case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS:
			appendValue, apply = false, exists
		}
		if !apply {
			continue
		}
		op := opSet
		if appendValue && exists {
			op = opAppend
		}
		res := c.check(op, key, value)
		if replacing && key == ":method" {
			// Envoy lets CONTINUE_AND_REPLACE change the method.
			res = checkOK
		}
		switch res {
		case checkIgnore:
			rejected++
		case checkFail:
			return rejected + 1, &mutationError{fmt.Sprintf("header %q may not be modified", key)}
		case checkOK:
			if appendValue {
				m.add(key, value)
			} else {
				m.set(key, value)
			}
		}
	}
	return rejected, nil
}

func validHeaderName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/;<=>?@[\\]{}`, c) >= 0 || (c == ':' && i > 0) {
			return false
		}
	}
	return true
}

// validHeaderValue is Envoy's HeaderUtility::headerValueIsValid: no
// control character but tab, and no DEL.
func validHeaderValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}
