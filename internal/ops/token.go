package ops

import (
	"crypto/subtle"
	"fmt"
	"net/http"
	"os"
	"strings"
)

// ReadToken reads the bearer token in the file at path, named by its
// config field in errors; "" when path is empty (no token).
func ReadToken(field, path string) (string, error) {
	if path == "" {
		return "", nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", field, err)
	}
	token := strings.TrimSpace(string(data))
	if token == "" {
		return "", fmt.Errorf("%s: %s holds no token", field, path)
	}
	return token, nil
}

// RequireToken lets through only requests that carry token as a bearer
// token; the probes HandleProbes serves stay open, for Prometheus and
// orchestrators. An empty token lets every request through.
func RequireToken(token string, next http.Handler) http.Handler {
	if token == "" {
		return next
	}
	want := []byte("Bearer " + token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/metrics", "/healthz", "/readyz":
			next.ServeHTTP(w, r)
			return
		}
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="infergate admin"`)
			WriteError(w, http.StatusUnauthorized, "this admin API needs the bearer token from its admin_token_file")
			return
		}
		next.ServeHTTP(w, r)
	})
}
