// Package apierror writes error bodies in the shape the client of each API
// expects, so that OpenAI's and KServe's SDKs show infergate's message
// unchanged: OpenAI's error object under /v1/, and KServe v2's
// {"error": "..."} everywhere else (also infergate's own admin APIs).
package apierror

import (
	"encoding/json"
	"net/http"
	"strings"
)

// Codes set in OpenAI's "code" field; OpenAI uses the same ones.
const (
	CodeModelNotFound     = "model_not_found"
	CodeRateLimitExceeded = "rate_limit_exceeded"
)

type openAIError struct {
	Error openAIDetail `json:"error"`
}

// openAIDetail is OpenAI's error object; param and code are null when
// unknown, as OpenAI sends them.
type openAIDetail struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
}

// IsOpenAI reports whether path is under OpenAI's /v1/ API.
func IsOpenAI(path string) bool { return strings.HasPrefix(path, "/v1/") }

// Body is the JSON body, newline-terminated, that answers a request to
// path with status and msg. code is OpenAI's "code" ("" for none); the
// KServe shape has no place for it.
func Body(path string, status int, msg, code string) []byte {
	var v any = map[string]string{"error": msg}
	if IsOpenAI(path) {
		d := openAIDetail{Message: msg, Type: openAIType(status)}
		if code != "" {
			d.Code = &code
		}
		v = openAIError{Error: d}
	}
	b, _ := json.Marshal(v) // strings and pointers to strings always encode
	return append(b, '\n')
}

// Write answers w with status and Body's body.
func Write(w http.ResponseWriter, path string, status int, msg, code string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(Body(path, status, msg, code))
}

// openAIType is the "type" OpenAI gives errors of a status. Its SDKs pick
// the exception class by status; the type is informational.
func openAIType(status int) string {
	switch {
	case status >= 500:
		return "server_error"
	case status == http.StatusTooManyRequests:
		return "rate_limit_error"
	case status == http.StatusUnauthorized:
		return "authentication_error"
	case status == http.StatusForbidden:
		return "permission_error"
	}
	return "invalid_request_error"
}

// Message reads the message of an error body of either shape; ok is false
// when body is neither.
func Message(body []byte) (msg string, ok bool) {
	var e struct {
		Error json.RawMessage `json:"error"`
	}
	if json.Unmarshal(body, &e) != nil || len(e.Error) == 0 {
		return "", false
	}
	if json.Unmarshal(e.Error, &msg) == nil {
		return msg, msg != ""
	}
	var d openAIDetail
	if json.Unmarshal(e.Error, &d) != nil {
		return "", false
	}
	return d.Message, d.Message != ""
}
