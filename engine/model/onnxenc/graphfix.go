package onnxenc

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	. "github.com/gomlx/gomlx/pkg/core/graph" //nolint:revive // GoMLX graph code reads best with its ops unqualified.
	"github.com/gomlx/gomlx/pkg/core/shapes"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"
	"github.com/gomlx/onnx-gomlx/onnx"
	"google.golang.org/protobuf/proto"
)

// This file bridges what current PyTorch exports and onnx-gomlx v0.3.4
// reads: torch.onnx.export (torch 2.9+, dynamo exporter) stores weights in
// a side file and builds BERT's attention mask with GatherND and, for SDPA
// attention, IsNaN; the TorchScript exporter concatenates empty constants
// into shapes — none of which onnx-gomlx handles.

// readModel parses an ONNX file, inlining external weights and rewriting
// IsNaN into Not(Equal(x, x)), which onnx-gomlx does convert, and dropping
// empty constants from Concat inputs.
func readModel(path string) (*onnx.Model, error) {
	m, err := onnx.ReadFile(path)
	if err != nil {
		return nil, err
	}
	inlined, err := inlineExternalData(m, filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	rewritten := rewriteIsNaN(m)
	trimmed := dropEmptyConcatInputs(m)
	if inlined || rewritten || trimmed {
		// Parse again so the model's indexes see the changed nodes.
		data, err := proto.Marshal(&m.Proto)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if m, err = onnx.Parse(data); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// dropEmptyConcatInputs removes zero-element constants from the inputs of
// Concat nodes, which the TorchScript exporter uses to build shapes: they add
// nothing, and onnx-gomlx cannot concatenate a zero-sized tensor.
func dropEmptyConcatInputs(m *onnx.Model) bool {
	empty := map[string]bool{}
	for _, t := range m.Proto.Graph.Initializer {
		empty[t.Name] = slices.Contains(t.Dims, 0)
	}
	for _, n := range m.Proto.Graph.Node {
		if n.OpType == "Constant" && len(n.Output) == 1 {
			for _, a := range n.Attribute {
				if a.Name == "value" && a.T != nil && slices.Contains(a.T.Dims, 0) {
					empty[n.Output[0]] = true
				}
			}
		}
	}
	changed := false
	for _, n := range m.Proto.Graph.Node {
		if n.OpType != "Concat" {
			continue
		}
		kept := slices.DeleteFunc(slices.Clone(n.Input), func(in string) bool { return empty[in] })
		if len(kept) > 0 && len(kept) < len(n.Input) {
			n.Input, changed = kept, true
		}
	}
	return changed
}

// inlineExternalData moves weights stored beside the model (ONNX external
// data: a location relative to the model's folder, an offset and a length)
// into the initializers themselves.
func inlineExternalData(m *onnx.Model, dir string) (bool, error) {
	files := map[string]*os.File{}
	defer func() {
		for _, f := range files {
			_ = f.Close()
		}
	}()
	changed := false
	for _, t := range m.Proto.Graph.Initializer {
		if len(t.ExternalData) == 0 {
			continue
		}
		entries := map[string]string{}
		for _, kv := range t.ExternalData {
			entries[kv.Key] = kv.Value
		}
		loc := entries["location"]
		if loc == "" || !filepath.IsLocal(loc) {
			return false, fmt.Errorf("tensor %q: external data location %q must be a file beside the model", t.Name, loc)
		}
		f, ok := files[loc]
		if !ok {
			var err error
			if f, err = os.Open(filepath.Join(dir, loc)); err != nil {
				return false, fmt.Errorf("tensor %q: %w", t.Name, err)
			}
			files[loc] = f
		}
		offset, err := optionalInt(entries["offset"], 0)
		if err != nil {
			return false, fmt.Errorf("tensor %q: external data offset: %w", t.Name, err)
		}
		length, err := optionalInt(entries["length"], -1)
		if err != nil {
			return false, fmt.Errorf("tensor %q: external data length: %w", t.Name, err)
		}
		var data []byte
		if length < 0 {
			data, err = io.ReadAll(io.NewSectionReader(f, offset, 1<<62))
		} else {
			data = make([]byte, length)
			_, err = f.ReadAt(data, offset)
		}
		if err != nil {
			return false, fmt.Errorf("tensor %q: reading %s: %w", t.Name, loc, err)
		}
		t.RawData, t.ExternalData, t.DataLocation = data, nil, 0 // 0: DEFAULT, inline
		changed = true
	}
	return changed, nil
}

func optionalInt(s string, def int64) (int64, error) {
	if s == "" {
		return def, nil
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err == nil && v < 0 {
		err = errors.New("negative")
	}
	return v, err
}

// rewriteIsNaN replaces every IsNaN(x) by Not(Equal(x, x)): NaN is the one
// value unequal to itself.
func rewriteIsNaN(m *onnx.Model) bool {
	var added int
	for _, n := range m.Proto.Graph.Node {
		if n.OpType != "IsNaN" || len(n.Input) != 1 || len(n.Output) != 1 {
			continue
		}
		eq := cloneMessage(n)
		eq.Name, eq.OpType = n.Name+"/self_equal", "Equal"
		eq.Input = []string{n.Input[0], n.Input[0]}
		eq.Output = []string{n.Output[0] + "/self_equal"}
		n.OpType, n.Input = "Not", eq.Output
		m.Proto.Graph.Node = append(m.Proto.Graph.Node, eq)
		added++
	}
	return added > 0
}

// cloneMessage copies a message of onnx-gomlx's vendored ONNX types, which
// this package cannot name.
func cloneMessage[T proto.Message](msg T) T {
	return proto.Clone(msg).(T)
}

// gatherND is one GatherND node; the encoder computes it with GoMLX's
// Gather (the same semantics for batch_dims 0) between two onnx-gomlx
// calls, see callModel.
type gatherND struct {
	data, indices, output string
}

// findGatherND lists the graph's GatherND nodes in graph (topological) order.
func findGatherND(m *onnx.Model) ([]gatherND, error) {
	var out []gatherND
	for _, n := range m.Proto.Graph.Node {
		if n.OpType != "GatherND" {
			continue
		}
		for _, a := range n.Attribute {
			if a.Name == "batch_dims" && a.I != 0 {
				return nil, fmt.Errorf("GatherND node %q has batch_dims=%d; only 0 is supported", n.Name, a.I)
			}
		}
		if len(n.Input) != 2 || len(n.Output) != 1 {
			return nil, fmt.Errorf("GatherND node %q: want 2 inputs and 1 output", n.Name)
		}
		out = append(out, gatherND{data: n.Input[0], indices: n.Input[1], output: n.Output[0]})
	}
	return out, nil
}

// callModel converts the ONNX graph into g and returns output. Each
// GatherND cuts the graph: onnx-gomlx builds its inputs, GoMLX gathers, and
// the result goes back in as an extra graph input for the next call. What
// lies upstream of a cut is converted again by the next call; for BERT that
// is only the attention-mask arithmetic. Callers hold e.buildMu: the model's
// input list is changed for the duration.
func (e *Encoder) callModel(ctx *mlctx.Context, g *Graph, feeds map[string]*Node, output string) *Node {
	m := e.onnxModel
	if len(e.gatherNDs) == 0 {
		return m.CallGraph(ctx, g, feeds, output)[0]
	}
	names, dshapes := m.InputsNames, m.InputsShapes
	defer func() { m.InputsNames, m.InputsShapes = names, dshapes }()
	feeds = maps.Clone(feeds)
	for _, gnd := range e.gatherNDs {
		ins := m.CallGraph(ctx, g, feeds, gnd.data, gnd.indices)
		feeds[gnd.output] = onnxGatherND(ins[0], ins[1])
		m.InputsNames = append(m.InputsNames, gnd.output)
		m.InputsShapes = append(m.InputsShapes, staticShape(feeds[gnd.output].Shape()))
	}
	return m.CallGraph(ctx, g, feeds, output)[0]
}

func staticShape(s shapes.Shape) onnx.DynamicShape {
	names := make([]string, s.Rank())
	for i, d := range s.Dimensions {
		names[i] = strconv.Itoa(d)
	}
	return onnx.DynamicShape{DType: s.DType, Dimensions: s.Dimensions, Names: names}
}

// onnxGatherND is ONNX GatherND with batch_dims 0; negative indices count
// from the end of their axis.
func onnxGatherND(data, indices *Node) *Node {
	k := indices.Shape().Dim(-1)
	dims := make([]int64, k)
	for i := range dims {
		dims[i] = int64(data.Shape().Dim(i))
	}
	bound := ConvertDType(Const(data.Graph(), dims), indices.DType())
	bound = BroadcastToDims(ExpandLeftToRank(bound, indices.Rank()), indices.Shape().Dimensions...)
	wrapped := Where(LessThan(indices, ScalarZero(data.Graph(), indices.DType())), Add(indices, bound), indices)
	// Gather indices flattened to [n, k]: GoMLX v0.26 refuses index tensors
	// of a higher rank than the data they index.
	outDims := append(slices.Clone(indices.Shape().Dimensions[:indices.Rank()-1]), data.Shape().Dimensions[k:]...)
	gathered := Gather(data, Reshape(wrapped, -1, k))
	return Reshape(gathered, outDims...)
}
