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
// models/use-lite (make model puts it there).
func useLite(t testing.TB) EncoderEmbedder {
	t.Helper()
	useLiteOnce.Do(func() {
		backend, err := model.NewBackend("simplego")
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
