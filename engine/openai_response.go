package engine

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"math"
	"strconv"
)

// appendEmbeddingsResponse appends the OpenAI embeddings response, as
// json.Marshal(embeddingsResponse{…}) would write it, to b. It is written
// by hand because encoding/json's reflection and buffer growth over 512
// floats per text cost the engine about a tenth of its CPU under load
// (BENCHMARKS.md § GPU); TestEmbeddingsResponseIsEncodingJSONs holds the
// two byte for byte.
func appendEmbeddingsResponse(b []byte, model string, vectors [][]float32, b64 bool, tokens int) []byte {
	b = append(b, `{"object":"list","data":[`...)
	for i, v := range vectors {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"object":"embedding","index":`...)
		b = strconv.AppendInt(b, int64(i), 10)
		b = append(b, `,"embedding":`...)
		if b64 {
			b = append(b, '"')
			b = base64.StdEncoding.AppendEncode(b, float32Bytes(v))
			b = append(b, '"')
		} else {
			b = appendFloats(b, v)
		}
		b = append(b, '}')
	}
	b = append(b, `],"model":`...)
	name, _ := json.Marshal(model) // a string always marshals
	b = append(b, name...)
	b = append(b, `,"usage":{"prompt_tokens":`...)
	b = strconv.AppendInt(b, int64(tokens), 10)
	b = append(b, `,"total_tokens":`...)
	b = strconv.AppendInt(b, int64(tokens), 10)
	return append(b, "}}"...)
}

// embeddingsResponseSize estimates the response's length from above for
// an embedding's usual floats, so that it is built in one allocation.
func embeddingsResponseSize(vectors [][]float32, b64 bool) int {
	n := 160
	for _, v := range vectors {
		if b64 {
			n += 64 + base64.StdEncoding.EncodedLen(4*len(v))
		} else {
			n += 64 + 14*len(v) // "-0.123456789," is the longest usual float
		}
	}
	return n
}

// appendFloats writes v as a JSON array of float32s, formatted exactly as
// encoding/json formats them. v holds no NaN or Inf (checkFinite).
func appendFloats(b []byte, v []float32) []byte {
	b = append(b, '[')
	for i, f := range v {
		if i > 0 {
			b = append(b, ',')
		}
		abs := math.Abs(float64(f))
		format := byte('f')
		if abs != 0 && (float32(abs) < 1e-6 || float32(abs) >= 1e21) {
			format = 'e'
		}
		b = strconv.AppendFloat(b, float64(f), format, -1, 32)
		if format == 'e' {
			// encoding/json writes e-7, not e-07.
			if n := len(b); n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
				b[n-2] = b[n-1]
				b = b[:n-1]
			}
		}
	}
	return append(b, ']')
}

// float32Bytes is OpenAI's base64 encoding_format before the base64: the
// little-endian float32 bytes of the vector.
func float32Bytes(v []float32) []byte {
	buf := make([]byte, 4*len(v))
	for i, f := range v {
		binary.LittleEndian.PutUint32(buf[4*i:], math.Float32bits(f))
	}
	return buf
}
