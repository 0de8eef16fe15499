package tinybert

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"

	"github.com/gomlx/onnx-gomlx/onnx"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// ONNX data types (TensorProto.DataType).
const (
	onnxFloat = 1
	onnxInt64 = 7
)

// opsetVersion is the default of torch.onnx.export in recent PyTorch.
const opsetVersion = 17

// ONNX serializes the model as an ONNX ModelProto with inputs input_ids,
// attention_mask and (unless NoTokenTypeInput) token_type_ids, all int64
// [batch, sequence], and outputs last_hidden_state [batch, sequence,
// Hidden] and pooler_output [batch, Hidden].
//
// The graph uses the ops torch.onnx.export emits for BertModel: Gather
// embeddings, positions sliced by Shape, the attention mask turned into an
// additive bias with Equal/Where, heads split with Reshape/Transpose, exact
// GELU through Erf, LayerNormalization both as the opset-17 op and
// decomposed into ReduceMean/Sub/Pow/Sqrt/Div.
func (m *Model) ONNX() ([]byte, error) {
	model, _, err := m.build("")
	return model, err
}

// WriteONNX writes the ONNX serialization to path.
func (m *Model) WriteONNX(path string) error {
	data, err := m.ONNX()
	if err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o644)
}

// WriteONNXExternal writes the model to path with its weights in the file
// dataName beside it, as ONNX external data (what torch.onnx.export does
// in recent PyTorch).
func (m *Model) WriteONNXExternal(path, dataName string) error {
	model, weights, err := m.build(dataName)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(filepath.Dir(path), dataName), weights, 0o644); err != nil {
		return err
	}
	return os.WriteFile(path, model, 0o644)
}

// build returns the serialized model and, when externalName is set, the
// contents of the external data file its initializers point into.
func (m *Model) build(externalName string) (model, external []byte, err error) {
	b := &graphBuilder{externalName: externalName}
	h := m.Hidden
	dh := h / m.Heads

	ids := "input_ids"
	shape := b.op("Shape", ids)
	batchDim := b.op("Unsqueeze", b.op("Gather", shape, b.constInts(nil, 0)), b.constInts([]int64{1}, 0))
	seqDim := b.op("Unsqueeze", b.op("Gather", shape, b.constInts(nil, 1)), b.constInts([]int64{1}, 0))

	// Embeddings.
	word := b.op("Gather", b.weight("embeddings.word_embeddings.weight", m.Word), ids)
	posIDs := b.op("Slice", b.constIntsRange("embeddings.position_ids", m.MaxPositions),
		b.constInts([]int64{1}, 0), seqDim, b.constInts([]int64{1}, 1))
	posIDs = b.op("Expand", posIDs, shape)
	pos := b.op("Gather", b.weight("embeddings.position_embeddings.weight", m.Position), posIDs)
	typeIDs := "token_type_ids"
	if m.NoTokenTypeInput {
		typeIDs = b.opAttrs("ConstantOfShape", []string{shape}, attr("value", tensorAttr(onnxInt64, []int64{1}, int64Bytes([]int64{0}))))
	}
	types := b.op("Gather", b.weight("embeddings.token_type_embeddings.weight", m.TokenType), typeIDs)
	x := b.op("Add", b.op("Add", word, types), pos)
	x = b.decomposedLayerNorm(x, b.vector("embeddings.LayerNorm.weight", m.EmbNormGamma),
		b.vector("embeddings.LayerNorm.bias", m.EmbNormBeta), m.LayerNormEps)

	// Additive attention bias [batch, 1, 1, sequence]: 0 where attended,
	// the lowest float32 where masked.
	mask := "attention_mask"
	if m.NoAttentionMaskInput {
		mask = b.opAttrs("ConstantOfShape", []string{shape}, attr("value", tensorAttr(onnxInt64, []int64{1}, int64Bytes([]int64{1}))))
	}
	masked := b.op("Equal", b.op("Unsqueeze", mask, b.constInts([]int64{2}, 1, 2)), b.constInts(nil, 0))
	bias := b.op("Where", masked, b.constFloat(-math.MaxFloat32), b.constFloat(0))

	headsShape := b.opAttrs("Concat", []string{batchDim, seqDim, b.constInts([]int64{2}, int64(m.Heads), int64(dh))},
		attr("axis", intAttr(0)))
	for i, l := range m.Layer {
		p := fmt.Sprintf("encoder.layer.%d.", i)
		proj := func(name string, w *Matrix, bias []float64) string {
			return b.op("Add", b.op("MatMul", x, b.weight(p+name+".weight", w)), b.vector(p+name+".bias", bias))
		}
		split := func(t string, perm ...int64) string {
			return b.opAttrs("Transpose", []string{b.op("Reshape", t, headsShape)}, attr("perm", intsAttr(perm...)))
		}
		q := split(proj("attention.self.query", l.Q, l.QB), 0, 2, 1, 3)
		k := split(proj("attention.self.key", l.K, l.KB), 0, 2, 3, 1)
		v := split(proj("attention.self.value", l.V, l.VB), 0, 2, 1, 3)
		scores := b.op("Div", b.op("MatMul", q, k), b.constFloat(math.Sqrt(float64(dh))))
		probs := b.opAttrs("Softmax", []string{b.op("Add", scores, bias)}, attr("axis", intAttr(-1)))
		ctx := b.opAttrs("Transpose", []string{b.op("MatMul", probs, v)}, attr("perm", intsAttr(0, 2, 1, 3)))
		ctxShape := b.constInts([]int64{3}, 0, 0, int64(h))
		if m.TorchScriptQuirks {
			// The TorchScript exporter builds shapes with Concat, at
			// times of an empty Constant that holds no data field at all.
			empty := b.opAttrs("Constant", nil, attr("value", tensorAttr(onnxInt64, []int64{0}, nil)))
			ctxShape = b.opAttrs("Concat", []string{ctxShape, empty}, attr("axis", intAttr(0)))
		}
		ctx = b.op("Reshape", ctx, ctxShape)

		attnOut := b.op("Add", b.op("MatMul", ctx, b.weight(p+"attention.output.dense.weight", l.AttnOut)),
			b.vector(p+"attention.output.dense.bias", l.AttnOutB))
		x = b.opAttrs("LayerNormalization", []string{b.op("Add", attnOut, x),
			b.vector(p+"attention.output.LayerNorm.weight", l.AttnNormG),
			b.vector(p+"attention.output.LayerNorm.bias", l.AttnNormB)},
			attr("axis", intAttr(-1)), attr("epsilon", floatAttr(m.LayerNormEps)))

		inter := b.op("Add", b.op("MatMul", x, b.weight(p+"intermediate.dense.weight", l.Inter)),
			b.vector(p+"intermediate.dense.bias", l.InterB))
		erf := b.op("Erf", b.op("Div", inter, b.constFloat(math.Sqrt2)))
		gelu := b.op("Mul", b.op("Mul", inter, b.op("Add", erf, b.constFloat(1))), b.constFloat(0.5))
		out := b.op("Add", b.op("MatMul", gelu, b.weight(p+"output.dense.weight", l.Out)),
			b.vector(p+"output.dense.bias", l.OutB))
		x = b.decomposedLayerNorm(b.op("Add", out, x), b.vector(p+"output.LayerNorm.weight", l.OutNormG),
			b.vector(p+"output.LayerNorm.bias", l.OutNormB), m.LayerNormEps)
	}
	b.rename(x, "last_hidden_state")

	first := b.opAttrs("Gather", []string{"last_hidden_state", b.constInts(nil, 0)}, attr("axis", intAttr(1)))
	pooled := b.op("Add", b.op("MatMul", first, b.weight("pooler.dense.weight", m.PoolerW)), b.vector("pooler.dense.bias", m.PoolerB))
	b.rename(b.op("Tanh", pooled), "pooler_output")

	inputs := []any{valueInfo("input_ids", onnxInt64, "batch", "sequence")}
	if !m.NoAttentionMaskInput {
		inputs = append(inputs, valueInfo("attention_mask", onnxInt64, "batch", "sequence"))
	}
	if !m.NoTokenTypeInput {
		inputs = append(inputs, valueInfo("token_type_ids", onnxInt64, "batch", "sequence"))
	}
	graph := map[string]any{
		"ir_version":    8,
		"producer_name": "infergate-tinybert",
		"opset_import":  []any{map[string]any{"domain": "", "version": opsetVersion}},
		"graph": map[string]any{
			"name":        "tinybert",
			"node":        b.nodes,
			"initializer": b.inits,
			"input":       inputs,
			"output": []any{
				valueInfo("last_hidden_state", onnxFloat, "batch", "sequence", h),
				valueInfo("pooler_output", onnxFloat, "batch", h),
			},
		},
	}
	doc, err := json.Marshal(graph)
	if err != nil {
		return nil, nil, fmt.Errorf("tinybert: %w", err)
	}
	// onnx-gomlx's Model carries the ModelProto type of its vendored ONNX
	// protos; decoding into it checks every field name against the schema.
	var parsed onnx.Model
	if err := protojson.Unmarshal(doc, &parsed.Proto); err != nil {
		return nil, nil, fmt.Errorf("tinybert: building ONNX proto: %w", err)
	}
	model, err = proto.Marshal(&parsed.Proto)
	return model, b.external.Bytes(), err
}

// graphBuilder collects nodes and initializers in protojson form.
type graphBuilder struct {
	nodes []map[string]any
	inits []any
	count int
	// externalName, when set, puts initializers' bytes into external.
	externalName string
	external     bytes.Buffer
}

// initializer adds a named weight tensor.
func (b *graphBuilder) initializer(name string, dtype int, dims []int64, raw []byte) string {
	if b.externalName == "" {
		b.inits = append(b.inits, tensor(name, dtype, dims, raw))
		return name
	}
	t := tensor(name, dtype, dims, nil)
	t["data_location"] = "EXTERNAL"
	t["external_data"] = []any{
		map[string]any{"key": "location", "value": b.externalName},
		map[string]any{"key": "offset", "value": strconv.Itoa(b.external.Len())},
		map[string]any{"key": "length", "value": strconv.Itoa(len(raw))},
	}
	b.external.Write(raw)
	b.inits = append(b.inits, t)
	return name
}

func (b *graphBuilder) op(opType string, inputs ...string) string {
	return b.opAttrs(opType, inputs)
}

func (b *graphBuilder) opAttrs(opType string, inputs []string, attrs ...map[string]any) string {
	b.count++
	out := fmt.Sprintf("/%s_%d_output_0", opType, b.count)
	node := map[string]any{
		"name":    fmt.Sprintf("/%s_%d", opType, b.count),
		"op_type": opType,
		"input":   inputs,
		"output":  []string{out},
	}
	if len(attrs) > 0 {
		node["attribute"] = attrs
	}
	b.nodes = append(b.nodes, node)
	return out
}

// rename gives the node that produced output a graph output's name.
func (b *graphBuilder) rename(output, name string) {
	for _, n := range b.nodes {
		ins := n["input"].([]string)
		for i := range ins {
			if ins[i] == output {
				ins[i] = name
			}
		}
		if n["output"].([]string)[0] == output {
			n["output"] = []string{name}
		}
	}
}

func (b *graphBuilder) weight(name string, w *Matrix) string {
	return b.initializer(name, onnxFloat, []int64{int64(w.Rows), int64(w.Cols)}, float32Bytes(w.Data))
}

func (b *graphBuilder) vector(name string, v []float64) string {
	return b.initializer(name, onnxFloat, []int64{int64(len(v))}, float32Bytes(v))
}

// constIntsRange is torch's position_ids buffer: [[0, 1, …, n-1]].
func (b *graphBuilder) constIntsRange(name string, n int) string {
	v := make([]int64, n)
	for i := range v {
		v[i] = int64(i)
	}
	return b.initializer(name, onnxInt64, []int64{1, int64(n)}, int64Bytes(v))
}

// constInts emits a Constant node; dims nil makes a scalar.
func (b *graphBuilder) constInts(dims []int64, v ...int64) string {
	return b.opAttrs("Constant", nil, attr("value", tensorAttr(onnxInt64, dims, int64Bytes(v))))
}

func (b *graphBuilder) constFloat(v float64) string {
	return b.opAttrs("Constant", nil, attr("value", tensorAttr(onnxFloat, nil, float32Bytes([]float64{v}))))
}

// decomposedLayerNorm is LayerNorm as opsets before 17 export it.
func (b *graphBuilder) decomposedLayerNorm(x, gamma, beta string, eps float64) string {
	mean := b.opAttrs("ReduceMean", []string{x}, attr("axes", intsAttr(-1)))
	centered := b.op("Sub", x, mean)
	variance := b.opAttrs("ReduceMean", []string{b.op("Pow", centered, b.constFloat(2))}, attr("axes", intsAttr(-1)))
	std := b.op("Sqrt", b.op("Add", variance, b.constFloat(eps)))
	return b.op("Add", b.op("Mul", b.op("Div", centered, std), gamma), beta)
}

func attr(name string, a map[string]any) map[string]any {
	a["name"] = name
	return a
}

func intAttr(v int64) map[string]any { return map[string]any{"type": "INT", "i": v} }

func floatAttr(v float64) map[string]any { return map[string]any{"type": "FLOAT", "f": float32(v)} }

func intsAttr(v ...int64) map[string]any { return map[string]any{"type": "INTS", "ints": v} }

func tensorAttr(dtype int, dims []int64, raw []byte) map[string]any {
	return map[string]any{"type": "TENSOR", "t": tensor("", dtype, dims, raw)}
}

func tensor(name string, dtype int, dims []int64, raw []byte) map[string]any {
	t := map[string]any{"data_type": dtype}
	if raw != nil {
		t["raw_data"] = raw
	}
	if name != "" {
		t["name"] = name
	}
	if len(dims) > 0 {
		t["dims"] = dims
	}
	return t
}

// valueInfo describes a graph input or output; dims are dimension names
// (dynamic) or sizes.
func valueInfo(name string, dtype int, dims ...any) map[string]any {
	var shape []any
	for _, d := range dims {
		switch d := d.(type) {
		case string:
			shape = append(shape, map[string]any{"dim_param": d})
		case int:
			shape = append(shape, map[string]any{"dim_value": d})
		}
	}
	return map[string]any{"name": name, "type": map[string]any{
		"tensor_type": map[string]any{"elem_type": dtype, "shape": map[string]any{"dim": shape}},
	}}
}

func float32Bytes(v []float64) []byte {
	out := make([]byte, 4*len(v))
	for i, f := range v {
		binary.LittleEndian.PutUint32(out[4*i:], math.Float32bits(float32(f)))
	}
	return out
}

func int64Bytes(v []int64) []byte {
	out := make([]byte, 8*len(v))
	for i, n := range v {
		binary.LittleEndian.PutUint64(out[8*i:], uint64(n))
	}
	return out
}
