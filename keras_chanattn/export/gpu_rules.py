"""The package's screen of a `.tflite` against the LiteRT GPU delegate's documented rules.

This is not the delegate: it reads the flatbuffer's ops and tensors and applies, as facts,
the constraints the delegate's documentation and sources state (`SOURCES`). It serves where
TensorFlow's `Analyzer` ships without its GPU rules (`accelerators.gpu_checker_active`); a
phone's delegate stays the final word (a newer delegate may take more, e.g. 5-D tensors).

The rules encoded:
- ops: the builtin ops the delegate has (float32 and float16 graphs; a float16 file's
  DEQUANTIZE of float16 weights is folded by the delegate). Quantized (int8) files run as a
  float view: weights dequantized once, 8-bit inputs and outputs converted on the CPU.
- tensors: every runtime tensor has rank 1 to 4 and a float type (int8/uint8 in quantized
  files; bool or int32 where the op takes them).
- per op: ADD/MUL broadcasting, MUL with operands each smaller somewhere, reduction axes
  constant int32, STRIDED_SLICE/SLICE on 3-D or 4-D inputs without ellipsis, new-axis or
  shrink masks, TRANSPOSE of 2 to 4 axes, convolution strides and dilations, depthwise
  multipliers, PAD/MIRROR_PAD paddings (REFLECT only), SOFTMAX with beta 1, CUMSUM's axis.
"""

import dataclasses

import numpy as np

from keras_chanattn.export.graph import operator_codes

SOURCES = {
    "ops": "https://ai.google.dev/edge/litert/performance/gpu (GPU ML operations support: "
    "16-bit and 32-bit float)",
    "quantized": "https://ai.google.dev/edge/litert/android/gpu_native (quantized models: "
    "a floating-point view of the model)",
    "per-op": "tensorflow/tensorflow tensorflow/lite/tools/versioning/gpu_compatibility.cc "
    "(CheckGpuDelegateCompatibility, the Analyzer's GPU rules)",
    "tensors": "tensorflow/tensorflow tensorflow/lite/delegates/gpu/common/model_builder.cc "
    "and model_builder_helper.cc (tensor types, ranks 1-4, TRANSPOSE permutations)",
}

_UNARY = {"ABS", "CEIL", "COS", "ELU", "EXP", "FLOOR", "GELU", "LOG", "LOGISTIC", "NEG",
          "RSQRT", "SIGN", "SIN", "SQRT", "SQUARE", "TANH"}  # fmt: skip
_BINARY = {"ATAN2", "DIV", "EQUAL", "FLOOR_DIV", "FLOOR_MOD", "GREATER", "GREATER_EQUAL",
           "LOGICAL_AND", "LESS", "LESS_EQUAL", "MAXIMUM", "MINIMUM", "NOT_EQUAL", "POW",
           "SQUARED_DIFFERENCE", "SUB"}  # fmt: skip
_REDUCTIONS = {"MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN", "REDUCE_PROD"}
_OTHERS = {"ADD", "ADD_N", "AVERAGE_POOL_2D", "BATCH_MATMUL", "CAST", "CONCATENATION",
           "CONV_2D", "CUMSUM", "DENSIFY", "DEPTH_TO_SPACE", "DEPTHWISE_CONV_2D",
           "DEQUANTIZE", "DYNAMIC_UPDATE_SLICE", "EMBEDDING_LOOKUP", "FULLY_CONNECTED",
           "GATHER", "HARD_SWISH", "LEAKY_RELU", "LSTM", "MAX_POOL_2D", "MIRROR_PAD", "MUL",
           "ONE_HOT", "PACK", "PAD", "PADV2", "PRELU", "QUANTIZE", "RELU", "RELU6",
           "RELU_N1_TO_1", "RESHAPE", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "SELECT",
           "SELECT_V2", "SLICE", "SOFTMAX", "SPACE_TO_DEPTH", "SPLIT", "SPLIT_V",
           "STRIDED_SLICE", "TILE", "TRANSPOSE", "TRANSPOSE_CONV"}  # fmt: skip
SUPPORTED_OPS = frozenset(_UNARY | _BINARY | _REDUCTIONS | _OTHERS)

_FLOATS = {"FLOAT32", "FLOAT16", "INT8", "UINT8"}  # 8-bit: the quantized-model float view
_BOOL_OUT = {"EQUAL", "GREATER", "GREATER_EQUAL", "LESS", "LESS_EQUAL", "NOT_EQUAL",
             "LOGICAL_AND", "CAST", "SELECT", "SELECT_V2"}  # fmt: skip
_EXTRA_TYPES = {"CAST": {"BOOL", "INT32"}, "GATHER": {"INT32"}, "LOGICAL_AND": {"BOOL"},
                "SELECT": {"BOOL"}, "SELECT_V2": {"BOOL"}}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Tensor:
    """A tensor as the screen sees it: shape, type name, whether it is a constant (a
    buffer, or a DEQUANTIZE of one, which the delegate folds), and a constant's values."""

    shape: tuple
    dtype: str
    const: bool
    values: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class Op:
    """One operator: its subgraph, index, op name (a custom op's code when `custom`),
    options table and tensors."""

    subgraph: int
    index: int
    name: str
    custom: bool
    options: object
    inputs: tuple
    outputs: tuple

    def runtime_inputs(self):
        return [t for t in self.inputs if t is not None and not t.const]

    def const_inputs(self):
        return [t for t in self.inputs if t is not None and t.const]


def _names(enum):
    return {v: k for k, v in vars(enum).items() if not k.startswith("_") and isinstance(v, int)}


def _options(schema, operator):
    """The operator's builtin options as their schema class, or `None`."""
    kind = operator.BuiltinOptionsType()
    table = operator.BuiltinOptions()
    if not kind or table is None:
        return None
    options = getattr(schema, _names(schema.BuiltinOptions)[kind])()
    options.Init(table.Bytes, table.Pos)
    return options


def _tensor(schema, model, subgraph, index, folded, types):
    tensor = subgraph.Tensors(index)
    buffer = model.Buffers(tensor.Buffer())
    const = buffer is not None and buffer.DataLength() > 0
    values = None
    if const and tensor.Type() == schema.TensorType.INT32:
        values = buffer.DataAsNumpy().view("<i4")
    shape = tuple(int(d) for d in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ()
    return Tensor(shape, types[tensor.Type()], const or index in folded, values)


def read_ops(tflite_bytes):
    """Every operator of every subgraph of a `.tflite`, with its tensors (`Op`)."""
    from ai_edge_litert import schema_py_generated as schema

    if not isinstance(tflite_bytes, (bytes, bytearray)):
        raise TypeError(
            f"read_ops takes the .tflite's bytes, got {type(tflite_bytes).__name__}; "
            "read the file first (pathlib.Path(path).read_bytes())."
        )
    if bytes(tflite_bytes[4:8]) != b"TFL3":
        raise ValueError(
            "not a TFLite flatbuffer (no 'TFL3' identifier); pass the bytes of a .tflite file."
        )
    model = schema.Model.GetRootAs(tflite_bytes, 0)
    codes, types, ops = operator_codes(model), _names(schema.TensorType), []
    for s in range(model.SubgraphsLength()):
        subgraph, folded = model.Subgraphs(s), set()
        for o in range(subgraph.OperatorsLength()):
            operator = subgraph.Operators(o)
            kind, name = codes[operator.OpcodeIndex()]
            inputs = tuple(
                _tensor(schema, model, subgraph, int(i), folded, types) if i >= 0 else None
                for i in operator.InputsAsNumpy()
            )
            if name == "DEQUANTIZE" and inputs and inputs[0] is not None and inputs[0].const:
                folded.update(int(i) for i in operator.OutputsAsNumpy())
            outputs = tuple(
                _tensor(schema, model, subgraph, int(i), folded, types)
                for i in operator.OutputsAsNumpy()
            )
            options = _options(schema, operator)
            ops.append(Op(s, o, name, kind == "custom", options, inputs, outputs))
    return ops


# --- per-op rules (gpu_compatibility.cc's checks, as facts) -----------------------------------


def _activation(op):
    """A fused SIGN_BIT activation is the one the delegate lacks."""
    get = getattr(op.options, "FusedActivationFunction", None)
    if get is not None and get() == 5:  # ActivationFunctionType.SIGN_BIT
        return "fused SIGN_BIT activation: the delegate has none"
    return None


def _inputs(op, runtime, const=None):
    """`runtime` runtime inputs (and `const` constant ones when given), else the reason."""
    have, consts = len(op.runtime_inputs()), len(op.const_inputs())
    if have != runtime or (const is not None and consts != const):
        wanted = f"{runtime} runtime" + ("" if const is None else f" and {const} constant")
        return f"takes {wanted} input(s), the node has {have} runtime and {consts} constant"
    return None


def _broadcast(a, b):
    """The delegate's default broadcasting of two operands of different ranks (both > 1):
    4-D with a 3-D one at batch 1, with [1, 1], or [b, h, w, c] with [b, c]."""
    if len(a) <= 1 or len(b) <= 1 or len(a) == len(b):
        return None
    long, short = (a, b) if len(a) > len(b) else (b, a)
    if len(long) == 4 and (
        (len(short) == 3 and long[0] == 1)
        or (short == (1, 1) and long[0] == 1)
        or (len(short) == 2 and long[0] == short[0] and long[3] == short[1])
    ):
        return None
    return f"no broadcasting of {list(a)} with {list(b)}"


def _add(op):
    if len(op.inputs) != 2:
        return "ADD takes two inputs"
    return _broadcast(op.inputs[0].shape, op.inputs[1].shape) or _activation(op)


def _mul(op):
    if len(op.inputs) != 2:
        return "MUL takes two inputs"
    a, b = op.inputs[0].shape, op.inputs[1].shape
    if len(a) == len(b):
        difference = np.subtract(a, b)
        if (difference < 0).any() and (difference > 0).any():
            return f"MUL of {list(a)} by {list(b)}: one operand must be the larger in every axis"
        return _activation(op)
    return _broadcast(a, b) or _activation(op)


def _elementwise(op):
    if _inputs(op, 2, 0) and _inputs(op, 1, 1):
        return "takes 1 or 2 operands, at most one constant"
    return _activation(op)


def _reduction(op):
    axes = op.inputs[1] if len(op.inputs) > 1 else None
    if axes is None or not axes.const or axes.dtype != "INT32":
        return f"{op.name} takes constant int32 axes only"
    return _inputs(op, 1, 1 if op.name == "MEAN" else None)


def _strided_slice(op):
    o = op.options
    for mask, what in ((o.EllipsisMask(), "ellipsis"), (o.NewAxisMask(), "new_axis"),
                       (o.ShrinkAxisMask(), "shrink_axis")):  # fmt: skip
        if mask:
            return f"STRIDED_SLICE with a {what} mask: the delegate has none"
    return _slice(op)


def _slice(op):
    if len(op.inputs[0].shape) not in (3, 4):
        return f"{op.name} of a {len(op.inputs[0].shape)}-D tensor: 3-D or 4-D only"
    return None


def _transpose(op):
    perm = op.inputs[1] if len(op.inputs) > 1 else None
    if perm is None or not perm.const:
        return "TRANSPOSE takes a constant permutation"
    if not 2 <= perm.values.size <= 4:
        return f"TRANSPOSE of {perm.values.size} axes: the delegate permutes 2 to 4 axes"
    return _inputs(op, 1)


def _conv(op):
    o = op.options
    if len(op.runtime_inputs()) > 2 or len(op.outputs) != 1:
        return f"{op.name} takes 1 or 2 runtime inputs and one output"
    if o.StrideH() <= 0 or o.StrideW() <= 0 or o.DilationHFactor() <= 0 or o.DilationWFactor() <= 0:
        return f"{op.name} with a stride or dilation below 1"
    return _activation(op)


def _depthwise(op):
    problem = _conv(op)
    if problem:
        return problem
    x, w, y = op.inputs[0].shape, op.inputs[1].shape, op.outputs[0].shape
    if len(x) != 4 or len(w) != 4 or len(y) != 4:
        return "DEPTHWISE_CONV_2D takes 4-D input, filter and output"
    multiplier = op.options.DepthMultiplier()
    if y[3] != w[3] or (multiplier and y[3] != x[3] * multiplier):
        return "DEPTHWISE_CONV_2D: output channels != input channels x depth multiplier"
    if multiplier not in (0, 1) and x[3] != 1:
        return "DEPTHWISE_CONV_2D with a depth multiplier > 1 on more than one input channel"
    return None


def _pad(op):
    if op.name == "MIRROR_PAD" and op.options.Mode() != 0:  # MirrorPadMode.REFLECT
        return "MIRROR_PAD in SYMMETRIC mode: REFLECT only"
    paddings = op.inputs[1].shape if len(op.inputs) > 1 else ()
    if len(paddings) != 2 or paddings[0] not in (3, 4) or paddings[1] != 2:
        return f"{op.name} paddings of shape {list(paddings)}: 3x2 or 4x2 only"
    return _inputs(op, 1)


def _softmax(op):
    return None if op.options.Beta() == 1 else "SOFTMAX with beta != 1"


def _fully_connected(op):
    o = op.options
    if o.WeightsFormat() != 0:
        return "FULLY_CONNECTED with shuffled weights: the default format only"
    if len(op.runtime_inputs()) > 2 or op.inputs[0].const:
        return "FULLY_CONNECTED takes a runtime input and at most 2 runtime inputs"
    if o.KeepNumDims() and len(op.inputs[0].shape) != len(op.outputs[0].shape):
        return "FULLY_CONNECTED keep_num_dims with input and output ranks different"
    return None


def _cumsum(op):
    x, axis = op.inputs[0], op.inputs[1]
    if x.dtype not in ("FLOAT32", "FLOAT16") or not axis.const or axis.dtype != "INT32":
        return "CUMSUM takes a float input and a constant int32 axis"
    return None


def _cast(op):
    pair = (op.inputs[0].dtype, op.outputs[0].dtype)
    floats, numbers = {"FLOAT32", "FLOAT16"}, {"FLOAT32", "INT32"}
    if (
        (pair[0] == "BOOL" and pair[1] in floats)
        or (pair[0] in floats and pair[1] == "BOOL")
        or (pair[0] in numbers and pair[1] in numbers)
    ):
        return None
    return f"CAST from {pair[0]} to {pair[1]}"


def _gather(op):
    if op.inputs[0].dtype == "INT32":
        return "GATHER of an int32 tensor"
    indices = op.inputs[1]
    if len(indices.shape) != 1 or indices.dtype != "INT32":
        return "GATHER takes 1-D int32 indices only"
    return None


_CHECKS = {
    "ADD": _add,
    "MUL": _mul,
    "STRIDED_SLICE": _strided_slice,
    "SLICE": _slice,
    "TRANSPOSE": _transpose,
    "RESHAPE": lambda op: _inputs(op, 1),
    "TILE": lambda op: _inputs(op, 1),
    "CONV_2D": _conv,
    "DEPTHWISE_CONV_2D": _depthwise,
    "PAD": _pad,
    "PADV2": _pad,
    "MIRROR_PAD": _pad,
    "SOFTMAX": _softmax,
    "FULLY_CONNECTED": _fully_connected,
    "CUMSUM": _cumsum,
    "CAST": _cast,
    "GATHER": _gather,
    "ADD_N": lambda op: None if len(op.inputs) == 2 else "ADD_N of more than 2 inputs",
    "DEQUANTIZE": lambda op: "DEQUANTIZE of int16" if op.inputs[0].dtype == "INT16" else None,
    **{name: lambda op: _inputs(op, 1, 0) for name in _UNARY},
    **{name: _elementwise for name in _BINARY},
    **{name: _reduction for name in _REDUCTIONS},
}
_CUSTOM_OPS = {"Convolution2DTransposeBias", "MaxPoolingWithArgmax2D", "MaxUnpooling2D",
               "Resampler"}  # fmt: skip


def _tensor_problems(op):
    """The runtime tensors the delegate cannot hold: rank outside 1-4, or a type it does
    not compute in."""
    problems = []
    allowed = _FLOATS | _EXTRA_TYPES.get(op.name, set())
    for role, tensors in (("input", op.inputs), ("output", op.outputs)):
        for t in tensors:
            if t is None or t.const:  # constants, and float16 weights the delegate folds
                continue
            if not 1 <= len(t.shape) <= 4:
                problems.append(f"{len(t.shape)}-D {role} {list(t.shape)}: ranks 1 to 4 only")
            bool_out = role == "output" and t.dtype == "BOOL" and op.name in _BOOL_OUT
            if t.dtype not in allowed and not bool_out:
                problems.append(f"{t.dtype} {role}: float tensors only")
    return problems


def op_problems(op):
    """Why the GPU delegate's rules refuse `op` (an empty list: they accept it)."""
    if op.custom:
        return [] if op.name in _CUSTOM_OPS else [f"custom op {op.name}: not a GPU op"]
    if op.name not in SUPPORTED_OPS:
        return [f"{op.name}: not among the GPU delegate's ops"]
    check = _CHECKS.get(op.name)
    problem = check(op) if check else None
    return ([problem] if problem else []) + _tensor_problems(op)


def screen_gpu_rules(tflite_bytes):
    """The ops of a `.tflite` the GPU delegate's documented rules refuse.

    Returns:
        `[{"subgraph", "index", "op", "reason"}]`, one per refused op in graph order (the
        layout of `accelerators.parse_gpu_analysis`).
    """
    refused = []
    for op in read_ops(tflite_bytes):
        problems = op_problems(op)
        if problems:
            reason = "; ".join(dict.fromkeys(problems))
            refused.append({"subgraph": op.subgraph, "index": op.index, "op": op.name,
                            "reason": reason})  # fmt: skip
    return refused


def is_quantized(tflite_bytes):
    """Whether the file has 8-bit runtime tensors (the delegate then runs a float view)."""
    return any(
        t is not None and not t.const and t.dtype in ("INT8", "UINT8")
        for op in read_ops(tflite_bytes)
        for t in op.inputs + op.outputs
    )
