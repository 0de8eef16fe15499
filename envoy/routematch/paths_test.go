package routematch

import "testing"

func TestOddEscape(t *testing.T) {
	for path, want := range map[string]bool{
		"/v1/embeddings":         false,
		"/v2/models/a%20b/infer": false, // a reserved character stays escaped
		"/v2/models/a%C3%A9":     false,
		"/v1/x?q=%73":            false, // the query is not routed on
		"/v1/embedding%73":       true,  // what "/v1/embedding%7%33" normalizes to
		"/v1/%65mbeddings":       true,
		"/v1/embeddings%":        true,
		"/v1/embeddings%4":       true,
		"/v1/%zzembeddings":      true,
		"/v1/embedding%7%33":     true,
	} {
		if got := OddEscape(path); got != want {
			t.Errorf("OddEscape(%q) = %t, want %t", path, got, want)
		}
	}
}
