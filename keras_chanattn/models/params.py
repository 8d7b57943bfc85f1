"""Parameter and FLOPs counts of the attention models, beside the papers' figures.

FLOPs are counted analytically from the Keras graph, in the convention of the papers'
tables (where "GFLOPs" means 10^9 multiply-adds):

- convolutions and dense layers of the backbone count their multiply-accumulates
  (`Conv2D`, `DepthwiseConv2D`, `SeparableConv2D`, `Conv1D`, `Dense`; biases not
  counted); the other built-in Keras layers (BatchNorm, activations, adds, pooling,
  padding, reshapes) count 0, as the papers do not count them either;
- every other layer, the attention blocks among them, is traced into a TensorFlow graph
  at its input shape (batch 1) and its ops are counted: one per multiply-accumulate of
  `Conv2D` / `DepthwiseConv2dNative` / `MatMul` / `BatchMatMul`, one per output element of
  an elementwise op (add, multiply, sigmoid, sqrt, ...), one per input element of a
  reduction (mean, sum, max), two per element of an inference BatchNorm, and none for
  data movement (reshape, transpose, concat, slice, pad, cast). So a block costs its FC
  layers, its pooling and its rescaling, as in the papers.

The models are built from `keras_chanattn.models.presets`, the one table of named models.
"""

import math

import keras
import numpy as np
import tensorflow as tf

from keras_chanattn._compat import keras_graph
from keras_chanattn.backend import require_tensorflow
from keras_chanattn.layers.registry import list_attention, paper_figures
from keras_chanattn.models import presets
from keras_chanattn.tables import Column, format_table

# Ops counted one per output element.
_ELEMENTWISE = {
    "Abs", "Add", "AddV2", "BiasAdd", "Div", "DivNoNan", "Elu", "Equal", "Erf", "Exp",
    "Floor", "FloorDiv", "Greater", "GreaterEqual", "LeakyRelu", "Less", "LessEqual", "Log",
    "Log1p", "LogicalAnd", "Maximum", "Minimum", "Mul", "Neg", "Pow", "RealDiv",
    "Reciprocal", "Relu", "Relu6", "Round", "Rsqrt", "Select", "SelectV2", "Selu", "Sigmoid",
    "Sign", "Softmax", "Softplus", "Sqrt", "Square", "SquaredDifference", "Sub", "Tanh",
}  # fmt: skip
# Ops counted one per input element.
_REDUCTIONS = {"Mean", "Sum", "Max", "Min", "Prod", "ArgMax", "ArgMin"}
_BATCH_NORM = {"FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3"}
_CONV_LAYERS = (
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv2D,
    keras.layers.Dense,
)


def count_params(model):
    """Returns `(total, trainable)` parameter counts of `model`."""
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    return int(model.count_params()), trainable


def count_flops(model):
    """FLOPs of one forward pass at batch 1, in the papers' multiply-add convention.

    See the module docstring for what is counted. The model's input shape must be fully
    known (apart from the batch).

    Returns:
        An int: multiply-accumulates plus counted elementwise operations.
    """
    require_tensorflow("FLOPs counting (count_flops)")
    cache = {}
    return int(sum(_node_flops(node, cache) for node in _nodes(model)))


def _nodes(model):
    """The layer calls of `model`, those of nested functional models unrolled."""
    for node in keras_graph.graph_nodes(model):
        operation = node.operation
        if operation is None or node.is_input:
            continue
        if keras_graph.is_functional(operation):
            yield from _nodes(operation)
        else:
            yield node


def _known(shape, what):
    dims = tuple(shape)
    if any(d is None for d in dims[1:]):
        raise ValueError(
            f"Counting FLOPs needs fully known shapes; {what} has shape {dims}. Build the "
            "model with a fixed input_shape, e.g. (224, 224, 3)."
        )
    return (1,) + tuple(int(d) for d in dims[1:])


def _node_flops(node, cache):
    operation = node.operation
    if isinstance(operation, _CONV_LAYERS):
        out = _known(node.outputs[0].shape, operation.name)
        inp = _known(node.input_tensors[0].shape, operation.name)
        return _conv_layer_macs(operation, inp, out)
    module = type(operation).__module__
    if module.startswith("keras.") and not isinstance(operation, keras.Model):
        return 0  # BatchNorm, activations, merges, pooling, padding, reshapes, keras.ops
    return _traced_flops(operation, node, cache)


def _conv_layer_macs(layer, inp, out):
    out_elements = math.prod(out)
    if isinstance(layer, keras.layers.Dense):
        return out_elements * inp[-1]
    if isinstance(layer, keras.layers.SeparableConv2D):
        mid = inp[-1] * layer.depth_multiplier
        return math.prod(out[:-1]) * (mid * math.prod(layer.kernel_size) + mid * out[-1])
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return out_elements * math.prod(layer.kernel_size)
    groups = getattr(layer, "groups", 1)
    return out_elements * math.prod(layer.kernel_size) * inp[-1] // groups


def _traced_flops(layer, node, cache):
    def spec(t):
        return tf.TensorSpec(_known(t.shape, layer.name), t.dtype)

    args, _ = keras_graph.call_arguments(node)
    structure = keras.tree.map_structure(
        lambda a: spec(a) if isinstance(a, keras.KerasTensor) else a, args
    )
    key = (type(layer).__name__, repr(_config_without_name(layer)), repr(structure))
    if key not in cache:
        kwargs = {"training": False} if getattr(layer, "_call_has_training_arg", False) else {}

        def call(*args):
            # An outer scope: a layer name such as "_gate" is no valid root scope name.
            with tf.name_scope("flops"):
                return layer(*args, **kwargs)

        function = tf.function(call)
        graph = function.get_concrete_function(*structure).graph
        cache[key] = sum(_op_flops(op) for op in graph.get_operations())
    return cache[key]


def _config_without_name(layer):
    try:
        config = dict(layer.get_config())
    except NotImplementedError:
        return id(layer)
    config.pop("name", None)
    return sorted((k, repr(v)) for k, v in config.items())


def _elements(shape):
    dims = shape.as_list() if shape.rank is not None else None
    if dims is None or any(d is None for d in dims):
        return 0
    return math.prod(dims)


def _op_flops(op):
    kind = op.type
    if kind == "Conv2D":
        kernel = op.inputs[1].shape.as_list()  # (kh, kw, cin / groups, cout)
        return _elements(op.outputs[0].shape) * kernel[0] * kernel[1] * kernel[2]
    if kind == "DepthwiseConv2dNative":
        kernel = op.inputs[1].shape.as_list()  # (kh, kw, cin, multiplier)
        return _elements(op.outputs[0].shape) * kernel[0] * kernel[1]
    if kind == "MatMul":
        a = op.inputs[0].shape.as_list()
        inner = a[0] if op.get_attr("transpose_a") else a[1]
        return _elements(op.outputs[0].shape) * inner
    if kind in ("BatchMatMul", "BatchMatMulV2", "BatchMatMulV3"):
        a = op.inputs[0].shape.as_list()
        inner = a[-2] if op.get_attr("adj_x") else a[-1]
        return _elements(op.outputs[0].shape) * inner
    if kind in _ELEMENTWISE:
        return _elements(op.outputs[0].shape)
    if kind == "AddN":
        return _elements(op.outputs[0].shape) * (len(op.inputs) - 1)
    if kind in _REDUCTIONS:
        return _elements(op.inputs[0].shape)
    if kind in _BATCH_NORM:
        return 2 * _elements(op.outputs[0].shape)
    return 0


def complexity_rows(backbone="resnet50", blocks=None, flops=True, **builder_kwargs):
    """Params, trainable params, delta over the plain backbone and FLOPs, one row per block.

    Args:
        backbone: a name from `keras_chanattn.models.presets.list_presets()` (e.g.
            `"resnet50"`) or a builder family given its arguments in `**builder_kwargs`.
        blocks: registered block names; `None` for all of them.
        flops: count FLOPs too (a few seconds per deep model).
        **builder_kwargs: passed to the builder over the preset's (e.g. `input_shape`,
            `alpha`).

    Returns:
        A list of dicts with keys `block`, `params`, `trainable`, `delta` (trainable),
        `delta_all`, `gflops`,
        `error` and the paper's `paper_delta`, `paper_gflops`, `paper_top1`,
        `paper_base_top1` (None where the paper gives none). The first row is the plain
        backbone (`block` "none"). A block that cannot be built on this backbone with its
        defaults gets a row with `error` set.

    Raises:
        ValueError: for an unknown backbone or block name.
    """
    presets.get_preset(backbone)
    names = list_attention() if blocks is None else list(blocks)
    unknown = sorted(set(names) - set(list_attention()))
    if unknown:
        raise ValueError(f"Unknown blocks {unknown}; registered: {', '.join(list_attention())}.")
    papers = paper_figures(backbone)  # each block's class declares its paper's figures
    builder_kwargs.setdefault("include_top", True)

    def build(block):
        return presets.build_model(backbone, block, paper_settings=True, **builder_kwargs)

    plain = _row("none", build(None), papers, flops)
    rows = [plain]
    for block in names:
        keras.backend.clear_session()
        try:
            model = build(block)
        except ValueError as error:
            rows.append(_row(block, None, papers, flops, error=str(error)))
            continue
        rows.append(_row(block, model, papers, flops))
        rows[-1]["delta"] = rows[-1]["trainable"] - plain["trainable"]
        rows[-1]["delta_all"] = rows[-1]["params"] - plain["params"]
    return rows


def _row(block, model, papers, flops, error=None):
    """One row of `complexity_rows`: the counts of `model` (None when it failed to build)."""
    paper = papers.get(block, {})
    total, trainable = count_params(model) if model is not None else (None, None)
    return {
        "block": block,
        "params": total,
        "trainable": trainable,
        "delta": None,
        "delta_all": None,
        "gflops": count_flops(model) / 1e9 if flops and model is not None else None,
        "error": error,
        "paper_delta": paper.get("delta"),
        "paper_gflops": paper.get("gflops"),
        "paper_top1": paper.get("top1"),
        "paper_base_top1": paper.get("base_top1"),
    }


def _signed(value):
    return f"{value:+,}"


COMPLEXITY_COLUMNS = (
    Column("block", "block", align="left"),
    Column("params", "params", "{:,}"),
    Column("trainable", "trainable", "{:,}"),
    Column("delta", "delta", _signed),
    Column("delta_all", "delta all", _signed),
    Column("paper_delta", "paper delta", _signed),
    Column("gflops", "GFLOPs", "{:.3f}"),
    Column("paper_gflops", "paper", "{:.2f}"),
    Column("paper_top1_text", "paper top-1"),
)

_FOOTNOTE = (
    "delta: trainable parameters over the plain network (delta all: with BatchNorm",
    "statistics and other non-trainable weights). GFLOPs: 10^9 multiply-adds at",
    "batch 1 (convolutions and dense layers, plus every op inside the attention blocks),",
    "counted from the Keras graph. paper: the papers' figures (docs/blocks.md), each from",
    "its own paper (top-1 with that paper's baseline in brackets).",
)
_RESNET50_FOOTNOTE = (
    "Our ResNet-50 is torchvision's (v1.5: stride in the 3x3 conv, 4.1 GFLOPs plain),",
    "as the SA, CBAM, SGE and Triplet papers count; the SE, SRM and ECA papers count",
    "3.86 GFLOPs for the plain ResNet-50 (v1, stride in the first 1x1 conv). ECA uses",
    "its official checkpoint's kernel sizes 3, 5, 5, 7 per stage.",
)


def format_rows(rows, backbone, markdown=False):
    """The rows of `complexity_rows` as a table (aligned text, or Markdown), with notes.

    Blocks that could not be built are listed under the table with the reason.
    """
    built = [dict(row, paper_top1_text=_top1_text(row)) for row in rows if not row["error"]]
    lines = [
        f"{backbone}: parameters and FLOPs per attention block",
        format_table(built, COMPLEXITY_COLUMNS, markdown=markdown),
    ]
    width = max(len(row["block"]) for row in rows)
    for row in rows:
        if row["error"]:
            reason = row["error"].split(": ", 1)[-1].split(". ")[0]
            lines.append(f"{row['block']:<{width}}  cannot build with its defaults: {reason}.")
    lines += ["", *_FOOTNOTE]
    if backbone == "resnet50":
        lines += _RESNET50_FOOTNOTE
    return "\n".join(lines)


def _top1_text(row):
    if row["paper_top1"] is None:
        return None
    text = f"{row['paper_top1']:.2f}"
    if row["paper_base_top1"] is not None:
        text += f" ({row['paper_base_top1']:.2f})"
    return text
