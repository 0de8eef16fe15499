package semantic

import (
	"sync"
	"testing"

	"github.com/infergate/infergate/engine/model"
	"github.com/infergate/infergate/engine/model/uselite"
)

var (
	useLiteOnce sync.Once
	useLiteEnc  *uselite.Encoder
	useLiteErr  error
)

// useLite is the real USE-Lite encoder, loaded once per test binary from
// models/use-lite (make model puts it there). Ops run sequentially:
// SimpleGo's parallel op executor has data races the race detector reports
// (gomlx v0.26.0, backends/simplego/exec.go).
func useLite(t testing.TB) EncoderEmbedder {
	t.Helper()
	useLiteOnce.Do(func() {
		backend, err := model.NewBackend("simplego:ops_sequential")
		if err != nil {
			useLiteErr = err
			return
		}
		useLiteEnc, useLiteErr = uselite.Load("../../models/use-lite", backend)
	})
	if useLiteErr != nil {
		t.Fatalf("loading USE-Lite (run `make model`): %v", useLiteErr)
	}
	return EncoderEmbedder{Encoder: useLiteEnc}
}
