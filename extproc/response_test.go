package extproc

import "testing"

func TestUsageTokens(t *testing.T) {
	cases := []struct {
		body string
		sse  bool
		want int64
	}{
		{`{"object":"list","usage":{"prompt_tokens":7,"total_tokens":7}}`, false, 7},
		{`{"usage":{"prompt_tokens":7,"completion_tokens":5}}`, false, 12},
		{`{"model_name":"use-lite","parameters":{"prompt_tokens":9},"outputs":[]}`, false, 9},
		{`{"error":"bad"}`, false, 0},
		{`not json`, false, 0},
		{"data: {\"choices\":[]}\n\ndata: {\"choices\":[],\"usage\":{\"total_tokens\":11}}\n\ndata: [DONE]\n\n", true, 11},
		{"data: [DONE]\n\n", true, 0},
	}
	for _, c := range cases {
		if got := usageTokens([]byte(c.body), c.sse); got != c.want {
			t.Errorf("usageTokens(%q) = %d, want %d", c.body, got, c.want)
		}
	}
}

func TestDirectivesAndStoredHeaders(t *testing.T) {
	d := directives("No-Store, max-age=60 ,private")
	if !d["no-store"] || !d["private"] || !d["max-age"] || d["no-cache"] {
		t.Fatalf("directives = %v", d)
	}
	kept := storedHeaders(headers{":status": "200", "content-type": "application/json", "set-cookie": "s=1",
		"date": "x", "content-length": "5", "x-envoy-upstream-service-time": "3", "x-model-version": "1"})
	names := map[string]bool{}
	for _, h := range kept {
		names[h.Name] = true
	}
	if len(kept) != 2 || !names["content-type"] || !names["x-model-version"] {
		t.Fatalf("stored headers = %v, want content-type and x-model-version only", kept)
	}
}

func TestEventStreamEndsWithDone(t *testing.T) {
	for body, want := range map[string]bool{
		"data: {\"x\":1}\n\ndata: [DONE]\n\n": true,
		"data:[DONE]\r\n\r\n":                 true,
		"data: [DONE]":                        true,
		// The words inside an answer, then the stream breaks off.
		"data: {\"content\":\"data: [DONE]\"}\n\ndata: {\"content\":\"and then\"}\n\n": false,
		"data: {\"content\":\"a line\\ndata: [DONE]\"}\n\n":                            false,
		"": false,
	} {
		if got := endsWithDone([]byte(body)); got != want {
			t.Errorf("endsWithDone(%q) = %v, want %v", body, got, want)
		}
	}
}
