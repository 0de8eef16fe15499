package engine

import (
	"errors"
	"net/http"
	"testing"
)

// The parsers take any bytes a client sends: they never panic, and what
// they refuse is a 400 with a message.
func FuzzParseEmbeddingsRequest(f *testing.F) {
	for _, seed := range []string{
		`{"model":"use-lite","input":"hello"}`,
		`{"model":"use-lite","input":["a","b"],"encoding_format":"base64","dimensions":512}`,
		`{"input":[[1,2],[3]]}`,
		`{"input":[1,2,3]}`,
		`{"input":["a",null]}`,
		`{"input":null}`,
		`{"input":{"text":"x"}}`,
		`{"input":"\ud800"}`,
		`{"input":"x","dimensions":-1}`,
		`{"input":"x","encoding_format":7}`,
		`[]`,
		`{"input":"x"} trailing`,
		``,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := parseEmbeddingsRequest(body)
		if err != nil {
			checkBadRequest(t, err)
			return
		}
		if len(req.Inputs) == 0 {
			t.Fatalf("accepted %q without inputs", body)
		}
		if req.Dimensions < 0 {
			t.Fatalf("accepted negative dimensions from %q", body)
		}
	})
}

func FuzzParseInferRequest(f *testing.F) {
	for _, seed := range []string{
		`{"id":"1","inputs":[{"name":"text","shape":[2],"datatype":"BYTES","data":["a","b"]}]}`,
		`{"inputs":[{"name":"text","shape":[2,1],"datatype":"BYTES","data":[["a"],["b"]]}],"outputs":[{"name":"embedding"}]}`,
		`{"inputs":[{"name":"text","shape":[9223372036854775807],"datatype":"BYTES","data":["a"]}]}`,
		`{"inputs":[{"name":"text","shape":[-1],"datatype":"BYTES","data":[]}]}`,
		`{"inputs":[{"name":"text","shape":[1],"datatype":"BYTES","data":[1]}]}`,
		`{"inputs":[{"name":"text","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":4}}]}`,
		`{"inputs":[{"name":"text","shape":[1],"datatype":"BYTES","data":[["a",["b"]]]}]}`,
		`{"inputs":[{"name":"text","shape":[1,2],"datatype":"BYTES","data":["a","b"]}]}`,
		`{"inputs":[],"outputs":[{"name":"embedding","parameters":{"binary_data":true}}]}`,
		`{"inputs":"x"}`,
		`null`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := parseInferRequest(body)
		if err != nil {
			checkBadRequest(t, err)
			return
		}
		if len(req.Texts) == 0 {
			t.Fatalf("accepted %q without texts", body)
		}
	})
}

func checkBadRequest(t *testing.T, err error) {
	t.Helper()
	var ae *apiError
	if !errors.As(err, &ae) || ae.status != http.StatusBadRequest || ae.msg == "" {
		t.Fatalf("refusal %v is not a 400 with a message", err)
	}
}
