package extproc

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"

	"github.com/infergate/infergate/extproc/cache"
	"github.com/infergate/infergate/extproc/semantic"
	"github.com/infergate/infergate/internal/ops"
)

// adminHandler serves the probes and the purge API:
//
//	POST /v1/cache/purge {"key": "..."} | {"tenant": "...", "route": "...", "model": "..."} | {"all": true}
//
// Tenant, route and model may be combined (all must match). The answer is
// {"purged": n}, the entries deleted in this replica and in Redis; other
// replicas drop their in-process copies when Redis relays the purge.
func (s *Server) adminHandler() http.Handler {
	mux := http.NewServeMux()
	ops.HandleProbes(mux, s.reg, func() error { return nil })
	mux.HandleFunc("POST /v1/cache/purge", s.handlePurge)
	return ops.RequireToken(s.adminToken, mux)
}

func (s *Server) handlePurge(w http.ResponseWriter, r *http.Request) {
	dec := json.NewDecoder(io.LimitReader(r.Body, 64<<10))
	dec.DisallowUnknownFields()
	var sel cache.Selector
	if err := dec.Decode(&sel); err != nil {
		ops.WriteError(w, http.StatusBadRequest, "purge: body is not a selector: "+err.Error())
		return
	}
	if err := sel.Validate(); err != nil {
		ops.WriteError(w, http.StatusBadRequest, "purge: "+err.Error())
		return
	}
	kind := selectorKind(sel)
	if sel.Tenant != "" {
		sel.Tenant = tenantScope(sel.Tenant)
	}
	n, err := s.store.Purge(r.Context(), sel)
	// The semantic cache purges too, or a purged answer would still be
	// served to the same question.
	m, semErr := s.sem.Purge(r.Context(), semanticSelector(sel))
	n += m
	err = errors.Join(err, semErr)
	s.metrics.purges.WithLabelValues(kind).Inc()
	s.metrics.purgedEntries.Add(float64(n))
	if err != nil {
		s.log.Warn("purge did not reach redis", "error", err)
		ops.WriteError(w, http.StatusBadGateway, "purge: in-process entries purged, redis failed: "+err.Error())
		return
	}
	s.log.Info("cache purged", "selector", sel, "purged", n)
	ops.WriteJSON(w, http.StatusOK, map[string]int{"purged": n})
}

// selectorKind labels a purge by its narrowest selector.
// semanticSelector is sel (its tenant already a cache scope) for the
// semantic cache.
func semanticSelector(sel cache.Selector) semantic.Selector {
	return semantic.Selector{All: sel.All, Key: string(sel.Key), Route: sel.Route, Scope: sel.Tenant, Model: sel.Model}
}

func selectorKind(sel cache.Selector) string {
	switch {
	case sel.All:
		return "all"
	case sel.Key != "":
		return "key"
	case sel.Tenant != "":
		return "tenant"
	case sel.Route != "":
		return "route"
	}
	return "model"
}
