package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/infergate/infergate/engine/batcher"
	"github.com/infergate/infergate/engine/embedcache"
	"github.com/infergate/infergate/engine/model"
	"github.com/infergate/infergate/internal/apierror"
	"github.com/infergate/infergate/internal/ops"
)

// apiError is an error a client caused or must wait out, with its status.
type apiError struct {
	status     int
	msg        string
	code       string        // OpenAI's error code, e.g. model_not_found
	retryAfter time.Duration // sets Retry-After when positive
}

func (e *apiError) Error() string { return e.msg }

func errorf(status int, format string, args ...any) *apiError {
	return &apiError{status: status, msg: fmt.Sprintf(format, args...)}
}

// modelNotFound is the 404 for a model this engine does not serve.
func modelNotFound(name string) *apiError {
	e := errorf(http.StatusNotFound, "model %q is not served here (GET /v1/models lists the models)", name)
	e.code = apierror.CodeModelNotFound
	return e
}

// writeAPIError answers r with err in the error shape of r's API.
func writeAPIError(w http.ResponseWriter, r *http.Request, err error) {
	var ae *apiError
	if !errors.As(err, &ae) {
		ae = &apiError{status: http.StatusInternalServerError, msg: err.Error()}
	}
	if ae.retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(ae.retryAfter.Seconds()))))
	}
	apierror.Write(w, r.URL.Path, ae.status, ae.msg, ae.code)
}

func (s *Server) routes() {
	m := s.mux
	m.HandleFunc("POST /v1/embeddings", s.handleEmbeddings)
	m.HandleFunc("GET /v1/models", s.handleListModels)
	m.HandleFunc("GET /v1/models/{model}", s.handleGetModel)
	m.HandleFunc("GET /v2", s.handleServerMetadata)
	m.HandleFunc("GET /v2/health/live", s.handleLive)
	m.HandleFunc("GET /v2/health/ready", s.handleServerReady)
	m.HandleFunc("GET /v2/models/{model}", s.handleModelMetadata)
	m.HandleFunc("GET /v2/models/{model}/versions/{version}", s.handleModelMetadata)
	m.HandleFunc("GET /v2/models/{model}/ready", s.handleModelReady)
	m.HandleFunc("GET /v2/models/{model}/versions/{version}/ready", s.handleModelReady)
	m.HandleFunc("POST /v2/models/{model}/infer", s.handleInfer)
	m.HandleFunc("POST /v2/models/{model}/versions/{version}/infer", s.handleInfer)
	ops.HandleProbes(m, s.reg, s.ready)
	m.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if allow := s.allowedMethods(r); len(allow) > 0 {
			w.Header().Set("Allow", strings.Join(allow, ", "))
			apierror.Write(w, r.URL.Path, http.StatusMethodNotAllowed, fmt.Sprintf("%s %s: method not allowed (use %s)", r.Method, r.URL.Path, strings.Join(allow, " or ")), "")
			return
		}
		apierror.Write(w, r.URL.Path, http.StatusNotFound, fmt.Sprintf("no such endpoint: %s %s", r.Method, r.URL.Path), "")
	})
}

// allowedMethods lists the methods that have a route for r's path. The
// catch-all above matches every method, so the mux never answers 405
// itself.
func (s *Server) allowedMethods(r *http.Request) []string {
	var allow []string
	for _, method := range []string{http.MethodGet, http.MethodPost} {
		other := *r
		other.Method = method
		if _, pattern := s.mux.Handler(&other); pattern != "/" {
			allow = append(allow, method)
		}
	}
	return allow
}

// modelVersion is the only version each model has.
const modelVersion = "1"

// lookup finds a model by name; an empty name means the first configured.
func (s *Server) lookup(name string) (*served, error) {
	if name == "" {
		return s.order[0], nil
	}
	sv, ok := s.models[name]
	if !ok {
		return nil, modelNotFound(name)
	}
	return sv, nil
}

// lookupPath is lookup for the v2 routes, which may name a version.
func (s *Server) lookupPath(r *http.Request) (*served, error) {
	sv, err := s.lookup(r.PathValue("model"))
	if err != nil {
		return nil, err
	}
	if v := r.PathValue("version"); v != "" && v != modelVersion {
		return nil, errorf(http.StatusNotFound, "model %q has no version %q (only %q)", sv.cfg.Name, v, modelVersion)
	}
	return sv, nil
}

// readBody reads at most max_body_bytes.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, errorf(http.StatusRequestEntityTooLarge, "request body exceeds %d bytes (engine.max_body_bytes)", mbe.Limit)
		}
		return nil, errorf(http.StatusBadRequest, "reading request body: %v", err)
	}
	return body, nil
}

// embedResult is what every API needs back from the model.
type embedResult struct {
	vectors [][]float32
	tokens  int
}

// embed checks texts against the model's limits, tokenizes them on the
// request goroutine, and runs them through the model's batcher under the
// request's priority and deadline.
// embed embeds texts with sv's model; truncate cuts each to the model's
// token limit, else a longer one is refused (413).
func (s *Server) embed(r *http.Request, sv *served, texts []string, truncate bool) (embedResult, error) {
	res, err := s.embedChecked(r, sv, texts, truncate)
	s.countInvalid(sv.cfg.Name, err)
	return res, err
}

// countInvalid counts a request refused for what it contains; the
// batcher counts the other outcomes. model is "" when the request was
// refused before its model was known (a name it made up is no label).
func (s *Server) countInvalid(model string, err error) {
	var ae *apiError
	if errors.As(err, &ae) {
		switch ae.status {
		case http.StatusBadRequest, http.StatusRequestEntityTooLarge, http.StatusUnprocessableEntity:
			s.metrics.Count(model, batcher.OutcomeInvalid)
		}
	}
}

func (s *Server) embedChecked(r *http.Request, sv *served, texts []string, truncate bool) (embedResult, error) {
	m := sv.cfg
	if err := s.checkReady(sv); err != nil {
		s.metrics.Count(m.Name, batcher.OutcomeRejected)
		return embedResult{}, err
	}
	if len(texts) > m.MaxInputs {
		return embedResult{}, errorf(http.StatusRequestEntityTooLarge, "%d inputs exceed the model's limit of %d per request (max_inputs)", len(texts), m.MaxInputs)
	}
	for i, t := range texts {
		if n := utf8.RuneCountInString(t); n > m.MaxInputChars {
			return embedResult{}, errorf(http.StatusRequestEntityTooLarge, "input %d has %d characters, over the limit of %d (max_input_chars)", i, n, m.MaxInputChars)
		}
	}
	priority := *m.DefaultPriority
	if h := r.Header.Get(PriorityHeader); h != "" {
		p, err := strconv.Atoi(h)
		if err != nil || p < 0 {
			return embedResult{}, errorf(http.StatusBadRequest, "header %s: %q is not a priority (an integer from 0 to %d)", PriorityHeader, h, m.PriorityLevels-1)
		}
		// Route policies set priorities up to 9 whatever a model's
		// priority_levels; above its levels is its highest.
		priority = min(p, m.PriorityLevels-1)
	}
	if sv.batch.Full() && (s.reuse == nil || !s.reuse.Covers(m.Name, texts)) {
		// Refused before tokenizing: under overload, rejected requests
		// must not take the CPU the queued ones need. A request served
		// wholly from the reuse cache needs no queue.
		s.metrics.Count(m.Name, batcher.OutcomeRejected)
		return embedResult{}, queueFull(sv)
	}
	enc := sv.enc
	maxTokens := enc.MaxTokens()
	ids := make([][]int32, len(texts))
	tokens := 0
	for i, t := range texts {
		seq, err := enc.Tokenize(t)
		if err != nil {
			if errors.Is(err, model.ErrUntokenizable) {
				return embedResult{}, errorf(http.StatusUnprocessableEntity, "input %d: %v", i, err)
			}
			return embedResult{}, fmt.Errorf("model %s: tokenizing input %d: %w", m.Name, i, err)
		}
		if len(seq) == 0 {
			return embedResult{}, errorf(http.StatusUnprocessableEntity, "input %d has no tokens", i)
		}
		if !truncate && len(seq) > maxTokens {
			return embedResult{}, errorf(http.StatusRequestEntityTooLarge, `input %d has %d tokens, over the model's limit of %d ("truncate": false)`, i, len(seq), maxTokens)
		}
		ids[i] = seq[:min(len(seq), maxTokens)]
		tokens += len(ids[i])
	}

	// Inputs embedded before come from the reuse cache; usage still
	// counts every input's tokens, so a response does not depend on what
	// others asked earlier.
	items, plan := ids, (*embedcache.Plan)(nil)
	if s.reuse != nil {
		plan = s.reuse.Split(m.Name, texts)
		byText := make(map[string][]int32, len(texts))
		for i, t := range texts {
			byText[t] = ids[i]
		}
		items = make([][]int32, len(plan.Compute))
		for j, t := range plan.Compute {
			items[j] = byText[t]
		}
	}
	var vecs [][]float32
	var err error
	if len(items) > 0 {
		ctx, cancel := context.WithTimeout(r.Context(), m.Timeout)
		defer cancel()
		vecs, err = sv.batch.Do(ctx, items, priority)
	} else {
		s.metrics.Count(m.Name, batcher.OutcomeSuccess) // every input reused
	}
	if err == nil {
		err = checkFinite(vecs)
	}
	if err == nil && plan != nil {
		counts := make([]int, len(items))
		for j, it := range items {
			counts[j] = len(it)
		}
		vecs, err = s.reuse.Merge(plan, vecs, counts)
	}
	switch {
	case err == nil:
		return embedResult{vectors: vecs, tokens: tokens}, nil
	case errors.Is(err, batcher.ErrQueueFull):
		return embedResult{}, queueFull(sv)
	case errors.Is(err, batcher.ErrClosed):
		return embedResult{}, &apiError{status: http.StatusServiceUnavailable, retryAfter: time.Second, msg: "engine is shutting down"}
	case errors.Is(err, context.DeadlineExceeded):
		return embedResult{}, errorf(http.StatusGatewayTimeout, "model %s: request not computed within its %s deadline (timeout)", m.Name, m.Timeout)
	case errors.Is(err, context.Canceled):
		// The client is gone; 499 is nginx's "client closed request".
		return embedResult{}, errorf(499, "client closed the request")
	}
	s.log.Error("model failed", "model", m.Name, "error", err)
	return embedResult{}, fmt.Errorf("model %s failed: %w", m.Name, err)
}

func queueFull(sv *served) error {
	return &apiError{status: http.StatusTooManyRequests, retryAfter: sv.batch.RetryAfter(),
		msg: fmt.Sprintf("model %s: queue is full (%d requests, queue_size); retry later", sv.cfg.Name, sv.cfg.QueueSize)}
}

// checkFinite refuses vectors holding NaN or an infinity (an fp16 ONNX
// model overflowing, say): JSON cannot carry them, and they must not enter
// the reuse cache.
func checkFinite(vecs [][]float32) error {
	for i, v := range vecs {
		for _, x := range v {
			if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
				return fmt.Errorf("the model produced %v in vector %d", x, i)
			}
		}
	}
	return nil
}

func (s *Server) checkReady(sv *served) error {
	if s.stopping.Load() {
		return &apiError{status: http.StatusServiceUnavailable, retryAfter: time.Second, msg: "engine is shutting down"}
	}
	if err := sv.notReady(); err != nil {
		return &apiError{status: http.StatusServiceUnavailable, retryAfter: 5 * time.Second, msg: err.Error()}
	}
	return nil
}
