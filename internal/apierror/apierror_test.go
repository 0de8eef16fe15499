package apierror

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
)

// OpenAI's SDKs read error.message, error.type and error.code.
func TestOpenAIPathsGetOpenAIsErrorObject(t *testing.T) {
	var got struct {
		Error struct {
			Message string  `json:"message"`
			Type    string  `json:"type"`
			Param   *string `json:"param"`
			Code    *string `json:"code"`
		} `json:"error"`
	}
	body := Body("/v1/embeddings", http.StatusNotFound, `model "x" is not served here`, CodeModelNotFound)
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatalf("%s: %v", body, err)
	}
	e := got.Error
	if e.Message != `model "x" is not served here` || e.Type != "invalid_request_error" || e.Param != nil || e.Code == nil || *e.Code != "model_not_found" {
		t.Errorf("body %s", body)
	}
	for status, want := range map[int]string{429: "rate_limit_error", 503: "server_error", 401: "authentication_error", 413: "invalid_request_error"} {
		if err := json.Unmarshal(Body("/v1/chat/completions", status, "m", ""), &got); err != nil || got.Error.Type != want || got.Error.Code != nil {
			t.Errorf("status %d: type %q code %v, want %q and null", status, got.Error.Type, got.Error.Code, want)
		}
	}
}

// KServe v2 (and infergate's admin APIs) answer {"error": "..."}; any
// message, control characters included, stays valid JSON.
func TestOtherPathsGetAnErrorString(t *testing.T) {
	msg := "bad \x00\x1f\"quote\" é"
	var got map[string]string
	body := Body("/v2/models/x/infer", http.StatusBadRequest, msg, CodeModelNotFound)
	if err := json.Unmarshal(body, &got); err != nil || got["error"] != msg || len(got) != 1 {
		t.Fatalf("body %q (%v), want {\"error\": %q}", body, err, msg)
	}
	rec := httptest.NewRecorder()
	Write(rec, "", http.StatusConflict, "busy", "")
	if rec.Code != http.StatusConflict || rec.Header().Get("Content-Type") != "application/json" || rec.Body.String() != "{\"error\":\"busy\"}\n" {
		t.Errorf("Write: %d %q %q", rec.Code, rec.Header().Get("Content-Type"), rec.Body.String())
	}
}

func TestMessageReadsBothShapes(t *testing.T) {
	for _, path := range []string{"/v1/embeddings", "/v2/models/x/infer"} {
		if msg, ok := Message(Body(path, 400, "bad input", "")); !ok || msg != "bad input" {
			t.Errorf("%s: Message = %q, %v", path, msg, ok)
		}
	}
	for _, body := range []string{`{}`, `{"error":""}`, `{"error":{"type":"x"}}`, `[1]`, `not json`} {
		if msg, ok := Message([]byte(body)); ok {
			t.Errorf("Message(%s) = %q, true", body, msg)
		}
	}
}
