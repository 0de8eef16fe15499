package semantic

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/infergate/infergate/policy"
)

// Pair is one labelled example of the evaluation set: would the answer
// to A also answer B?
type Pair struct {
	A    string `json:"a"`
	B    string `json:"b"`
	Same bool   `json:"same"`
}

// ReadPairs reads JSON lines of {"a":..., "b":..., "same":...}; blank
// lines are skipped, anything else that is not a pair is an error naming
// its line.
func ReadPairs(r io.Reader) ([]Pair, error) {
	var pairs []Pair
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for line := 1; sc.Scan(); line++ {
		raw := sc.Bytes()
		if len(raw) == 0 {
			continue
		}
		var p struct {
			A    *string `json:"a"`
			B    *string `json:"b"`
			Same *bool   `json:"same"`
		}
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&p); err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		if p.A == nil || p.B == nil || p.Same == nil || *p.A == "" || *p.B == "" {
			return nil, fmt.Errorf("line %d: want non-empty \"a\" and \"b\" and a boolean \"same\"", line)
		}
		pairs = append(pairs, Pair{A: *p.A, B: *p.B, Same: *p.Same})
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(pairs) == 0 {
		return nil, errors.New("no pairs")
	}
	return pairs, nil
}

// SweepRow is the outcome at one threshold, with or without the guard.
type SweepRow struct {
	Threshold float64
	Guard     bool
	// HitRate is the share of true pairs answered with a right answer.
	HitRate float64
	// FalseHitRate is the share of false pairs answered with a wrong one.
	FalseHitRate float64
	// WrongOnTrue is the share of true pairs answered with some other
	// pair's answer (a wrong one).
	WrongOnTrue float64
}

// Sweep is the evaluation of one pair set.
type Sweep struct {
	TruePairs, FalsePairs, Stored int
	Rows                          []SweepRow
	// EmbedPerText is the mean in-process embedding time per text.
	EmbedPerText time.Duration
}

// RunSweep stores every distinct A side in one scope of a fresh cache,
// queries with every B side, and reports for each threshold, with and
// without the guard (with synonyms added to its own), how many true pairs hit and how many false pairs got
// a wrong answer. All A sides share the scope, so a query can also be
// answered with another pair's A: that counts as wrong unless the set
// labels the two as the same.
func RunSweep(ctx context.Context, emb Embedder, pairs []Pair, thresholds []float64, synonyms [][]string) (Sweep, error) {
	c, err := New(Config{MemoryBytes: 1 << 40, Synonyms: synonyms}, emb, prometheus.NewRegistry(), nil)
	if err != nil {
		return Sweep{}, err
	}
	pol := policy.Policy{Route: "bench", Cache: policy.CacheSemantic, TTL: time.Hour}
	pol.Normalize()
	request := func(text string) Request {
		body, _ := json.Marshal(map[string]any{"model": "bench", "messages": []map[string]string{{"role": "user", "content": text}}})
		return Request{Policy: pol, Scope: "bench", Path: "/v1/chat/completions", Body: body}
	}
	// embed every text up front in batches, outside the lookup budget
	texts, seen := []string{}, map[string]bool{}
	for _, p := range pairs {
		for _, t := range []string{p.A, p.B} {
			if !seen[t] {
				seen[t] = true
				texts = append(texts, t)
			}
		}
	}
	c.recent = newVectorMemo(len(texts)+1, 24*time.Hour)
	start := time.Now()
	for i := 0; i < len(texts); i += 64 {
		batch := texts[i:min(i+64, len(texts))]
		vecs, err := emb.Embed(ctx, batch)
		if err != nil {
			return Sweep{}, fmt.Errorf("embedding: %w", err)
		}
		for j, v := range vecs {
			p, err := c.prepare(request(batch[j]))
			if err != nil {
				return Sweep{}, fmt.Errorf("%q: %w", batch[j], err)
			}
			u, ok := normalize(v)
			if !ok {
				return Sweep{}, fmt.Errorf("%q: zero embedding", batch[j])
			}
			c.recent.put(p.key, u)
		}
	}
	s := Sweep{EmbedPerText: time.Since(start) / time.Duration(len(texts))}

	same := map[[2]string]bool{}
	for _, p := range pairs {
		if p.Same {
			same[[2]string{p.A, p.B}], same[[2]string{p.B, p.A}] = true, true
		}
	}
	stored := map[string]bool{}
	for _, p := range pairs {
		if stored[p.A] {
			continue
		}
		stored[p.A] = true
		if err := c.Store(ctx, request(p.A), StoredResponse{Body: []byte(p.A)}); err != nil {
			return Sweep{}, fmt.Errorf("storing %q: %w", p.A, err)
		}
	}
	s.Stored = len(stored)

	type counts struct{ hit, falseHit, wrongOnTrue int }
	results := make([][2]counts, len(thresholds))
	for _, p := range pairs {
		if p.Same {
			s.TruePairs++
		} else {
			s.FalsePairs++
		}
		pr, err := c.prepare(request(p.B))
		if err != nil {
			return Sweep{}, err
		}
		cands := c.candidates(pr.scope, c.recent.get(pr.key))
		for ti, th := range thresholds {
			for gi, g := range []*guard{nil, c.guard} {
				best, _ := choose(cands, p.B, th, g)
				if best == nil {
					continue
				}
				served := string(best.resp.Body)
				right := served == p.B || same[[2]string{served, p.B}]
				r := &results[ti][gi]
				switch {
				case p.Same && right:
					r.hit++
				case p.Same:
					r.wrongOnTrue++
				case !right:
					r.falseHit++
				}
			}
		}
	}
	rate := func(n, of int) float64 {
		if of == 0 {
			return 0
		}
		return float64(n) / float64(of)
	}
	for ti, th := range thresholds {
		for gi, guard := range []bool{false, true} {
			r := results[ti][gi]
			s.Rows = append(s.Rows, SweepRow{
				Threshold: th, Guard: guard,
				HitRate:      rate(r.hit, s.TruePairs),
				FalseHitRate: rate(r.falseHit, s.FalsePairs),
				WrongOnTrue:  rate(r.wrongOnTrue, s.TruePairs),
			})
		}
	}
	return s, nil
}

// ParseThresholds reads a comma-separated list of similarities in (0, 1].
func ParseThresholds(list string) ([]float64, error) {
	var out []float64
	for _, f := range splitComma(list) {
		v, err := strconv.ParseFloat(f, 64)
		if err != nil || !(v > 0 && v <= 1) {
			return nil, fmt.Errorf("threshold %q is not a number in (0, 1]", f)
		}
		out = append(out, v)
	}
	if len(out) == 0 {
		return nil, errors.New("no thresholds")
	}
	return out, nil
}

func splitComma(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
