package ops

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
)

func TestRequireToken(t *testing.T) {
	mux := http.NewServeMux()
	HandleProbes(mux, NewRegistry(), func() error { return nil })
	mux.HandleFunc("POST /v1/change", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) })
	h := RequireToken("s3cret", mux)
	for _, tc := range []struct {
		method, path, auth string
		want               int
	}{
		{"POST", "/v1/change", "Bearer s3cret", http.StatusNoContent},
		{"POST", "/v1/change", "", http.StatusUnauthorized},
		{"POST", "/v1/change", "Bearer wrong", http.StatusUnauthorized},
		{"POST", "/v1/change", "s3cret", http.StatusUnauthorized},
		{"POST", "/v1/nothing-here", "", http.StatusUnauthorized}, // no hint of what exists
		{"GET", "/healthz", "", http.StatusOK},
		{"GET", "/readyz", "", http.StatusOK},
		{"GET", "/metrics", "", http.StatusOK},
	} {
		req := httptest.NewRequest(tc.method, tc.path, nil)
		if tc.auth != "" {
			req.Header.Set("Authorization", tc.auth)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != tc.want {
			t.Errorf("%s %s with %q: %d, want %d", tc.method, tc.path, tc.auth, rec.Code, tc.want)
		}
		if rec.Code == http.StatusUnauthorized && rec.Header().Get("WWW-Authenticate") == "" {
			t.Errorf("%s %s: 401 without WWW-Authenticate", tc.method, tc.path)
		}
	}
	if RequireToken("", mux) != http.Handler(mux) {
		t.Error("an empty token should leave the handler as it is")
	}
}

func TestReadToken(t *testing.T) {
	dir := t.TempDir()
	good, blank := filepath.Join(dir, "token"), filepath.Join(dir, "blank")
	if err := os.WriteFile(good, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(blank, []byte(" \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if tok, err := ReadToken("x.admin_token_file", good); err != nil || tok != "s3cret" {
		t.Errorf("ReadToken(good) = %q, %v; want s3cret", tok, err)
	}
	if tok, err := ReadToken("x.admin_token_file", ""); err != nil || tok != "" {
		t.Errorf("ReadToken(\"\") = %q, %v; want no token", tok, err)
	}
	for _, p := range []string{blank, filepath.Join(dir, "missing")} {
		if _, err := ReadToken("x.admin_token_file", p); err == nil {
			t.Errorf("ReadToken(%s) accepted it", p)
		}
	}
}
