package xdsproxy

import (
	"fmt"
	"strings"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
)

// pathRules is the HCM's path handling, which Envoy applies to :path as a
// request arrives, before any filter or route sees it; the upstream gets
// the result too.
type pathRules struct {
	normalize    bool
	mergeSlashes bool
	// rejectEscapedSlashes answers 400 to a path holding %2F or %5C;
	// unescapeSlashes decodes them. Neither: they are left as they are.
	rejectEscapedSlashes, unescapeSlashes bool
}

func decodePathRules(hcm *hcmv3.HttpConnectionManager) (pathRules, error) {
	r := pathRules{normalize: hcm.GetNormalizePath().GetValue(), mergeSlashes: hcm.GetMergeSlashes()}
	switch a := hcm.GetPathWithEscapedSlashesAction(); a {
	case hcmv3.HttpConnectionManager_IMPLEMENTATION_SPECIFIC_DEFAULT, hcmv3.HttpConnectionManager_KEEP_UNCHANGED:
	case hcmv3.HttpConnectionManager_REJECT_REQUEST:
		r.rejectEscapedSlashes = true
	case hcmv3.HttpConnectionManager_UNESCAPE_AND_FORWARD:
		r.unescapeSlashes = true
	default:
		return r, fmt.Errorf("path_with_escaped_slashes_action %s is not supported", a)
	}
	if hcm.GetPathNormalizationOptions() != nil {
		return r, fmt.Errorf("path_normalization_options are not supported")
	}
	return r, nil
}

// apply returns the request target as Envoy passes it on, or ok false when
// Envoy refuses the request (400). Only the path is touched, not the query.
func (r pathRules) apply(target string) (string, bool) {
	path, query, hasQuery := strings.Cut(target, "?")
	if !strings.HasPrefix(path, "/") {
		return target, true
	}
	if r.rejectEscapedSlashes || r.unescapeSlashes {
		unescaped := unescapeSlashes(path)
		if unescaped != path && r.rejectEscapedSlashes {
			return "", false
		}
		path = unescaped
	}
	if r.normalize {
		path = canonicalPath(path)
	}
	if r.mergeSlashes {
		for strings.Contains(path, "//") {
			path = strings.ReplaceAll(path, "//", "/")
		}
	}
	if hasQuery {
		return path + "?" + query, true
	}
	return path, true
}

func unescapeSlashes(path string) string {
	return strings.NewReplacer("%2F", "/", "%2f", "/", "%5C", `\`, "%5c", `\`).Replace(path)
}

// canonicalPath is RFC 3986 normalization as Envoy's normalize_path does
// it: escapes of unreserved characters are decoded (%65 is e), other
// escapes are kept with upper-case hex, and dot segments are resolved.
func canonicalPath(path string) string {
	var b strings.Builder
	for i := 0; i < len(path); i++ {
		c := path[i]
		if c == '%' && i+2 < len(path) && isHex(path[i+1]) && isHex(path[i+2]) {
			d := unhex(path[i+1])<<4 | unhex(path[i+2])
			if isUnreserved(d) {
				b.WriteByte(d)
			} else {
				b.WriteString(strings.ToUpper(path[i : i+3]))
			}
			i += 2
			continue
		}
		b.WriteByte(c)
	}
	return removeDotSegments(b.String())
}

// removeDotSegments is RFC 3986 section 5.2.4 for an absolute path.
func removeDotSegments(path string) string {
	segs := strings.Split(path, "/")[1:]
	out := make([]string, 0, len(segs))
	for i, s := range segs {
		last := i == len(segs)-1
		switch s {
		case ".":
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
		default:
			out = append(out, s)
			continue
		}
		if last {
			out = append(out, "")
		}
	}
	return "/" + strings.Join(out, "/")
}

func isUnreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	default:
		return c - 'a' + 10
	}
}
