// Package uselitetest gives tests of other packages the real USE-Lite
// encoder, loaded once per test binary.
package uselitetest

import (
	"sync"
	"testing"

	"github.com/infergate/infergate/engine/model"
	"github.com/infergate/infergate/engine/model/uselite"
	"github.com/infergate/infergate/internal/testmodel"
)

var (
	encoderOnce sync.Once
	encoder     *uselite.Encoder
	encoderErr  error
)

// Encoder is the real USE-Lite encoder on the default backend, loaded once
// per test binary (loading and compiling shape buckets is the slow part).
func Encoder(t testing.TB) *uselite.Encoder {
	t.Helper()
	dir := testmodel.USELiteDir(t)
	encoderOnce.Do(func() {
		backend, err := model.NewBackend(model.BackendSimpleGo)
		if err != nil {
			encoderErr = err
			return
		}
		encoder, encoderErr = uselite.Load(dir, backend)
	})
	if encoderErr != nil {
		t.Fatalf("loading USE-Lite: %v", encoderErr)
	}
	return encoder
}
