package engine

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/infergate/infergate/engine/loadgen"
)

// constEncoder costs next to nothing, so a benchmark through it measures
// the serving path alone: HTTP, JSON, tokenizing, queueing, batching.
type constEncoder struct{ wordEncoder }

func (e *constEncoder) Dim() int       { return 512 }
func (e *constEncoder) MaxTokens() int { return 128 }
func (e *constEncoder) Embed(_ context.Context, batch [][]int32) ([][]float32, error) {
	out := make([][]float32, len(batch))
	for i := range out {
		v := make([]float32, 512)
		for j := range v {
			v[j] = float32(j%7) * 0.0123
		}
		out[i] = v
	}
	return out, nil
}

// BenchmarkServeEmbeddings is the engine's overhead per request over
// loopback HTTP, one text per request from parallel clients, in float
// and base64 encodings.
func BenchmarkServeEmbeddings(b *testing.B) {
	for _, format := range []string{"float", "base64"} {
		b.Run(format, func(b *testing.B) {
			te := startReady(b, engineConfig(b, "max_batch_size: 64\nworkers: 2\n"), &constEncoder{})
			texts := loadgen.Corpus(4096)
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
			var next atomic.Int64
			b.SetParallelism(16)
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					n := int(next.Add(1))
					body := fmt.Sprintf(`{"model":"words","input":[%q],"encoding_format":%q}`,
						fmt.Sprintf("%s (%d)", texts[n%len(texts)], n), format)
					resp, err := client.Post(te.url+"/v1/embeddings", "application/json", bytes.NewBufferString(body))
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						b.Errorf("status %d", resp.StatusCode)
						return
					}
				}
			})
		})
	}
}
