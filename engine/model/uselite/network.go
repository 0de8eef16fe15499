package uselite

import (
	"fmt"
	"math"
	"slices"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph" //nolint:revive // GoMLX graph code reads as math with the dot import.
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
)

// Node names of the TF graph (KonaTransformer inside the TF Hub module) that
// the network reads its weights and hyper-parameters from. Reading them off
// the graph, rather than hard-coding them, makes a different export of the
// model fail loudly at Load instead of computing something else.
const (
	konaPrefix   = "module_apply_default/Encoder_en/KonaTransformer/"
	stackPrefix  = konaPrefix + "Encode/TransformerStack/"
	hiddenPrefix = "module_apply_default/Encoder_en/hidden_layers/"
	outputNode   = hiddenPrefix + "l2_normalize"
)

// param is the index of a weight among the graph's parameters.
type param int

type denseLayer struct {
	kernel, bias param
	in, out      int
}

type layerNorm struct {
	scale, bias param
	eps         float32
}

type transformerLayer struct {
	attentionNorm  layerNorm
	qkv            denseLayer
	heads, headDim int
	queryScale     float32
	attentionOut   denseLayer
	// residual projects the layer input when the layer widens it (256→512
	// in the first layer); nil means the input is added as is.
	residual     *denseLayer
	ffnNorm      layerNorm
	ffnIn        denseLayer
	ffnOut       denseLayer
	outputWidth  int
	attentionDim int
}

// network is USE-Lite's forward pass: twice the token embedding plus a
// sinusoidal timing signal, a stack of pre-norm transformer layers with
// padding-masked attention, mean pooling over the tokens, a tanh layer and
// L2 normalisation.
type network struct {
	weights    []*tensors.Tensor // graph parameters after ids and lengths
	embeddings param
	vocabRows  int
	timing     param // [maxLen, width] sin/cos table
	maskBias   float32
	layers     []transformerLayer
	pooled     denseLayer
	l2Epsilon  float32
	maxLen     int
	dim        int
}

func (n *network) add(shape []int, data []float32) param {
	n.weights = append(n.weights, tensors.FromFlatDataAndDimensions(slices.Clone(data), shape...))
	return param(len(n.weights) - 1)
}

func (n *network) dense(m *graphModel, matmulNode, biasNode string) (denseLayer, error) {
	shape, err := m.floatShape(matmulNode, 1)
	if err != nil {
		return denseLayer{}, err
	}
	// 1x1 convolution kernels [1, 1, in, out] are plain [in, out] matrices.
	if len(shape) == 4 && shape[0] == 1 && shape[1] == 1 {
		shape = shape[2:]
	}
	if len(shape) != 2 {
		return denseLayer{}, fmt.Errorf("kernel of %s has shape %v, want a matrix", matmulNode, shape)
	}
	kernel, err := m.floatInput(matmulNode, 1)
	if err != nil {
		return denseLayer{}, err
	}
	bias, err := m.floatInput(biasNode, 1, shape[1])
	if err != nil {
		return denseLayer{}, err
	}
	in, out := shape[0], shape[1]
	// Stored as [out, in]: SimpleGo's matmul wants the contracted axis
	// last on both sides and would otherwise transpose every kernel on every
	// call.
	transposed := make([]float32, len(kernel))
	for i := range in {
		for o := range out {
			transposed[o*in+i] = kernel[i*out+o]
		}
	}
	return denseLayer{kernel: n.add([]int{out, in}, transposed), bias: n.add([]int{out}, bias), in: in, out: out}, nil
}

func (n *network) layerNorm(m *graphModel, prefix string, width int) (layerNorm, error) {
	scale, err := m.floatInput(prefix+"mul", 0, width)
	if err != nil {
		return layerNorm{}, err
	}
	bias, err := m.floatInput(prefix+"add_1", 1, width)
	if err != nil {
		return layerNorm{}, err
	}
	eps, err := m.floatScalar(prefix+"add", 1)
	if err != nil {
		return layerNorm{}, err
	}
	return layerNorm{scale: n.add([]int{width}, scale), bias: n.add([]int{width}, bias), eps: eps}, nil
}

// newNetwork reads the architecture's weights and constants off the graph.
func newNetwork(m *graphModel) (*network, error) {
	if _, ok := m.nodes[outputNode]; !ok {
		return nil, fmt.Errorf("model.json is not the USE-Lite graph this runtime implements: no node %s", outputNode)
	}
	n := &network{}
	var err error

	embeddingsNode := konaPrefix + "Encode/embedding_lookup"
	shape, err := m.floatShape(embeddingsNode, 0)
	if err != nil {
		return nil, err
	}
	if len(shape) != 2 {
		return nil, fmt.Errorf("embedding table has shape %v, want [vocab, width]", shape)
	}
	table, _ := m.floatInput(embeddingsNode, 0)
	n.embeddings = n.add(shape, table)
	n.vocabRows = shape[0]
	width := shape[1]

	if n.maxLen, err = m.intScalar(konaPrefix+"ClipToMaxLength/Less", 1); err != nil {
		return nil, err
	}
	if n.maxLen < 1 || n.maxLen > 1<<16 {
		return nil, fmt.Errorf("model clips sequences at %d tokens, want 1..65536", n.maxLen)
	}
	inverseTimescales, err := m.floatInput(stackPrefix+"Layer_0/AddTimingSignal/TimingSignal/mul_2", 1)
	if err != nil {
		return nil, err
	}
	if 2*len(inverseTimescales) != width {
		return nil, fmt.Errorf("timing signal has %d timescales for width %d", len(inverseTimescales), width)
	}
	n.timing = n.add([]int{n.maxLen, width}, timingSignal(n.maxLen, inverseTimescales))
	if n.maskBias, err = m.floatScalar(stackPrefix+"Layer_1/TransformerLayer/MultiheadAttention/DotProductAttention/attention_bias_ignore_padding/mul", 1); err != nil {
		return nil, err
	}

	for i := 0; ; i++ {
		prefix := fmt.Sprintf("%sLayer_%d/TransformerLayer/", stackPrefix, i)
		if _, ok := m.nodes[prefix+"MultiheadAttention/qkv_transform_single/Conv2D"]; !ok {
			break
		}
		layer, err := n.transformerLayer(m, prefix, width)
		if err != nil {
			return nil, fmt.Errorf("transformer layer %d: %w", i, err)
		}
		n.layers = append(n.layers, layer)
		width = layer.outputWidth
	}
	if len(n.layers) == 0 {
		return nil, fmt.Errorf("model.json has no transformer layers under %s", stackPrefix)
	}

	if n.pooled, err = n.dense(m, hiddenPrefix+"tanh_layer_0/MatMul", hiddenPrefix+"tanh_layer_0/BiasAdd"); err != nil {
		return nil, err
	}
	if n.pooled.in != width {
		return nil, fmt.Errorf("tanh layer takes width %d, transformer gives %d", n.pooled.in, width)
	}
	if n.l2Epsilon, err = m.floatScalar(hiddenPrefix+"l2_normalize/Maximum", 1); err != nil {
		return nil, err
	}
	n.dim = n.pooled.out
	return n, nil
}

func (n *network) transformerLayer(m *graphModel, prefix string, width int) (transformerLayer, error) {
	var l transformerLayer
	var err error
	mha := prefix + "MultiheadAttention/"
	if l.attentionNorm, err = n.layerNorm(m, prefix+"layer_prepostprocess/layer_norm/", width); err != nil {
		return l, err
	}
	if l.qkv, err = n.dense(m, mha+"qkv_transform_single/Conv2D", mha+"qkv_transform_single/BiasAdd"); err != nil {
		return l, err
	}
	split, err := m.intInput(mha+"split", 1)
	if err != nil {
		return l, err
	}
	if len(split) != 3 || split[0] != split[1] || split[1] != split[2] || int(3*split[0]) != l.qkv.out {
		return l, fmt.Errorf("query/key/value split %v does not divide width %d in three", split, l.qkv.out)
	}
	l.attentionDim = int(split[0])
	if l.heads, err = m.intScalar(mha+"split_heads/split_last_dimension/Reshape/shape", 2); err != nil {
		return l, err
	}
	if l.headDim, err = m.intScalar(mha+"split_heads/split_last_dimension/Reshape/shape", 3); err != nil {
		return l, err
	}
	if l.heads*l.headDim != l.attentionDim {
		return l, fmt.Errorf("%d heads of %d do not make width %d", l.heads, l.headDim, l.attentionDim)
	}
	if l.queryScale, err = m.floatScalar(mha+"mul", 1); err != nil {
		return l, err
	}
	if l.attentionOut, err = n.dense(m, mha+"output_transform_single/Conv2D", mha+"output_transform_single/BiasAdd"); err != nil {
		return l, err
	}
	l.outputWidth = l.attentionOut.out
	if _, ok := m.nodes[prefix+"AdjustResidualInput/dense/MatMul"]; ok {
		residual, err := n.dense(m, prefix+"AdjustResidualInput/dense/MatMul", prefix+"AdjustResidualInput/dense/BiasAdd")
		if err != nil {
			return l, err
		}
		l.residual = &residual
	} else if width != l.outputWidth {
		return l, fmt.Errorf("layer changes width %d→%d without a residual projection", width, l.outputWidth)
	}
	if l.ffnNorm, err = n.layerNorm(m, prefix+"FFN/layer_prepostprocess/layer_norm/", l.outputWidth); err != nil {
		return l, err
	}
	if l.ffnIn, err = n.dense(m, prefix+"FFN/conv1/Tensordot/MatMul", prefix+"FFN/conv1/BiasAdd"); err != nil {
		return l, err
	}
	if l.ffnOut, err = n.dense(m, prefix+"FFN/conv2/Tensordot/MatMul", prefix+"FFN/conv2/BiasAdd"); err != nil {
		return l, err
	}
	if l.ffnIn.in != l.outputWidth || l.ffnOut.in != l.ffnIn.out || l.ffnOut.out != l.outputWidth {
		return l, fmt.Errorf("feed-forward shapes %dx%d, %dx%d do not fit width %d",
			l.ffnIn.in, l.ffnIn.out, l.ffnOut.in, l.ffnOut.out, l.outputWidth)
	}
	return l, nil
}

// timingSignal precomputes the graph's AddTimingSignal for every position:
// [sin(p*t_0) … sin(p*t_k), cos(p*t_0) … cos(p*t_k)], with the product taken
// in float32 as the graph does. Doing it on the host keeps the table
// identical across backends, whose sin/cos may differ in the last bit.
func timingSignal(maxLen int, inverseTimescales []float32) []float32 {
	k := len(inverseTimescales)
	table := make([]float32, maxLen*2*k)
	for p := range maxLen {
		row := table[p*2*k : (p+1)*2*k]
		for i, inv := range inverseTimescales {
			angle := float64(float32(p) * inv)
			row[i] = float32(math.Sin(angle))
			row[k+i] = float32(math.Cos(angle))
		}
	}
	return table
}

// build is the GoMLX graph for one (batch, length) bucket. inputs are the
// token ids [batch, length] (int32, any valid id past a row's length), the
// row lengths [batch] (int32; 0 for padding rows) and then n.weights.
//
// Padding never changes a real row's result: padded keys get a -1e9
// attention bias, whose softmax weight is exactly 0 in float32, and pooling
// only sums positions below the row's length. Everything else is per
// position or per row.
func (n *network) build(inputs []*Node) *Node {
	ids, lengths := inputs[0], inputs[1]
	w := func(p param) *Node { return inputs[2+int(p)] }
	g := ids.Graph()
	batch, length := ids.Shape().Dimensions[0], ids.Shape().Dimensions[1]

	positions := Iota(g, shapes.Make(dtypes.Int32, batch, length), 1)
	present := LessThan(positions, BroadcastToDims(InsertAxes(lengths, -1), batch, length)) // [batch, length]
	presentF := ConvertDType(present, dtypes.Float32)
	// keyBias is 0 for tokens and maskBias for padding: [batch, 1, 1, length].
	keyBias := Reshape(MulScalar(OneMinus(presentF), n.maskBias), batch, 1, 1, length)

	embedded := Gather(w(n.embeddings), InsertAxes(ids, -1))
	timing := InsertAxes(Slice(w(n.timing), AxisRange(0, length)), 0)
	// The graph adds the gathered embeddings plus timing to the scattered
	// embeddings: 2E + T, summed in this order.
	x := Add(embedded, Add(embedded, timing))

	for _, layer := range n.layers {
		x = n.transformer(layer, x, keyBias, w)
	}

	// Mean over the row's tokens (the graph divides by max(length, 1)).
	summed := ReduceSum(Mul(x, InsertAxes(presentF, -1)), 1)
	count := ConvertDType(MaxScalar(lengths, 1), dtypes.Float32)
	pooled := Div(summed, InsertAxes(count, -1))

	hidden := Tanh(denseApply(pooled, n.pooled, w))
	sumSquares := ReduceAndKeep(Square(hidden), ReduceSum, -1)
	return Mul(hidden, Rsqrt(MaxScalar(sumSquares, n.l2Epsilon)))
}

func (n *network) transformer(l transformerLayer, x, keyBias *Node, w func(param) *Node) *Node {
	batch, length := x.Shape().Dimensions[0], x.Shape().Dimensions[1]

	normed := layerNormApply(x, l.attentionNorm, w)
	qkv := denseApply(normed, l.qkv, w)
	heads := func(i int) *Node {
		part := Slice(qkv, AxisRange(), AxisRange(), AxisRange(i*l.attentionDim, (i+1)*l.attentionDim))
		return Reshape(part, batch, length, l.heads, l.headDim)
	}
	query := MulScalar(heads(0), l.queryScale)
	key, value := heads(1), heads(2)
	logits := Add(Einsum("blhd,bmhd->bhlm", query, key), keyBias)
	weights := Softmax(logits, -1)
	context := Reshape(Einsum("bhlm,bmhd->blhd", weights, value), batch, length, l.attentionDim)
	attended := denseApply(context, l.attentionOut, w)

	residual := x
	if l.residual != nil {
		residual = denseApply(x, *l.residual, w)
	}
	h := Add(attended, residual)

	ffn := denseApply(layerNormApply(h, l.ffnNorm, w), l.ffnIn, w)
	ffn = denseApply(MaxScalar(ffn, 0), l.ffnOut, w)
	return Add(ffn, h)
}

// denseApply is x·kernel + bias over x's last axis (kernel stored [out, in]).
func denseApply(x *Node, d denseLayer, w func(param) *Node) *Node {
	y := DotGeneral(x, []int{x.Rank() - 1}, nil, w(d.kernel), []int{1}, nil)
	return Add(y, ExpandLeftToRank(w(d.bias), y.Rank()))
}

// layerNormApply follows the graph's op order: (scale·rsqrt(var+eps))·(x-mean) + bias.
func layerNormApply(x *Node, ln layerNorm, w func(param) *Node) *Node {
	mean := ReduceAndKeep(x, ReduceMean, -1)
	centered := Sub(x, mean)
	variance := ReduceAndKeep(Square(centered), ReduceMean, -1)
	scale := ExpandLeftToRank(w(ln.scale), x.Rank())
	bias := ExpandLeftToRank(w(ln.bias), x.Rank())
	return Add(Mul(Mul(scale, Rsqrt(AddScalar(variance, ln.eps))), centered), bias)
}
