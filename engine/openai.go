package engine

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"time"

	"github.com/infergate/infergate/internal/ops"
)

// embeddingsRequest is a parsed OpenAI POST /v1/embeddings body.
type embeddingsRequest struct {
	Model string
	// Inputs are the texts; a single string input is one text.
	Inputs []string
	// Base64 is encoding_format "base64": little-endian float32 bytes.
	Base64 bool
	// Dimensions is the requested width; 0 when not given.
	Dimensions int
	// Truncate cuts inputs to the model's token limit (the default). False
	// (infergate's extension, after TEI's "truncate") refuses a longer
	// input with 413 instead: the semantic cache must not compare two
	// questions by their first tokens only.
	Truncate bool
}

// parseEmbeddingsRequest parses an OpenAI embeddings body. Unknown fields
// (user, and whatever newer clients send) are ignored as OpenAI does;
// token-array inputs are refused because the token ids of another
// tokenizer mean nothing to this model.
func parseEmbeddingsRequest(body []byte) (embeddingsRequest, error) {
	var raw struct {
		Input          json.RawMessage `json:"input"`
		Model          string          `json:"model"`
		EncodingFormat *string         `json:"encoding_format"`
		Dimensions     *int            `json:"dimensions"`
		Truncate       *bool           `json:"truncate"`
	}
	if err := json.Unmarshal(body, &raw); err != nil {
		return embeddingsRequest{}, errorf(http.StatusBadRequest, "invalid JSON body: %s", jsonMessage(err))
	}
	req := embeddingsRequest{Model: raw.Model, Truncate: raw.Truncate == nil || *raw.Truncate}
	in := bytes.TrimSpace(raw.Input)
	switch {
	case len(in) == 0 || bytes.Equal(in, []byte("null")):
		return req, errorf(http.StatusBadRequest, `"input" is required: a string or an array of strings`)
	case in[0] == '"':
		var s string
		if err := json.Unmarshal(in, &s); err != nil {
			return req, errorf(http.StatusBadRequest, `"input": %s`, jsonMessage(err))
		}
		req.Inputs = []string{s}
	case in[0] == '[':
		var elems []json.RawMessage
		if err := json.Unmarshal(in, &elems); err != nil {
			return req, errorf(http.StatusBadRequest, `"input": %s`, jsonMessage(err))
		}
		if len(elems) == 0 {
			return req, errorf(http.StatusBadRequest, `"input" is an empty array`)
		}
		req.Inputs = make([]string, len(elems))
		for i, e := range elems {
			e = bytes.TrimSpace(e)
			if len(e) > 0 && e[0] != '"' {
				if e[0] == '[' || (e[0] >= '0' && e[0] <= '9') || e[0] == '-' {
					return req, errorf(http.StatusBadRequest, `"input": token arrays are not supported; send the text`)
				}
				return req, errorf(http.StatusBadRequest, `"input"[%d] is not a string`, i)
			}
			if err := json.Unmarshal(e, &req.Inputs[i]); err != nil {
				return req, errorf(http.StatusBadRequest, `"input"[%d]: %s`, i, jsonMessage(err))
			}
		}
	default:
		return req, errorf(http.StatusBadRequest, `"input" must be a string or an array of strings`)
	}
	if raw.EncodingFormat != nil {
		switch *raw.EncodingFormat {
		case "float":
		case "base64":
			req.Base64 = true
		default:
			return req, errorf(http.StatusBadRequest, `"encoding_format": %q is not one of float, base64`, *raw.EncodingFormat)
		}
	}
	if raw.Dimensions != nil {
		if *raw.Dimensions < 1 {
			return req, errorf(http.StatusBadRequest, `"dimensions": %d must be a positive integer`, *raw.Dimensions)
		}
		req.Dimensions = *raw.Dimensions
	}
	return req, nil
}

// jsonMessage words encoding/json's errors for a client.
func jsonMessage(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		if te.Field != "" {
			return fmt.Sprintf("field %q must be %s, not %s", te.Field, te.Type, te.Value)
		}
		if te.Type.Kind() == reflect.Struct {
			return fmt.Sprintf("the body must be a JSON object, not %s", te.Value)
		}
		return fmt.Sprintf("expected %s, not %s", te.Type, te.Value)
	}
	return err.Error()
}

func (s *Server) handleEmbeddings(w http.ResponseWriter, r *http.Request) {
	body, err := s.readBody(w, r)
	if err != nil {
		s.countInvalid("", err)
		writeAPIError(w, r, err)
		return
	}
	req, err := parseEmbeddingsRequest(body)
	if err != nil {
		s.countInvalid("", err)
		writeAPIError(w, r, err)
		return
	}
	sv, err := s.lookup(req.Model)
	if err != nil {
		writeAPIError(w, r, err)
		return
	}
	if req.Dimensions != 0 && sv.ready.Load() && req.Dimensions != sv.enc.Dim() {
		err := errorf(http.StatusBadRequest, `"dimensions": model %s produces %d-dimensional embeddings and cannot shorten them; omit dimensions or send %d`,
			sv.cfg.Name, sv.enc.Dim(), sv.enc.Dim())
		s.countInvalid(sv.cfg.Name, err)
		writeAPIError(w, r, err)
		return
	}
	res, err := s.embed(r, sv, req.Inputs, req.Truncate)
	if err != nil {
		writeAPIError(w, r, err)
		return
	}
	out := appendEmbeddingsResponse(make([]byte, 0, embeddingsResponseSize(res.vectors, req.Base64)),
		sv.cfg.Name, res.vectors, req.Base64, res.tokens)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(append(out, '\n'))
}

type modelObject struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
}

// started is reported as every model's "created" time.
var started = time.Now().Unix()

func (s *Server) modelObject(sv *served) modelObject {
	return modelObject{ID: sv.cfg.Name, Object: "model", Created: started, OwnedBy: "infergate"}
}

func (s *Server) handleListModels(w http.ResponseWriter, _ *http.Request) {
	data := make([]modelObject, len(s.order))
	for i, sv := range s.order {
		data[i] = s.modelObject(sv)
	}
	ops.WriteJSON(w, http.StatusOK, map[string]any{"object": "list", "data": data})
}

func (s *Server) handleGetModel(w http.ResponseWriter, r *http.Request) {
	sv, ok := s.models[r.PathValue("model")]
	if !ok {
		writeAPIError(w, r, modelNotFound(r.PathValue("model")))
		return
	}
	ops.WriteJSON(w, http.StatusOK, s.modelObject(sv))
}
