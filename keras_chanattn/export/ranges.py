"""Calibrated int8 ranges widened to the scale limits of XNNPACK's int8 ADD, SUB and MUL.

Full-int8 export calibrates each activation's range (min, max) and quantises with
`scale = range / 255`. XNNPACK runs an int8 binary op only when its scales lie within fixed
ratios; outside them the op stays in LiteRT's own kernel and splits the graph into more
XNNPACK partitions:

- ADD, SUB: each input's scale over the output's in `[2^-10, 2^8)`;
- MUL: the product of the input scales over the output's in `[2^-16, 2^8)`.

A gate's small terms can break the lower limits, typically after a fine-tune (Global
Context's context vector added to the map, Shuffle Attention's small spatial slope).
`fit_xnnpack_ranges` widens, before quantisation, the recorded range of such an input to
`MARGIN` times the limit, and lists what it widened. It only widens a tensor that no other op
reads; a range that is zero (a term that is always 0) is left alone. Widening never moves a
value outside the range; it costs resolution only in the widened tensor, and at the limit
that is nothing the output can show: the widened input's rounding error (half its scale) is
at most `2^-10` of the output's scale for ADD and SUB (`scale_in = MARGIN * 2^-10 *
scale_out`), and for MUL at most `128 * scale_a * scale_b' / 2 = 2^-9` of it (`scale_a *
scale_b' = MARGIN * 2^-16 * scale_out`, `|a| <= 128 scale_a`).

`widen_output_ranges` gives the model's outputs a margin over the range the calibration
images set (`OUTPUT_MARGIN`, 10% by default): an image whose logits lie a little beyond the
calibration images' would otherwise clip at the int8 output's extreme code.

`scale_ratio_problems` and `int8_scale_problems` check a quantised model against the same
limits: the verification names them beside an op left outside XNNPACK, and
`chanattn int8-limits FILE.tflite ...` lists them for any int8 file.
"""

import numpy as np

ADD_MIN_RATIO = 2.0**-10
MUL_MIN_RATIO = 2.0**-16
MAX_RATIO = 2.0**8  # the upper limit of both ratios: checked, not fitted
MARGIN = 2.0  # widen to twice the limit: the quantiser nudges ranges to put 0 on the grid
# The model outputs' calibrated ranges are widened by this fraction (away from 0).
OUTPUT_MARGIN = 0.1
# Ops whose int8 output has a fixed range, whatever was recorded.
FIXED_RANGE_OPS = ("SOFTMAX", "LOGISTIC", "TANH", "LOG_SOFTMAX")


def _range(minimum, maximum):
    """The width of `[min, max]` once it includes 0, as the int8 quantiser makes it."""
    return float(max(maximum, 0.0) - min(minimum, 0.0))


class _Stats:
    """The recorded (min, max) of one tensor, as writable views into the model's bytes."""

    def __init__(self, tensor):
        quantization = tensor.Quantization()
        self.minimum = quantization.MinAsNumpy()
        self.maximum = quantization.MaxAsNumpy()
        self.name = tensor.Name().decode("utf-8", "replace")

    @property
    def width(self):
        return _range(self.minimum[0], self.maximum[0])

    def widen(self, factor):
        self.minimum[0] = min(self.minimum[0], 0.0) * factor
        self.maximum[0] = max(self.maximum[0], 0.0) * factor


def _tensor_stats(model, subgraph):
    """`{tensor index: _Stats}` for the activations with one recorded (min, max)."""
    stats = {}
    for index in range(subgraph.TensorsLength()):
        tensor = subgraph.Tensors(index)
        quantization = tensor.Quantization()
        if quantization is None or quantization.MinLength() != 1 or quantization.MaxLength() != 1:
            continue
        if model.Buffers(tensor.Buffer()).DataLength():
            continue  # a constant: quantised from its values
        stats[index] = _Stats(tensor)
    return stats


def _readers(subgraph):
    """How many times each tensor is read (by an op, or as a model output)."""
    counts = {}
    for i in range(subgraph.OperatorsLength()):
        for index in subgraph.Operators(i).InputsAsNumpy():
            counts[int(index)] = counts.get(int(index), 0) + 1
    for index in subgraph.OutputsAsNumpy():
        counts[int(index)] = counts.get(int(index), 0) + 1
    return counts


def _constant_width(model, subgraph, index):
    """The int8 range of a constant operand (its values, with 0), or `None` if not constant."""
    tensor = subgraph.Tensors(index)
    data = model.Buffers(tensor.Buffer()).DataAsNumpy()
    if not isinstance(data, np.ndarray) or tensor.Type() != 0:  # 0: FLOAT32
        return None
    values = data.view(np.float32)
    return _range(float(values.min()), float(values.max())) if values.size else None


def builtin_names():
    """`{builtin op code: name}` of the TFLite schema (`"ADD"`, `"CONV_2D"`, ...)."""
    from ai_edge_litert import schema_py_generated as schema

    return {
        value: name
        for name, value in vars(schema.BuiltinOperator).items()
        if not name.startswith("_") and isinstance(value, int)
    }


def _op_namer(model):
    """`operator -> builtin op name ("ADD", ...)` for the operators of `model`."""
    names = builtin_names()

    def name(operator):
        code = model.OperatorCodes(operator.OpcodeIndex())
        return names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "")

    return name


def _producers(subgraph):
    """`{tensor index: operator}` for the tensors the operators of `subgraph` produce."""
    found = {}
    for i in range(subgraph.OperatorsLength()):
        operator = subgraph.Operators(i)
        for index in operator.OutputsAsNumpy():
            found[int(index)] = operator
    return found


def widen_output_ranges(calibrated, margin=OUTPUT_MARGIN, float_outputs=()):
    """Widens the recorded range of each model output by `margin`, away from 0.

    The calibration images set the int8 output's range; a held-out image whose output lies
    beyond it clips at the extreme code. Scaling `[min(lo, 0), max(hi, 0)]` by `1 + margin`
    leaves room for such images, at the cost of a `1 + margin` times coarser output step.
    Outputs of ops with a fixed int8 range (softmax, logistic, tanh) and of the declared
    float ops are left alone.

    Args:
        calibrated: a calibrated float TFLite flatbuffer (`calibrate_only`).
        margin: the fraction to widen by, `>= 0`. Defaults to `OUTPUT_MARGIN`.
        float_outputs: output tensor names of the ops that stay in float. Defaults to `()`.

    Returns:
        `(flatbuffer, widened)`: a copy with the widened ranges, and one dict per widened
        output: `tensor`, its `calibrated` and `widened` `[low, high]`.
    """
    from ai_edge_litert import schema_py_generated as schema

    if not margin > 0:
        return bytes(calibrated), []
    buffer = bytearray(calibrated)
    model = schema.Model.GetRootAs(buffer, 0)
    subgraph = model.Subgraphs(0)
    stats, producers = _tensor_stats(model, subgraph), _producers(subgraph)
    op_name = _op_namer(model)
    widened = []
    for index in dict.fromkeys(int(i) for i in subgraph.OutputsAsNumpy()):
        producer = producers.get(index)
        if index not in stats or stats[index].name in float_outputs or stats[index].width == 0:
            continue
        if producer is not None and op_name(producer) in FIXED_RANGE_OPS:
            continue
        before = [float(stats[index].minimum[0]), float(stats[index].maximum[0])]
        stats[index].widen(1.0 + margin)
        after = [float(stats[index].minimum[0]), float(stats[index].maximum[0])]
        widened.append({"tensor": stats[index].name, "calibrated": before, "widened": after})
    return bytes(buffer), widened


def fit_xnnpack_ranges(calibrated, float_outputs=()):
    """Widens the recorded ranges of a calibrated model to XNNPACK's int8 scale limits.

    Args:
        calibrated: a float TFLite flatbuffer with recorded ranges
            (`keras_chanattn._compat.tf_converter.calibrate_only`).
        float_outputs: output tensor names of the ops that will stay in float (the
            declared float ops); they are not checked. Defaults to `()`.

    Returns:
        `(flatbuffer, widened)`: the model with the widened ranges (a copy: `calibrated`
        is not modified), and one dict per widened tensor: `tensor`, `op`, the op's scale
        ratio `before` and the `limit`, and the `factor` the range was multiplied by.
    """
    from ai_edge_litert import schema_py_generated as schema

    buffer = bytearray(calibrated)
    model = schema.Model.GetRootAs(buffer, 0)
    subgraph = model.Subgraphs(0)
    op_name = _op_namer(model)
    stats = _tensor_stats(model, subgraph)
    readers = _readers(subgraph)
    widened = []

    def widen(index, op, ratio, limit):
        factor = MARGIN * limit / ratio
        stats[index].widen(factor)
        widened.append(
            {"tensor": stats[index].name, "op": op, "before": ratio, "limit": limit,
             "factor": factor}
        )  # fmt: skip

    # Consumers before producers: widening an op's input widens its producer's output,
    # which the producer's own check (later in this loop) then sees.
    for i in reversed(range(subgraph.OperatorsLength())):
        operator = subgraph.Operators(i)
        op = op_name(operator)
        inputs = [int(index) for index in operator.InputsAsNumpy()]
        output = int(operator.OutputsAsNumpy()[0])
        if op not in ("ADD", "SUB", "MUL") or len(inputs) != 2 or output not in stats:
            continue
        if stats[output].name in float_outputs:
            continue
        out_width = stats[output].width
        if out_width == 0.0:
            continue
        widths = [
            stats[index].width if index in stats else _constant_width(model, subgraph, index)
            for index in inputs
        ]
        if None in widths or 0.0 in widths:
            continue
        # Read once: by this op alone, and not as both of its inputs (a square).
        widenable = [k for k, index in enumerate(inputs) if index in stats and readers[index] == 1]
        if op in ("ADD", "SUB"):
            for k in widenable:
                ratio = widths[k] / out_width
                if ratio < ADD_MIN_RATIO:
                    widen(inputs[k], op, ratio, ADD_MIN_RATIO)
        else:
            ratio = widths[0] * widths[1] / (255.0 * out_width)
            if ratio < MUL_MIN_RATIO and widenable:
                k = min(widenable, key=lambda k: widths[k])
                widen(inputs[k], op, ratio, MUL_MIN_RATIO)
    return bytes(buffer), widened


def scale_ratio_problems(op, input_scales, output_scale):
    """The limits an int8 ADD/SUB/MUL's scales break in XNNPACK, as text (`[]`: none).

    Args:
        op: `"ADD"`, `"SUB"` or `"MUL"` (any other op: `[]`).
        input_scales: the two inputs' quantisation scales.
        output_scale: the output's quantisation scale.

    Example:
    >>> scale_ratio_problems("SUB", [1e-4, 0.1], 0.2)
    ['input 0 / output scale 0.0005 < 2^-10']
    """
    if op in ("ADD", "SUB"):
        ratios = [(f"input {k} / output scale", s / output_scale, ADD_MIN_RATIO, "2^-10")
                  for k, s in enumerate(input_scales)]  # fmt: skip
    elif op == "MUL":
        product = float(np.prod(input_scales)) / output_scale
        ratios = [("input scales' product / output scale", product, MUL_MIN_RATIO, "2^-16")]
    else:
        return []
    problems = []
    for what, ratio, limit, limit_text in ratios:
        if ratio < limit:
            problems.append(f"{what} {ratio:.3g} < {limit_text}")
        elif ratio >= MAX_RATIO:
            problems.append(f"{what} {ratio:.3g} >= 2^8")
    return problems


def int8_scale_problems(tflite):
    """Every int8 ADD, SUB and MUL of a quantised model whose scales XNNPACK refuses.

    Args:
        tflite: a TFLite flatbuffer (`bytes`).

    Returns:
        `(checked, problems)`: how many int8 ADD/SUB/MUL ops there are, and one dict per op
        outside the limits: `op`, its output `tensor` name, and the `problems` as text.

    Raises:
        ValueError: `tflite` is not a TFLite flatbuffer.
    """
    from ai_edge_litert import schema_py_generated as schema

    if len(tflite) < 8 or not schema.Model.ModelBufferHasIdentifier(tflite, 0):
        raise ValueError("not a TFLite flatbuffer (no 'TFL3' identifier at bytes 4-8)")
    model = schema.Model.GetRootAs(tflite, 0)
    subgraph = model.Subgraphs(0)
    op_name = _op_namer(model)

    def scale(index):
        tensor = subgraph.Tensors(index)
        quantization = tensor.Quantization()
        if tensor.Type() != schema.TensorType.INT8 or quantization is None:
            return None
        return float(quantization.ScaleAsNumpy()[0]) if quantization.ScaleLength() else None

    checked, found = 0, []
    for i in range(subgraph.OperatorsLength()):
        operator = subgraph.Operators(i)
        op = op_name(operator)
        tensors = [int(t) for t in operator.InputsAsNumpy()] + [int(operator.Outputs(0))]
        if op not in ("ADD", "SUB", "MUL") or len(tensors) != 3:
            continue
        scales = [scale(index) for index in tensors]
        if None in scales:
            continue  # a float op
        checked += 1
        if problems := scale_ratio_problems(op, scales[:2], scales[2]):
            name = subgraph.Tensors(tensors[2]).Name().decode("utf-8", "replace")
            found.append({"op": op, "tensor": name, "problems": problems})
    return checked, found


def format_scale_problems(name, checked, problems):
    """What `chanattn int8-limits` prints for one file: a count, then one line per op outside."""
    lines = [f"{name}: {checked} int8 ADD/SUB/MUL, {len(problems)} outside XNNPACK's limits"]
    lines += [f"  {p['op']} {p['tensor']}: {'; '.join(p['problems'])}" for p in problems]
    return "\n".join(lines)
