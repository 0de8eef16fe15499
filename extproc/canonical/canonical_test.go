package canonical

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func TestCanonicalizeSharesOneKeyAcrossSpellings(t *testing.T) {
	a := []byte(`{"model":"use-lite","input":["a b","c"],"encoding_format":"float"}`)
	b := []byte("{\n  \"encoding_format\" : \"float\",\n  \"input\": [\"a b\", \"c\"],\n  \"model\": \"use-lite\", \"user\": \"alice\"}")
	ca, err := Canonicalize(a)
	if err != nil {
		t.Fatal(err)
	}
	cb, err := Canonicalize(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ca, cb) {
		t.Fatalf("same request, different keys:\n%s\n%s", ca, cb)
	}
	want := `{"encoding_format":"float","input":["a b","c"],"model":"use-lite"}`
	if string(ca) != want {
		t.Fatalf("canonical = %s, want %s", ca, want)
	}
}

func TestCanonicalizeKeepsMeaningfulDifferences(t *testing.T) {
	pairs := [][2]string{
		{`{"input":"a"}`, `{"input":"b"}`},
		{`{"input":["a","b"]}`, `{"input":["b","a"]}`},
		{`{"stream":true}`, `{"stream":false}`},
		{`{"x":{"user":"a"}}`, `{"x":{"user":"b"}}`}, // only top-level user is volatile
		{`{"stream":true,"stream_options":{"include_usage":true}}`, `{"stream":true}`},
	}
	for _, p := range pairs {
		a, errA := Canonicalize([]byte(p[0]))
		b, errB := Canonicalize([]byte(p[1]))
		if errA != nil || errB != nil {
			t.Fatal(errA, errB)
		}
		if bytes.Equal(a, b) {
			t.Errorf("%s and %s share the key %s", p[0], p[1], a)
		}
	}
}

func TestCanonicalizeNormalisesStringEscapes(t *testing.T) {
	a, _ := Canonicalize([]byte(`{"input":"\u0041\/b"}`))
	b, _ := Canonicalize([]byte(`{"input":"A/b"}`))
	if !bytes.Equal(a, b) {
		t.Fatalf("%s != %s", a, b)
	}
}

func TestCanonicalizeRefusesWhatIsNotOneJSONValue(t *testing.T) {
	for _, body := range []string{``, `{`, `{"a":1}{"b":2}`, `{"a":1,"a":2}`, "\x00\xff\x10", `{"a":}`, `nul`} {
		if c, err := Canonicalize([]byte(body)); err == nil {
			t.Errorf("Canonicalize(%q) = %s, want an error", body, c)
		}
	}
}

func TestParseDeterminism(t *testing.T) {
	cases := []struct {
		body string
		want bool
	}{
		{`{"model":"m","input":"hi"}`, true},
		{`{"model":"m","messages":[]}`, false}, // default temperature 1
		{`{"model":"m","messages":[],"temperature":0}`, true},
		{`{"model":"m","messages":[],"temperature":0.7}`, false},
		{`{"model":"m","messages":[],"temperature":0.7,"seed":4}`, true},
		{`{"model":"m","prompt":"x","temperature":0,"n":3}`, false},
		{`not json`, true},
	}
	for _, c := range cases {
		if got := Parse([]byte(c.body)).Deterministic; got != c.want {
			t.Errorf("Parse(%s).Deterministic = %v, want %v", c.body, got, c.want)
		}
	}
}

func TestParseReadsModelAndStream(t *testing.T) {
	r := Parse([]byte(`{"model":"use-lite","stream":true,"messages":[],"temperature":0}`))
	if !r.JSON || r.Model != "use-lite" || !r.Stream {
		t.Fatalf("Parse = %+v", r)
	}
	raw := []byte("\x89PNG\r\n")
	r = Parse(raw)
	if r.JSON || !bytes.Equal(r.Canonical, raw) || r.Model != "" {
		t.Fatalf("binary body: %+v", r)
	}
}

func TestParseRefusesDeepNesting(t *testing.T) {
	deep := bytes.Repeat([]byte("["), 10000)
	if r := Parse(deep); r.JSON {
		t.Fatal("10000 nested arrays reported as JSON")
	}
}

// FuzzCanonicalize checks the properties the cache relies on: no panic,
// canonical output is valid JSON equal in meaning to the input (less the
// volatile fields), and canonicalising it again changes nothing.
func FuzzCanonicalize(f *testing.F) {
	for _, s := range []string{
		`{"model":"m","input":["a","b"],"user":"u"}`,
		`{"b":1,"a":{"d":[1,2,{"z":null}],"c":"\u00e9\n"}}`,
		`[1, 2.50, -3e10, true, false, null]`,
		`"\ud800"`, `{"a":1,"a":1}`, `{}`, `[]`, "\xff", `{"stream_options":{"include_usage":true}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		canon, err := Canonicalize(body)
		if err != nil {
			return
		}
		if !json.Valid(canon) {
			t.Fatalf("canonical form of %q is not JSON: %q", body, canon)
		}
		again, err := Canonicalize(canon)
		if err != nil || !bytes.Equal(again, canon) {
			t.Fatalf("not idempotent: %q -> %q -> %q (%v)", body, canon, again, err)
		}
		in, errIn := decodeNumbers(body)
		out, errOut := decodeNumbers(canon)
		if errIn != nil || errOut != nil {
			t.Fatalf("stdlib disagrees on validity of %q", body)
		}
		if m, ok := in.(map[string]any); ok {
			for _, k := range Volatile {
				delete(m, k)
			}
		}
		a, _ := json.Marshal(in)
		b, _ := json.Marshal(out)
		if !bytes.Equal(a, b) {
			t.Fatalf("meaning changed: %s vs %s", a, b)
		}
	})
}

// decodeNumbers is the stdlib's reading of body with numbers kept as text,
// the reference the fuzzer compares against.
func decodeNumbers(body []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	err := dec.Decode(&v)
	return v, err
}

// Go's encoding/json, which the engine uses, keeps the last of duplicate
// keys and matches field names in any case; a body it would read
// differently from Parse is reported, saying which key.
func TestParseReportsAmbiguousBodies(t *testing.T) {
	for body, want := range map[string]string{
		`{"model":"a","model":"b"}`:        `duplicate object key "model"`,
		`{"input":[{"x":1,"x":2}]}`:        `duplicate object key "x"`,
		`{"Model":"b","input":"x"}`:        `field "Model" is "model" in another case`,
		`{"model":"a","N":2,"prompt":"x"}`: `field "N" is "n" in another case`,
	} {
		if got := Parse([]byte(body)); !strings.Contains(got.Ambiguous, want) || got.Deterministic {
			t.Errorf("Parse(%s).Ambiguous = %q (deterministic %t), want %q and not deterministic", body, got.Ambiguous, got.Deterministic, want)
		}
	}
	if got := Parse([]byte(`{"model":"a","Input":"x","user":"u"}`)); got.Ambiguous != "" {
		t.Errorf("a mixed-case field the server does not read: Ambiguous %q", got.Ambiguous)
	}
}
