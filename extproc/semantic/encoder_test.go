package semantic

import (
	"testing"

	"github.com/infergate/infergate/engine/model/uselite/uselitetest"
)

// useLite is the real USE-Lite encoder, loaded once per test binary.
func useLite(t testing.TB) EncoderEmbedder {
	return EncoderEmbedder{Encoder: uselitetest.Encoder(t)}
}
