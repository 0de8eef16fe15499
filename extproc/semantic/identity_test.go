package semantic

import (
	"errors"
	"regexp"
	"testing"
)

func TestParseIdentityTakesTheLastUserMessage(t *testing.T) {
	body := `{"model":"m","temperature":0,"messages":[
		{"role":"system","content":"You are terse."},
		{"role":"user","content":"Hi"},
		{"role":"assistant","content":"Hello"},
		{"role":"user","content":[{"type":"text","text":"How do I reset"},{"type":"text","text":"my password?"}]}]}`
	id, err := ParseIdentity("/v1/chat/completions?x=1", []byte(body))
	if err != nil {
		t.Fatal(err)
	}
	if id.Kind != "chat" || id.Model != "m" || id.Text != "How do I reset\nmy password?" {
		t.Fatalf("identity = %+v", id)
	}
	if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(id.Context) {
		t.Fatalf("context %q is not a SHA-256 hex", id.Context)
	}
}

func TestParseIdentityContext(t *testing.T) {
	base := `{"model":"m","temperature":0.0,"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Q1"}],"user":"alice"}`
	ctx := func(path, body string) string {
		t.Helper()
		id, err := ParseIdentity(path, []byte(body))
		if err != nil {
			t.Fatalf("%s: %v", body, err)
		}
		return id.Context
	}
	want := ctx("/v1/chat/completions", base)
	same := []string{
		`{"messages":[{"content":"Be brief.","role":"system"},{"role":"user","content":"another question"}],"temperature":0,"model":"m"}`,
		`{"model":"m","temperature":0,"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Q1"}],"user":"bob"}`,
	}
	for _, b := range same {
		if got := ctx("/v1/chat/completions", b); got != want {
			t.Errorf("context of %s differs from the base, want equal", b)
		}
	}
	differ := []string{
		`{"model":"m","temperature":0,"messages":[{"role":"system","content":"Be verbose."},{"role":"user","content":"Q1"}]}`,
		`{"model":"m2","temperature":0,"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Q1"}]}`,
		`{"model":"m","temperature":0.5,"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Q1"}]}`,
		`{"model":"m","temperature":0,"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Q0"},{"role":"assistant","content":"A0"},{"role":"user","content":"Q1"}]}`,
		`{"model":"m","temperature":0,"tools":[{"type":"function","function":{"name":"f"}}],"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Q1"}]}`,
		`{"model":"m","temperature":0,"response_format":{"type":"json_object"},"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Q1"}]}`,
		// Seeds past float64's 2^53 still differ.
		`{"model":"m","temperature":0,"seed":9007199254740993,"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Q1"}]}`,
	}
	for _, b := range differ {
		if got := ctx("/v1/chat/completions", b); got == want {
			t.Errorf("context of %s equals the base, want different", b)
		}
	}
	if ctx("/v1/completions", `{"model":"m","prompt":"Q1"}`) == ctx("/v1/completions", `{"model":"m","prompt":"Q1","max_tokens":5}`) {
		t.Error("max_tokens does not change a completion's context")
	}
	seed := func(n string) string {
		return ctx("/v1/completions", `{"model":"m","prompt":"Q1","seed":`+n+`}`)
	}
	if seed("9007199254740992") == seed("9007199254740993") {
		t.Error("two seeds above 2^53 share a context")
	}
	if seed("7") != seed("7.0") || seed("7") != seed("7e0") {
		t.Error("7, 7.0 and 7e0 are one seed")
	}
}

func TestParseIdentityRefuses(t *testing.T) {
	for _, tc := range []struct{ path, body string }{
		{"/v1/embeddings", `{"model":"m","input":"hello"}`},
		{"/v2/models/m/infer", `{"inputs":[]}`},
		{"/v1/completions", `{"model":"m","prompt":["a","b"]}`},
		{"/v1/completions", `{"model":"m","prompt":[1,2,3]}`},
		{"/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}`},
		{"/v1/chat/completions", `{"model":"m","messages":[{"role":"system","content":"s"}]}`},
		{"/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"   "}]}`},
		{"/v1/chat/completions", `{"model":"m","messages":"hi"}`},
		{"/v1/chat/completions", `not json`},
		{"/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"a"}]} {}`},
		// Go's encoding/json would read "Text" as the text.
		{"/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"A","Text":"B"}]}]}`},
	} {
		if _, err := ParseIdentity(tc.path, []byte(tc.body)); !errors.Is(err, ErrNotSemantic) {
			t.Errorf("ParseIdentity(%s, %s) error = %v, want ErrNotSemantic", tc.path, tc.body, err)
		}
	}
}

func FuzzParseIdentity(f *testing.F) {
	f.Add("/v1/chat/completions", []byte(`{"model":"m","messages":[{"role":"user","content":"hi"}]}`))
	f.Add("/v1/completions", []byte(`{"model":"m","prompt":["hi"],"temperature":1e400}`))
	f.Add("/v1/chat/completions", []byte(`{"messages":[{"role":"user","content":[{"type":"text","text":"a"}]},{"role":"assistant"}]}`))
	f.Fuzz(func(t *testing.T, path string, body []byte) {
		id, err := ParseIdentity(path, body)
		if err != nil {
			if !errors.Is(err, ErrNotSemantic) {
				t.Fatalf("error %v does not wrap ErrNotSemantic", err)
			}
			return
		}
		if id.Text == "" || len(id.Context) != 64 {
			t.Fatalf("accepted identity without text or context: %+v", id)
		}
		again, err := ParseIdentity(path, body)
		if err != nil || again != id {
			t.Fatalf("parsing twice differs: %+v / %+v (%v)", id, again, err)
		}
	})
}
