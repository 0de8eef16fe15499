package engine

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"math"
	"math/rand/v2"
	"testing"
)

// The response as encoding/json writes it: the reference that
// appendEmbeddingsResponse must equal byte for byte.
type embeddingData struct {
	Object    string `json:"object"`
	Index     int    `json:"index"`
	Embedding any    `json:"embedding"` // []float32, or a base64 string
}

type embeddingsResponse struct {
	Object string          `json:"object"`
	Data   []embeddingData `json:"data"`
	Model  string          `json:"model"`
	Usage  usage           `json:"usage"`
}

type usage struct {
	PromptTokens int `json:"prompt_tokens"`
	TotalTokens  int `json:"total_tokens"`
}

func marshalEmbeddingsResponse(t *testing.T, model string, vectors [][]float32, b64 bool, tokens int) []byte {
	t.Helper()
	resp := embeddingsResponse{Object: "list", Data: make([]embeddingData, len(vectors)), Model: model,
		Usage: usage{PromptTokens: tokens, TotalTokens: tokens}}
	for i, v := range vectors {
		resp.Data[i] = embeddingData{Object: "embedding", Index: i, Embedding: v}
		if b64 {
			buf := make([]byte, 4*len(v))
			for j, f := range v {
				binary.LittleEndian.PutUint32(buf[4*j:], math.Float32bits(f))
			}
			resp.Data[i].Embedding = base64.StdEncoding.EncodeToString(buf)
		}
	}
	b, err := json.Marshal(resp)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestEmbeddingsResponseIsEncodingJSONs(t *testing.T) {
	edges := []float32{0, float32(math.Copysign(0, -1)), 1, -1, 0.1, 1e-6, 9.999999e-7, -1e-7, 1.5e-7, 1e-45,
		math.SmallestNonzeroFloat32, 1e20, 1e21, -1e21, math.MaxFloat32, 123456789, 0.33333334, 5e-324 * 0}
	rng := rand.New(rand.NewPCG(3, 3))
	var vectors [][]float32
	vectors = append(vectors, edges)
	for range 200 {
		v := make([]float32, 512)
		for i := range v {
			switch rng.IntN(3) {
			case 0: // a normalized embedding's components
				v[i] = float32(rng.NormFloat64() / math.Sqrt(512))
			case 1: // any finite float32
				for {
					v[i] = math.Float32frombits(rng.Uint32())
					if !math.IsNaN(float64(v[i])) && !math.IsInf(float64(v[i]), 0) {
						break
					}
				}
			default:
				v[i] = float32(rng.Float64() * math.Pow(10, float64(rng.IntN(60)-30)))
			}
		}
		vectors = append(vectors, v)
	}
	for _, model := range []string{"use-lite", `odd "name" <&> é`} {
		for _, b64 := range []bool{false, true} {
			for _, vs := range [][][]float32{vectors, vectors[:1], nil} {
				want := marshalEmbeddingsResponse(t, model, vs, b64, 4321)
				got := appendEmbeddingsResponse(nil, model, vs, b64, 4321)
				if !bytes.Equal(got, want) {
					i := 0
					for i < len(got) && i < len(want) && got[i] == want[i] {
						i++
					}
					t.Fatalf("model %q base64 %v: differs from encoding/json at byte %d:\n got …%.80s\nwant …%.80s",
						model, b64, i, got[max(0, i-20):], want[max(0, i-20):])
				}
				if size := embeddingsResponseSize(vs, b64) + len(model) + 16; len(got) > size && len(vs) > 1 {
					t.Errorf("model %q base64 %v: %d bytes, sized for %d", model, b64, len(got), size)
				}
			}
		}
	}
}

// BenchmarkEmbeddingsResponse writes the response for one 512-wide
// embedding, by hand and through encoding/json.
func BenchmarkEmbeddingsResponse(b *testing.B) {
	rng := rand.New(rand.NewPCG(5, 5))
	v := make([]float32, 512)
	for i := range v {
		v[i] = float32(rng.NormFloat64() / math.Sqrt(512))
	}
	vectors := [][]float32{v}
	b.Run("append", func(b *testing.B) {
		for b.Loop() {
			_ = appendEmbeddingsResponse(make([]byte, 0, embeddingsResponseSize(vectors, false)), "use-lite", vectors, false, 12)
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		resp := embeddingsResponse{Object: "list", Data: []embeddingData{{Object: "embedding", Embedding: v}}, Model: "use-lite"}
		for b.Loop() {
			_, _ = json.Marshal(resp)
		}
	})
}
