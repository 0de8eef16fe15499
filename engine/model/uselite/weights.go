package uselite

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/x448/float16"
)

// graphModel is the part of a TF.js graph-model model.json this runtime
// reads: the op graph (to find which constant feeds which op) and the
// weights, already decoded to float32 or int32.
type graphModel struct {
	nodes   map[string]graphNode
	floats  map[string]tensorData[float32]
	ints    map[string]tensorData[int32]
	opTypes map[string]int
}

type graphNode struct {
	Name  string   `json:"name"`
	Op    string   `json:"op"`
	Input []string `json:"input"`
}

type tensorData[T float32 | int32] struct {
	shape []int
	data  []T
}

type modelFile struct {
	ModelTopology struct {
		Node []graphNode `json:"node"`
	} `json:"modelTopology"`
	WeightsManifest []struct {
		Paths   []string     `json:"paths"`
		Weights []weightSpec `json:"weights"`
	} `json:"weightsManifest"`
}

type weightSpec struct {
	Name         string `json:"name"`
	Shape        []int  `json:"shape"`
	DType        string `json:"dtype"`
	Quantization *struct {
		DType string  `json:"dtype"`
		Scale float64 `json:"scale"`
		Min   float64 `json:"min"`
	} `json:"quantization"`
}

// errMissingFiles marks a model folder that is absent or incomplete.
var errMissingFiles = errors.New(`run "make deps" (or "make model") to download the USE-Lite model; delete an incomplete model folder first`)

// readModelFile reads one file of the model folder, turning "not there" into
// the error that says how to get it.
func readModelFile(dir, name string) ([]byte, error) {
	data, err := os.ReadFile(filepath.Join(dir, name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("model file %s is missing: %w", filepath.Join(dir, name), errMissingFiles)
	}
	return data, err
}

// checkFiles reports the first missing file of the folder, so that an
// incomplete download fails with one clear error before anything is parsed.
func checkFiles(dir string, names []string) error {
	for _, name := range names {
		if _, err := os.Stat(filepath.Join(dir, name)); errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("model file %s is missing: %w", filepath.Join(dir, name), errMissingFiles)
		} else if err != nil {
			return err
		}
	}
	return nil
}

func loadGraphModel(dir string) (*graphModel, error) {
	raw, err := readModelFile(dir, "model.json")
	if err != nil {
		return nil, err
	}
	var file modelFile
	if err := json.Unmarshal(raw, &file); err != nil {
		return nil, fmt.Errorf("model.json is not a TF.js graph model: %w", err)
	}
	if len(file.ModelTopology.Node) == 0 || len(file.WeightsManifest) == 0 {
		return nil, fmt.Errorf("model.json has no graph nodes or no weights manifest")
	}
	var shards []string
	for _, group := range file.WeightsManifest {
		shards = append(shards, group.Paths...)
	}
	if err := checkFiles(dir, append(shards, "vocab.json")); err != nil {
		return nil, err
	}

	m := &graphModel{
		nodes:   make(map[string]graphNode, len(file.ModelTopology.Node)),
		floats:  make(map[string]tensorData[float32]),
		ints:    make(map[string]tensorData[int32]),
		opTypes: make(map[string]int),
	}
	for _, n := range file.ModelTopology.Node {
		m.nodes[n.Name] = n
		m.opTypes[n.Op]++
	}
	for _, group := range file.WeightsManifest {
		var buf []byte
		for _, path := range group.Paths {
			if strings.Contains(path, "..") || filepath.IsAbs(path) {
				return nil, fmt.Errorf("model.json names weight shard %q outside the model folder", path)
			}
			data, err := readModelFile(dir, path)
			if err != nil {
				return nil, err
			}
			buf = append(buf, data...)
		}
		rest, err := m.decodeGroup(group.Weights, buf)
		if err != nil {
			return nil, fmt.Errorf("weight shards %s: %w", strings.Join(group.Paths, ", "), err)
		}
		if rest != 0 {
			return nil, fmt.Errorf("weight shards %s hold %d bytes more than model.json declares", strings.Join(group.Paths, ", "), rest)
		}
	}
	return m, nil
}

// decodeGroup decodes the weights of one manifest group from its
// concatenated shards, returning how many bytes were left over.
func (m *graphModel) decodeGroup(specs []weightSpec, buf []byte) (int, error) {
	for _, spec := range specs {
		count := 1
		for _, d := range spec.Shape {
			if d < 0 {
				return 0, fmt.Errorf("weight %s has a negative dimension", spec.Name)
			}
			count *= d
		}
		storedDType := spec.DType
		if spec.Quantization != nil {
			storedDType = spec.Quantization.DType
		}
		width, ok := map[string]int{"float32": 4, "int32": 4, "float16": 2, "uint16": 2, "uint8": 1}[storedDType]
		if !ok {
			return 0, fmt.Errorf("weight %s has unsupported stored dtype %q", spec.Name, storedDType)
		}
		size := count * width
		if len(buf) < size {
			return 0, fmt.Errorf("weight %s needs %d bytes but only %d are left, the download looks truncated: %w",
				spec.Name, size, len(buf), errMissingFiles)
		}
		data := buf[:size]
		buf = buf[size:]

		switch spec.DType {
		case "float32":
			values, err := decodeFloats(spec, data, count)
			if err != nil {
				return 0, err
			}
			m.floats[spec.Name] = tensorData[float32]{shape: spec.Shape, data: values}
		case "int32":
			if storedDType != "int32" {
				return 0, fmt.Errorf("weight %s: quantized int32 weights are not supported", spec.Name)
			}
			values := make([]int32, count)
			for i := range values {
				values[i] = int32(binary.LittleEndian.Uint32(data[4*i:]))
			}
			m.ints[spec.Name] = tensorData[int32]{shape: spec.Shape, data: values}
		default:
			return 0, fmt.Errorf("weight %s has unsupported dtype %q", spec.Name, spec.DType)
		}
	}
	return len(buf), nil
}

// decodeFloats decodes a float32 weight as stored: plain, float16, or
// affine-quantized uint8/uint16 (value = q*scale + min, as TF.js does).
func decodeFloats(spec weightSpec, data []byte, count int) ([]float32, error) {
	values := make([]float32, count)
	q := spec.Quantization
	switch {
	case q == nil || q.DType == "float32":
		for i := range values {
			values[i] = math.Float32frombits(binary.LittleEndian.Uint32(data[4*i:]))
		}
	case q.DType == "float16":
		for i := range values {
			values[i] = float16.Frombits(binary.LittleEndian.Uint16(data[2*i:])).Float32()
		}
	case q.DType == "uint8":
		for i := range values {
			values[i] = float32(float64(data[i])*q.Scale + q.Min)
		}
	case q.DType == "uint16":
		for i := range values {
			values[i] = float32(float64(binary.LittleEndian.Uint16(data[2*i:]))*q.Scale + q.Min)
		}
	default:
		return nil, fmt.Errorf("weight %s has unsupported quantization %q", spec.Name, q.DType)
	}
	return values, nil
}

// input returns the name of the node feeding input i of node name.
func (m *graphModel) input(name string, i int) (string, error) {
	n, ok := m.nodes[name]
	if !ok {
		return "", fmt.Errorf("graph has no node %s", name)
	}
	if i >= len(n.Input) {
		return "", fmt.Errorf("graph node %s has %d inputs, want at least %d", name, len(n.Input), i+1)
	}
	in := n.Input[i]
	if colon := strings.LastIndexByte(in, ':'); colon > 0 {
		in = in[:colon]
	}
	return in, nil
}

// floatInput returns the float32 constant feeding input i of node name.
func (m *graphModel) floatInput(name string, i int, wantShape ...int) ([]float32, error) {
	in, err := m.input(name, i)
	if err != nil {
		return nil, err
	}
	t, ok := m.floats[in]
	if !ok {
		return nil, fmt.Errorf("input %d of graph node %s is not a float32 constant", i, name)
	}
	if wantShape != nil && !slices.Equal(t.shape, wantShape) {
		return nil, fmt.Errorf("constant %s has shape %v, want %v", in, t.shape, wantShape)
	}
	return t.data, nil
}

// floatScalar returns the scalar float32 constant feeding input i of node name.
func (m *graphModel) floatScalar(name string, i int) (float32, error) {
	v, err := m.floatInput(name, i)
	if err != nil {
		return 0, err
	}
	if len(v) != 1 {
		return 0, fmt.Errorf("input %d of graph node %s has %d values, want a scalar", i, name, len(v))
	}
	return v[0], nil
}

// intInput returns the int32 constant feeding input i of node name.
func (m *graphModel) intInput(name string, i int) ([]int32, error) {
	in, err := m.input(name, i)
	if err != nil {
		return nil, err
	}
	t, ok := m.ints[in]
	if !ok {
		return nil, fmt.Errorf("input %d of graph node %s is not an int32 constant", i, name)
	}
	return t.data, nil
}

// intScalar returns the scalar int32 constant feeding input i of node name.
func (m *graphModel) intScalar(name string, i int) (int, error) {
	v, err := m.intInput(name, i)
	if err != nil {
		return 0, err
	}
	if len(v) != 1 {
		return 0, fmt.Errorf("input %d of graph node %s has %d values, want a scalar", i, name, len(v))
	}
	return int(v[0]), nil
}

// floatShape returns the shape of the float32 constant feeding input i of node name.
func (m *graphModel) floatShape(name string, i int) ([]int, error) {
	in, err := m.input(name, i)
	if err != nil {
		return nil, err
	}
	t, ok := m.floats[in]
	if !ok {
		return nil, fmt.Errorf("input %d of graph node %s is not a float32 constant", i, name)
	}
	return t.shape, nil
}
