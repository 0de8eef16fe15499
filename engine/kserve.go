package engine

import (
	"bytes"
	"encoding/json"
	"net/http"

	"github.com/infergate/infergate/internal/ops"
)

// The KServe v2 (Open Inference Protocol) tensors of every model: one
// BYTES input of texts, one FP32 output of vectors.
const (
	inputName  = "text"
	outputName = "embedding"
)

// inferRequest is a parsed KServe v2 infer body.
type inferRequest struct {
	ID        string
	InputName string
	Texts     []string
	// Outputs are the requested output names; empty means all.
	Outputs []string
}

// parseInferRequest parses a v2 infer body with one BYTES input of shape
// [N] or [N,1]; data may be flat or nested one level, row-major. The
// binary tensor extension is refused.
func parseInferRequest(body []byte) (inferRequest, error) {
	type param map[string]json.RawMessage
	var raw struct {
		ID         string `json:"id"`
		Parameters param  `json:"parameters"`
		Inputs     []struct {
			Name       string          `json:"name"`
			Shape      []int64         `json:"shape"`
			Datatype   string          `json:"datatype"`
			Parameters param           `json:"parameters"`
			Data       json.RawMessage `json:"data"`
		} `json:"inputs"`
		Outputs []struct {
			Name       string `json:"name"`
			Parameters param  `json:"parameters"`
		} `json:"outputs"`
	}
	if err := json.Unmarshal(body, &raw); err != nil {
		return inferRequest{}, errorf(http.StatusBadRequest, "invalid JSON body: %s", jsonMessage(err))
	}
	req := inferRequest{ID: raw.ID}
	if len(raw.Inputs) != 1 {
		return req, errorf(http.StatusBadRequest, `"inputs" must hold exactly one tensor (%q, BYTES), got %d`, inputName, len(raw.Inputs))
	}
	in := raw.Inputs[0]
	req.InputName = in.Name
	if in.Datatype != "BYTES" {
		return req, errorf(http.StatusBadRequest, `input %q: datatype %q is not BYTES`, in.Name, in.Datatype)
	}
	if _, ok := in.Parameters["binary_data_size"]; ok {
		return req, errorf(http.StatusBadRequest, "the binary tensor extension is not supported; send the texts in data")
	}
	if len(in.Shape) == 0 || len(in.Shape) > 2 || in.Shape[0] < 1 || (len(in.Shape) == 2 && in.Shape[1] != 1) {
		return req, errorf(http.StatusBadRequest, `input %q: shape %v must be [N] or [N,1] with N ≥ 1`, in.Name, in.Shape)
	}
	texts, err := flattenTexts(in.Data, in.Shape)
	if err != nil {
		return req, errorf(http.StatusBadRequest, "input %q: %s", in.Name, err.Error())
	}
	if int64(len(texts)) != in.Shape[0] {
		return req, errorf(http.StatusBadRequest, "input %q: shape %v needs %d elements, data has %d", in.Name, in.Shape, in.Shape[0], len(texts))
	}
	req.Texts = texts
	for _, o := range raw.Outputs {
		if b, ok := o.Parameters["binary_data"]; ok && !bytes.Equal(bytes.TrimSpace(b), []byte("false")) {
			return req, errorf(http.StatusBadRequest, "output %q: the binary tensor extension is not supported", o.Name)
		}
		req.Outputs = append(req.Outputs, o.Name)
	}
	return req, nil
}

// flattenTexts reads data as strings: flat (row-major), or nested one
// level as the [N,1] shape says.
func flattenTexts(data json.RawMessage, shape []int64) ([]string, error) {
	var elems []json.RawMessage
	if err := json.Unmarshal(data, &elems); err != nil || elems == nil {
		return nil, errorf(http.StatusBadRequest, `"data" must be an array of strings`)
	}
	var texts []string
	for _, e := range elems {
		e = bytes.TrimSpace(e)
		if len(e) > 0 && e[0] == '[' {
			var row []json.RawMessage
			if err := json.Unmarshal(e, &row); err != nil || len(shape) != 2 || int64(len(row)) != shape[1] {
				return nil, errorf(http.StatusBadRequest, `nested "data" needs shape [N,1] and rows of one string each (shape is %v)`, shape)
			}
			for _, c := range row {
				s, err := dataString(c)
				if err != nil {
					return nil, err
				}
				texts = append(texts, s)
			}
			continue
		}
		s, err := dataString(e)
		if err != nil {
			return nil, err
		}
		texts = append(texts, s)
	}
	return texts, nil
}

// dataString reads one BYTES element; JSON null is not a string.
func dataString(e json.RawMessage) (string, error) {
	var s string
	if e = bytes.TrimSpace(e); len(e) == 0 || e[0] != '"' || json.Unmarshal(e, &s) != nil {
		return "", errorf(http.StatusBadRequest, `"data" elements must be strings (BYTES as UTF-8 text)`)
	}
	return s, nil
}

type tensorMetadata struct {
	Name     string  `json:"name"`
	Datatype string  `json:"datatype"`
	Shape    []int64 `json:"shape"`
}

type tensorOutput struct {
	Name     string    `json:"name"`
	Datatype string    `json:"datatype"`
	Shape    []int64   `json:"shape"`
	Data     []float32 `json:"data"`
}

func (s *Server) handleServerMetadata(w http.ResponseWriter, _ *http.Request) {
	ops.WriteJSON(w, http.StatusOK, map[string]any{"name": "infergate", "version": Version, "extensions": []string{}})
}

// Version is reported by GET /v2; the CLI sets it from its build version.
var Version = "dev"

func (s *Server) handleLive(w http.ResponseWriter, _ *http.Request) {
	ops.WriteJSON(w, http.StatusOK, map[string]bool{"live": true})
}

func (s *Server) handleServerReady(w http.ResponseWriter, _ *http.Request) {
	if err := s.ready(); err != nil {
		ops.WriteJSON(w, http.StatusServiceUnavailable, map[string]any{"ready": false, "error": err.Error()})
		return
	}
	ops.WriteJSON(w, http.StatusOK, map[string]bool{"ready": true})
}

func (s *Server) handleModelReady(w http.ResponseWriter, r *http.Request) {
	sv, err := s.lookupPath(r)
	if err != nil {
		writeAPIError(w, r, err)
		return
	}
	if err := s.checkReady(sv); err != nil {
		ops.WriteJSON(w, http.StatusServiceUnavailable, map[string]any{"name": sv.cfg.Name, "ready": false, "error": err.Error()})
		return
	}
	ops.WriteJSON(w, http.StatusOK, map[string]any{"name": sv.cfg.Name, "ready": true})
}

// dim is the model's width, -1 (unknown) while it loads.
func (sv *served) dim() int64 {
	if !sv.ready.Load() {
		return -1
	}
	return int64(sv.enc.Dim())
}

func (s *Server) handleModelMetadata(w http.ResponseWriter, r *http.Request) {
	sv, err := s.lookupPath(r)
	if err != nil {
		writeAPIError(w, r, err)
		return
	}
	ops.WriteJSON(w, http.StatusOK, map[string]any{
		"name":     sv.cfg.Name,
		"versions": []string{modelVersion},
		"platform": "gomlx-" + sv.cfg.Kind,
		"inputs":   []tensorMetadata{{Name: inputName, Datatype: "BYTES", Shape: []int64{-1}}},
		"outputs":  []tensorMetadata{{Name: outputName, Datatype: "FP32", Shape: []int64{-1, sv.dim()}}},
	})
}

func (s *Server) handleInfer(w http.ResponseWriter, r *http.Request) {
	sv, err := s.lookupPath(r)
	if err != nil {
		writeAPIError(w, r, err)
		return
	}
	body, err := s.readBody(w, r)
	if err != nil {
		s.countInvalid(sv.cfg.Name, err)
		writeAPIError(w, r, err)
		return
	}
	req, err := parseInferRequest(body)
	if err == nil && req.InputName != inputName {
		err = errorf(http.StatusBadRequest, "model %s has one input, %q, not %q", sv.cfg.Name, inputName, req.InputName)
	}
	for _, o := range req.Outputs {
		if err == nil && o != outputName {
			err = errorf(http.StatusBadRequest, "model %s has one output, %q, not %q", sv.cfg.Name, outputName, o)
		}
	}
	if err != nil {
		s.countInvalid(sv.cfg.Name, err)
		writeAPIError(w, r, err)
		return
	}
	res, err := s.embed(r, sv, req.Texts, true)
	if err != nil {
		writeAPIError(w, r, err)
		return
	}
	dim := sv.enc.Dim()
	data := make([]float32, 0, len(res.vectors)*dim)
	for _, v := range res.vectors {
		data = append(data, v...)
	}
	ops.WriteJSON(w, http.StatusOK, map[string]any{
		"model_name":    sv.cfg.Name,
		"model_version": modelVersion,
		"id":            req.ID,
		"parameters":    map[string]int{"prompt_tokens": res.tokens},
		"outputs":       []tensorOutput{{Name: outputName, Datatype: "FP32", Shape: []int64{int64(len(res.vectors)), int64(dim)}, Data: data}},
	})
}
