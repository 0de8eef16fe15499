package xdsproxy

import (
	"fmt"
	"strings"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"

	"github.com/infergate/infergate/envoy/routematch"
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
		path = routematch.CanonicalPath(path)
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
