"""Verification of a `.tflite` against the Keras model it came from, reported and enforced.

`verify_tflite` runs the flatbuffer in the LiteRT interpreter (`ai_edge_litert`, with its
default XNNPACK delegate, as a phone would) and the ORIGINAL Keras model side by side on
held-out images and on out-of-distribution probes (noise, constant and high-contrast images
within the data range), and inspects the graph:

- the op list, read from the flatbuffer; Flex (TensorFlow) and custom ops are failures;
- the XNNPACK partitions: once `allocate_tensors()` has applied the default XNNPACK delegate,
  the interpreter's node list (`Interpreter._get_ops_details()`, the list TensorFlow's own
  quantisation debugger reads) holds the model's original nodes followed by one node named
  `DELEGATE` per partition XNNPACK took; their count is the number of partitions. The nodes
  left to LiteRT's own kernels are found by walking back from each partition's outputs to
  its inputs (the nodes met on the way are inside it); the rest are reported as
  `undelegated_ops`, each with the Keras layer it comes from, and for an int8 ADD, SUB or
  MUL the scale limits of XNNPACK's kernel it breaks (`export.ranges.scale_ratio_problems`);
- in full int8, the float ops: with int8 input and output there must be no float op at all,
  except the per-channel gate path a layer declares with a class attribute
  `export_float_ops = ("SQRT", ...)` (TFLite builtin op names): those ops, inside that layer
  only, and the DEQUANTIZE / QUANTIZE pairs around them, are allowed as long as every float
  tensor they produce is per-channel (at most one dimension other than the batch above 1).
  The allow-list in force is in the report (`float_allowlist`), each float op found is
  listed with its layer and whether it was allowed (`float_ops`);
- numerics: max abs error, relative error (`max abs error / max |Keras output|`), top-1
  agreement (for an output of shape `(N, classes)`), and non-finite outputs.

Ops are attributed to Keras layers through the TFLite tensor names, which carry the layer
names of the exported graph (e.g. `functional_1/squeeze_excite_1/Sigmoid`).
"""

import dataclasses
import os

import numpy as np

from keras_chanattn.export.errors import CheckReport, ExportVerificationError
from keras_chanattn.export.inference import (
    declared_float_ops,
    export_hints,
    inference_model,
    layer_names,
)
from keras_chanattn.export.litert import make_interpreter
from keras_chanattn.export.ranges import builtin_names, scale_ratio_problems
from keras_chanattn.export.saved_model import keras_outputs, output_order
from keras_chanattn.images import (
    as_images,
    image_input_spec,
    probe_images,
    synthetic_images,
    value_range,
)

QUANTIZATIONS = ("float32", "float16", "dynamic", "int8")

# Images used for the held-out check when the caller gives none.
SYNTHETIC_SAMPLES = 32


@dataclasses.dataclass(frozen=True)
class VerificationThresholds:
    """The limits `verify_tflite` enforces; `None` reports a figure without enforcing it.

    Attributes:
        max_relative_error: largest `max |TFLite - Keras| / max |Keras|` on held-out images.
        min_top1_agreement: smallest fraction of held-out images whose top-1 class agrees.
        max_probe_relative_error: the relative error limit on the out-of-distribution probes.
        min_probe_top1_agreement: the top-1 agreement limit on the probes.
        max_abs_error: largest `max |TFLite - Keras|` on held-out images (scale-dependent,
            so off by default).
        max_partitions: most XNNPACK partitions allowed.
        max_undelegated_ops: most ops left outside XNNPACK.
    """

    max_relative_error: float | None
    min_top1_agreement: float | None
    max_probe_relative_error: float | None
    min_probe_top1_agreement: float | None = None
    max_abs_error: float | None = None
    max_partitions: int | None = 1
    max_undelegated_ops: int | None = 0


DEFAULT_THRESHOLDS = {
    # Float kernels differ from TensorFlow's only by rounding order.
    "float32": VerificationThresholds(1e-4, 0.99, 1e-4),
    # float16 weights, float32 activations: about 3 significant digits.
    "float16": VerificationThresholds(1e-2, 0.98, 1e-2),
    # int8 weights, activations quantised on the fly. On the main job's trained ResNet-20s
    # (digits, 12 models, two runs) relative errors lay between 0.010 and 0.050 on
    # held-out images and up to 0.061 on the probes: 0.05 failed sound exports.
    "dynamic": VerificationThresholds(0.1, 0.98, 0.1),
    # Everything int8. The relative error is a maximum over images: on the same trained
    # ResNet-20s it lay between 0.031 and 0.129 from run to run for sound exports, and at
    # 0.33-0.98 for the blocks that quantised pooled maxima and means with one scale (fixed
    # since); 0.2 lies between. Top-1 agreement is the stricter check. Probes drive
    # activations outside the calibrated ranges, where int8 saturates by design (relative
    # errors of 0.4-1.0 whatever the block), so their error is reported, not enforced;
    # NaNs and interpreter failures on them still fail, in every format.
    "int8": VerificationThresholds(0.2, 0.98, None),
}


def default_thresholds(quantization, **overrides):
    """The default `VerificationThresholds` of a format, with some fields replaced."""
    check_quantization(quantization)
    return dataclasses.replace(DEFAULT_THRESHOLDS[quantization], **overrides)


def check_quantization(quantization):
    if quantization not in QUANTIZATIONS:
        raise ValueError(
            f"Unknown TFLite format {quantization!r}; valid formats are {list(QUANTIZATIONS)}."
        )
    return quantization


@dataclasses.dataclass
class ComparisonMetrics:
    """TFLite against Keras on one set of images.

    Attributes:
        samples: number of images.
        max_abs_error: max |TFLite - Keras| over all outputs (finite values).
        mean_abs_error: mean |TFLite - Keras|.
        relative_error: `max_abs_error / max |Keras output|`.
        top1_agreement: fraction of images with the same top-1 class (`None` when no output
            has shape `(N, classes)`).
        nonfinite_outputs: NaN or infinite values in the TFLite outputs.
        median_image_relative_error: each image's own relative error (its max abs error
            over the same `max |Keras output|`), median over the images. `relative_error`
            is the largest of them: one outlier image sets it, and these say whether it
            is one image or the whole set.
        p99_image_relative_error: the same, 99th percentile (linear interpolation).
        worst_images: the images with the largest relative errors, worst first, at most
            `WORST_IMAGES`, as `{"index", "relative_error", "top1_agrees", "saturated"}`
            (`top1_agrees` is `None` when the model has no class output, `saturated` when
            no output is quantised).
        saturated_images: images with a Keras output outside the range its quantised
            TFLite output can represent (the range the calibration images set), where the
            int8 output clips; `None` when no output is quantised.
        clipped_relative_error: the relative error against the Keras outputs clipped to
            those ranges: what is left when the clipping is taken out (`None` when no
            output is quantised). Far below `relative_error`, the largest errors are the
            clipping's: calibrate on more images, or on images like the saturated ones.
    """

    samples: int
    max_abs_error: float
    mean_abs_error: float
    relative_error: float
    top1_agreement: float | None
    nonfinite_outputs: int
    median_image_relative_error: float | None = None
    p99_image_relative_error: float | None = None
    worst_images: list = dataclasses.field(default_factory=list)
    saturated_images: int | None = None
    clipped_relative_error: float | None = None

    def image_error_summary(self):
        """`relative error per image: median ..., 99th percentile ...; worst #i ...`, or ""
        when no image has a finite error."""
        if self.median_image_relative_error is None:
            return ""

        def notes(w):
            said = []
            if w["top1_agrees"] is not None:
                said.append("same top-1" if w["top1_agrees"] else "other top-1")
            if w.get("saturated"):
                said.append("saturated")
            return f" ({', '.join(said)})" if said else ""

        worst = ", ".join(
            f"#{w['index']} {w['relative_error']:.3g}{notes(w)}" for w in self.worst_images
        )
        saturation = (
            f"; {self.saturated_images} of {self.samples} images beyond the quantised output's "
            f"range (relative error {self.clipped_relative_error:.3g} within it)"
            if self.saturated_images
            else ""
        )
        return (
            f"relative error per image: median {self.median_image_relative_error:.3g}, "
            f"99th percentile {self.p99_image_relative_error:.3g}; worst {worst}{saturation}"
        )


# How many of the worst images a `ComparisonMetrics` names.
WORST_IMAGES = 3


def compare_outputs(got, want, output_ranges=None):
    """`ComparisonMetrics` of TFLite outputs `got` against Keras outputs `want` (array lists).

    `output_ranges`: for each output, the `(low, high)` its quantised TFLite tensor can
    represent, or `None` for a float output (`quantized_range`); gives the saturation
    figures. Defaults to `None`: no output quantised.
    """
    nonfinite = sum(int(np.size(g) - np.count_nonzero(np.isfinite(g))) for g in got)
    diffs = [
        np.abs(g.astype("float64") - w.astype("float64")) for g, w in zip(got, want, strict=True)
    ]
    finite = np.concatenate([d[np.isfinite(d)] for d in diffs])
    max_abs = float(finite.max()) if finite.size else float("nan")
    mean_abs = float(finite.mean()) if finite.size else float("nan")
    scale = max(max(float(np.max(np.abs(w))) for w in want), 1e-12)
    agrees = None
    for g, w in zip(got, want, strict=True):
        if g.ndim == 2 and g.shape[1] >= 2:
            agrees = np.argmax(g, 1) == np.argmax(w, 1)
            break
    # Each image's largest finite error over all outputs (-inf for an image with none).
    per_image = (
        np.max([np.where(np.isfinite(d), d, -np.inf).reshape(len(d), -1).max(1) for d in diffs], 0)
        / scale
    )
    scored = np.flatnonzero(np.isfinite(per_image))
    worst = scored[np.argsort(-per_image[scored], kind="stable")][:WORST_IMAGES]
    saturated = clipped_relative = None
    output_ranges = output_ranges or [None] * len(want)
    if any(r is not None for r in output_ranges):
        beyond = np.zeros(len(want[0]), bool)
        clipped = []
        for g, w, d, limits in zip(got, want, diffs, output_ranges, strict=True):
            if limits is None:
                clipped.append(d)
                continue
            beyond |= ((w < limits[0]) | (w > limits[1])).reshape(len(w), -1).any(1)
            clipped.append(np.abs(g.astype("float64") - np.clip(w.astype("float64"), *limits)))
        saturated = int(beyond.sum())
        finite_clipped = np.concatenate([c[np.isfinite(c)] for c in clipped])
        clipped_relative = (
            float(finite_clipped.max()) / scale if finite_clipped.size else float("nan")
        )
    return ComparisonMetrics(
        samples=int(len(want[0])),
        max_abs_error=max_abs,
        mean_abs_error=mean_abs,
        relative_error=max_abs / scale,
        top1_agreement=None if agrees is None else float(np.mean(agrees)),
        nonfinite_outputs=nonfinite,
        median_image_relative_error=float(np.median(per_image[scored])) if scored.size else None,
        p99_image_relative_error=(
            float(np.percentile(per_image[scored], 99)) if scored.size else None
        ),
        worst_images=[
            {
                "index": int(i),
                "relative_error": float(per_image[i]),
                "top1_agrees": None if agrees is None else bool(agrees[i]),
                "saturated": None if saturated is None else bool(beyond[i]),
            }
            for i in worst
        ],
        saturated_images=saturated,
        clipped_relative_error=clipped_relative,
    )


def quantized_range(details):
    """`(low, high)`: the values a quantised tensor (`_io_details`) holds without clipping,
    those that round to one of its dtype's codes (half a step beyond the extreme codes);
    `None` for a float tensor."""
    dtype = np.dtype(details["dtype"])
    if not np.issubdtype(dtype, np.integer) or not details["scale"] > 0:
        return None
    info = np.iinfo(dtype)
    zero_point, scale = details["zero_point"], details["scale"]
    return (
        float((info.min - zero_point - 0.5) * scale),
        float((info.max - zero_point + 0.5) * scale),
    )


@dataclasses.dataclass
class VerificationReport(CheckReport):
    """Everything `verify_tflite` measured and checked; `to_json()` serialises it.

    Attributes:
        quantization: the TFLite format.
        model_name: the Keras model's name.
        path: where the `.tflite` was written (set by `export_tflite`), or `None`.
        size_bytes: size of the flatbuffer.
        input: name, shape, dtype and quantisation (scale, zero point) of the input.
        outputs: the same for each output.
        op_counts: builtin op name -> count, from the flatbuffer.
        custom_ops: Flex and custom op names (a failure when present).
        xnnpack_partitions: number of XNNPACK delegate partitions.
        xnnpack_error: why XNNPACK could not take the model, or `None`.
        undelegated_ops: ops left to LiteRT's kernels, as `"OP (layer)"`, followed for an
            int8 ADD/SUB/MUL by the XNNPACK scale limits it breaks, in brackets.
        float_ops: in int8, each float op as `{"op", "layer", "shape", "declared",
            "per_channel", "allowed"}` (allowed = declared by its layer and per-channel).
        float_allowlist: `{layer: [op, ...]}` the layers declared as kept in float.
        inference_forms: layers replaced by their inference forms before conversion.
        widened_ranges: in int8, the calibrated ranges widened to XNNPACK's scale limits
            before quantisation (`keras_chanattn.export.ranges`), as `{"tensor", "layer",
            "op", "before", "limit", "factor"}`; filled by `export_tflite`.
        held_out: metrics on the held-out images.
        held_out_source: where those images came from.
        probes: metrics on the out-of-distribution probes.
        probe_names: the probes, in order.
        probe_errors: max abs error per probe, `{name: error}`.
        thresholds: the limits enforced.
        failures: the failed checks; empty when the model passed.
        hints: when a check failed, what the model's layers suggest trying (their
            `export_hint`); empty otherwise.
    """

    quantization: str
    model_name: str
    path: str | None = None
    size_bytes: int = 0
    input: dict = dataclasses.field(default_factory=dict)
    outputs: list = dataclasses.field(default_factory=list)
    op_counts: dict = dataclasses.field(default_factory=dict)
    custom_ops: list = dataclasses.field(default_factory=list)
    xnnpack_partitions: int = 0
    xnnpack_error: str | None = None
    undelegated_ops: list = dataclasses.field(default_factory=list)
    float_ops: list = dataclasses.field(default_factory=list)
    float_allowlist: dict = dataclasses.field(default_factory=dict)
    inference_forms: list = dataclasses.field(default_factory=list)
    widened_ranges: list = dataclasses.field(default_factory=list)
    held_out: ComparisonMetrics | None = None
    held_out_source: str = ""
    probes: ComparisonMetrics | None = None
    probe_names: list = dataclasses.field(default_factory=list)
    probe_errors: dict = dataclasses.field(default_factory=dict)
    thresholds: VerificationThresholds | None = None
    failures: list = dataclasses.field(default_factory=list)
    hints: list = dataclasses.field(default_factory=list)

    def summary(self):
        """A few lines for people: the figures that decide whether the export is usable."""
        lines = [
            f"{self.quantization}: {'PASSED' if self.passed else 'FAILED'}, "
            f"{self.size_bytes / 1024:.1f} KiB, {sum(self.op_counts.values())} ops, "
            f"{self.xnnpack_partitions} XNNPACK partition(s)"
        ]
        for label, metrics in (("held-out", self.held_out), ("probes", self.probes)):
            if metrics is not None:
                top1 = "n/a" if metrics.top1_agreement is None else f"{metrics.top1_agreement:.3f}"
                lines.append(
                    f"  {label} ({metrics.samples}): max abs err {metrics.max_abs_error:.3g}, "
                    f"rel err {metrics.relative_error:.3g}, top-1 agreement {top1}"
                )
                per_image = metrics.image_error_summary()
                if per_image:
                    lines.append(f"    {per_image}")
        if self.undelegated_ops:
            lines.append(f"  outside XNNPACK: {', '.join(self.undelegated_ops)}")
        floats = [f"{f['op']} ({f['layer']})" for f in self.float_ops]
        if floats:
            lines.append(f"  float ops: {', '.join(floats)}")
        if self.widened_ranges:
            widened = [f"{w['op']} ({w['layer']}) x{w['factor']:.3g}" for w in self.widened_ranges]
            lines.append(f"  int8 ranges widened for XNNPACK: {', '.join(widened)}")
        lines.extend(f"  FAILED: {failure}" for failure in self.failures)
        lines.extend(f"  hint: {hint}" for hint in self.hints)
        return "\n".join(lines)


# --- the graph -------------------------------------------------------------------------


def flatbuffer_ops(tflite_bytes):
    """The op of every operator in every subgraph of a `.tflite`, read from the flatbuffer.

    Returns:
        `(op_counts, custom_ops)`: `{builtin name: count}`, and the sorted custom op codes
        (Flex ops are custom ops named `Flex...`).
    """
    from ai_edge_litert import schema_py_generated as schema

    names = builtin_names()
    model = schema.Model.GetRootAs(tflite_bytes, 0)
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema.BuiltinOperator.CUSTOM:
            custom = code.CustomCode()
            codes.append(("custom", custom.decode() if custom else "?"))
        else:
            codes.append(("builtin", names.get(builtin, f"BUILTIN_{builtin}")))
    counts, custom_ops = {}, set()
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for o in range(subgraph.OperatorsLength()):
            kind, name = codes[subgraph.Operators(o).OpcodeIndex()]
            if kind == "custom":
                custom_ops.add(name)
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items())), sorted(custom_ops)


def attribute_layer(tensor_name, known_layers):
    """The Keras layer a TFLite tensor comes from, or `None`.

    The first of a fused name's parts (`a/b/op;a/b/other`) is a TF name path; the deepest
    segment equal to a known layer name, or to one followed by TF's `_<n>` uniquifying
    suffix, names the layer.
    """
    known = set(known_layers)
    segments = tensor_name.split(";")[0].split(":")[0].split("/")[:-1]
    for segment in reversed(segments):
        if segment in known:
            return segment
        stem, _, suffix = segment.rpartition("_")
        if suffix.isdigit() and stem in known:
            return stem
    return None


def _is_float(dtype):
    return np.issubdtype(np.dtype(dtype), np.floating)


def _per_channel(shape):
    return int(np.count_nonzero(np.asarray(shape[1:]) > 1)) <= 1


class _Graph:
    """The nodes of a prepared interpreter, with the XNNPACK partitions resolved."""

    def __init__(self, interpreter, known_layers):
        self.interpreter = interpreter
        nodes = interpreter._get_ops_details()  # noqa: SLF001 (see module docstring)
        self.nodes = [n for n in nodes if n["op_name"] != "DELEGATE"]
        self.delegates = [n for n in nodes if n["op_name"] == "DELEGATE"]
        self.producer, self.consumers = {}, {}
        for node in self.nodes:
            for t in node["outputs"]:
                self.producer[int(t)] = node["index"]
            for t in node["inputs"]:
                self.consumers.setdefault(int(t), []).append(node["index"])
        self.by_index = {n["index"]: n for n in self.nodes}
        self.known_layers = known_layers

    def tensor(self, index):
        return self.interpreter._get_tensor_details(int(index), 0)  # noqa: SLF001

    def _own_layer(self, index):
        node = self.by_index[index]
        if not len(node["outputs"]):
            return None
        return attribute_layer(self.tensor(node["outputs"][0])["name"], self.known_layers)

    def layer_of(self, node):
        """The Keras layer of a node; for nodes whose tensor names carry none (the converter's
        QUANTIZE / DEQUANTIZE), the layer of a neighbouring node."""
        layer = self._own_layer(node["index"])
        if layer is not None:
            return layer
        neighbours = [self.producer.get(int(t)) for t in node["inputs"] if t >= 0]
        neighbours += [c for t in node["outputs"] for c in self.consumers.get(int(t), [])]
        for index in neighbours:
            if index is not None and (layer := self._own_layer(index)) is not None:
                return layer
        return None

    def describe(self, node):
        layer = self.layer_of(node)
        return f"{node['op_name']} ({layer})" if layer else node["op_name"]

    def scale_problems(self, node):
        """The XNNPACK scale limits an int8 ADD/SUB/MUL node breaks, as text (`[]`: none)."""
        if node["op_name"] not in ("ADD", "SUB", "MUL") or len(node["inputs"]) != 2:
            return []
        details = [self.tensor(t) for t in [*node["inputs"], *node["outputs"][:1]]]
        scales = [d["quantization_parameters"]["scales"] for d in details]
        if any(d["dtype"] != np.int8 for d in details) or any(len(s) != 1 for s in scales):
            return []
        return scale_ratio_problems(node["op_name"], [float(s[0]) for s in scales[:2]],
                                    float(scales[2][0]))  # fmt: skip

    def undelegated(self, inside):
        """The nodes outside XNNPACK, as `"OP (layer)"` with any scale limit they break."""
        found = []
        for node in self.nodes:
            if node["index"] in inside:
                continue
            problems = self.scale_problems(node)
            suffix = f" [{'; '.join(problems)}]" if problems else ""
            found.append(self.describe(node) + suffix)
        return found

    def delegated(self):
        """Indices of the nodes inside some XNNPACK partition."""
        inside = set()
        for delegate in self.delegates:
            stop = {int(t) for t in delegate["inputs"]}
            stack = [int(t) for t in delegate["outputs"]]
            while stack:
                node = self.producer.get(stack.pop())
                if node is None or node in inside:
                    continue
                inside.add(node)
                stack.extend(
                    int(t) for t in self.by_index[node]["inputs"] if t >= 0 and int(t) not in stop
                )
        return inside

    def float_ops(self, allowlist):
        """Each node touching a float tensor, with whether the allow-list covers it."""
        is_float = {
            n["index"]: any(
                _is_float(t) for t in list(n["operand_types"]) + list(n["result_types"])
            )
            for n in self.nodes
        }
        core = set()
        for node in self.nodes:
            if is_float[node["index"]]:
                layer = self.layer_of(node)
                if layer in allowlist and node["op_name"] in allowlist[layer]:
                    core.add(node["index"])
        allowed = set(core)
        for node in self.nodes:
            index = node["index"]
            if not is_float[index] or index in core:
                continue
            if node["op_name"] == "DEQUANTIZE":
                users = [c for t in node["outputs"] for c in self.consumers.get(int(t), [])]
                if users and all(u in core for u in users):
                    allowed.add(index)
            elif node["op_name"] == "QUANTIZE":
                makers = [self.producer.get(int(t)) for t in node["inputs"] if t >= 0]
                if makers and all(m in core for m in makers):
                    allowed.add(index)
        found = []
        for node in self.nodes:
            index = node["index"]
            if not is_float[index]:
                continue
            shapes = [list(map(int, self.tensor(t)["shape"])) for t in node["outputs"]]
            float_outputs = [
                s
                for t, s in zip(node["outputs"], shapes, strict=True)
                if _is_float(self.tensor(t)["dtype"])
            ]
            per_channel = all(_per_channel(s) for s in float_outputs)
            found.append(
                {
                    "op": node["op_name"],
                    "layer": self.layer_of(node),
                    "shape": shapes[0] if shapes else [],
                    "declared": index in allowed,
                    "per_channel": per_channel,
                    "allowed": index in allowed and per_channel,
                }
            )
        return found


# --- running it --------------------------------------------------------------------------


def _quantize(x, details):
    scale, zero_point = details["quantization"]
    dtype = np.dtype(details["dtype"])
    if not np.issubdtype(dtype, np.integer):
        return x.astype(dtype)
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)


def _dequantize(q, details):
    scale, zero_point = details["quantization"]
    if np.issubdtype(np.asarray(q).dtype, np.integer) and scale:
        return ((q.astype("float32") - zero_point) * scale).astype("float32")
    return np.asarray(q, "float32")


def _io_details(details):
    scale, zero_point = details["quantization"]
    return {
        "name": details["name"],
        "shape": [int(d) for d in details["shape"]],
        "dtype": np.dtype(details["dtype"]).name,
        "scale": float(scale),
        "zero_point": int(zero_point),
    }


def _signature_io(interpreter):
    """`(runner, input name, input details, [(output name, details), ...])` in model order."""
    signatures = interpreter.get_signature_list()
    if len(signatures) != 1:
        raise ValueError(
            f"Expected a .tflite with one signature (as export_tflite writes), found "
            f"{sorted(signatures)}."
        )
    runner = interpreter.get_signature_runner(next(iter(signatures)))
    inputs = runner.get_input_details()
    if len(inputs) != 1:
        raise ValueError(f"Expected a .tflite with one image input, found inputs {sorted(inputs)}.")
    ((input_name, input_details),) = inputs.items()
    outputs = runner.get_output_details()
    return runner, input_name, input_details, [(n, outputs[n]) for n in output_order(outputs)]


def run_tflite(interpreter, images):
    """Runs a prepared interpreter on `images` one at a time; returns float32 output arrays."""
    runner, input_name, input_details, outputs = _signature_io(interpreter)
    results = []
    for image in images:
        got = runner(**{input_name: _quantize(image[None], input_details)})
        results.append([_dequantize(got[name], details) for name, details in outputs])
    return [np.concatenate(parts) for parts in zip(*results, strict=True)]


# bench.py still imports the old private name; removed once it uses make_interpreter.
_interpreter = make_interpreter


# --- the checks --------------------------------------------------------------------------


def _check_metrics(failures, label, metrics, max_rel, min_top1, max_abs=None):
    if metrics.nonfinite_outputs:
        failures.append(f"{metrics.nonfinite_outputs} NaN/infinite TFLite outputs on {label}")
    if max_rel is not None and not metrics.relative_error <= max_rel:
        per_image = metrics.image_error_summary()
        failures.append(
            f"relative error on {label} {metrics.relative_error:.3g} > {max_rel:.3g} "
            f"(max abs error {metrics.max_abs_error:.3g}"
            + (f"; {per_image})" if per_image else ")")
        )
    if max_abs is not None and not metrics.max_abs_error <= max_abs:
        failures.append(f"max abs error on {label} {metrics.max_abs_error:.3g} > {max_abs:.3g}")
    if min_top1 is not None and metrics.top1_agreement is not None:
        if metrics.top1_agreement < min_top1:
            failures.append(
                f"top-1 agreement on {label} {metrics.top1_agreement:.3f} < {min_top1:.3f}"
            )


def resolve_thresholds(quantization, thresholds):
    """`thresholds` (None, a dict of fields, or a `VerificationThresholds`) made complete."""
    if thresholds is None:
        return DEFAULT_THRESHOLDS[quantization]
    if isinstance(thresholds, VerificationThresholds):
        return thresholds
    if isinstance(thresholds, dict):
        fields = {f.name for f in dataclasses.fields(VerificationThresholds)}
        unknown = sorted(set(thresholds) - fields)
        if unknown:
            raise ValueError(f"Unknown thresholds {unknown}; valid names are {sorted(fields)}.")
        return dataclasses.replace(DEFAULT_THRESHOLDS[quantization], **thresholds)
    raise ValueError(
        f"thresholds must be a VerificationThresholds or a dict of its fields, got {thresholds!r}."
    )


def run_verification(
    tflite_bytes,
    model,
    quantization,
    spec,
    held_out,
    held_out_source,
    data_range,
    *,
    export_model,
    inference_forms,
    float_allowlist,
    thresholds=None,
    probes=True,
    num_threads=2,
    seed=0,
    widened_ranges=(),
):
    """The checks behind `verify_tflite`, on prepared inputs; returns the report (never raises
    `ExportVerificationError`). `widened_ranges` are the conversion's (`fit_xnnpack_ranges`),
    recorded with the layer each tensor belongs to."""
    thresholds = resolve_thresholds(quantization, thresholds)
    known_layers = layer_names(export_model)
    report = VerificationReport(
        quantization=quantization,
        model_name=model.name,
        size_bytes=len(tflite_bytes),
        float_allowlist={k: list(v) for k, v in float_allowlist.items()},
        inference_forms=list(inference_forms),
        widened_ranges=[
            {**w, "layer": attribute_layer(w["tensor"], known_layers)} for w in widened_ranges
        ],
        held_out_source=held_out_source,
        thresholds=thresholds,
    )
    failures = report.failures
    report.op_counts, report.custom_ops = flatbuffer_ops(tflite_bytes)
    flex = [op for op in report.custom_ops if op.startswith("Flex")]
    if flex:
        failures.append(f"Flex (TensorFlow) ops {flex}: not builtin, phones cannot run them")
    if set(report.custom_ops) - set(flex):
        failures.append(f"custom ops {sorted(set(report.custom_ops) - set(flex))}")
    if failures:
        return report  # the interpreter cannot even load unresolved custom ops

    interpreter, report.xnnpack_error = make_interpreter(tflite_bytes, num_threads)
    if report.xnnpack_error:
        failures.append(f"XNNPACK could not prepare the model: {report.xnnpack_error}")
    graph = _Graph(interpreter, known_layers)
    report.xnnpack_partitions = len(graph.delegates)
    if not report.xnnpack_error:
        report.undelegated_ops = graph.undelegated(graph.delegated())
        if (
            thresholds.max_partitions is not None
            and report.xnnpack_partitions > thresholds.max_partitions
        ):
            failures.append(
                f"{report.xnnpack_partitions} XNNPACK partitions > {thresholds.max_partitions} "
                f"(outside XNNPACK: {', '.join(report.undelegated_ops)})"
            )
        elif (
            thresholds.max_undelegated_ops is not None
            and len(report.undelegated_ops) > thresholds.max_undelegated_ops
        ):
            failures.append(
                f"{len(report.undelegated_ops)} ops outside XNNPACK > "
                f"{thresholds.max_undelegated_ops}: {', '.join(report.undelegated_ops)}"
            )

    _, _, input_details, outputs = _signature_io(interpreter)
    report.input = _io_details(input_details)
    report.outputs = [_io_details(details) for _, details in outputs]
    if tuple(report.input["shape"][1:]) != spec.shape:
        failures.append(
            f"the .tflite takes images of shape {report.input['shape']}, the Keras model "
            f"{list(spec.batch_shape(None))}"
        )
        return report
    if quantization == "int8":
        for io in [report.input, *report.outputs]:
            if io["dtype"] != "int8":
                failures.append(f"full int8 model has a {io['dtype']} input/output {io['name']!r}")
        report.float_ops = graph.float_ops(float_allowlist)
        offending = [
            f"{f['op']} ({f['layer']}{'' if f['per_channel'] else ', not per-channel'})"
            for f in report.float_ops
            if not f["allowed"]
        ]
        if offending:
            failures.append(
                f"float ops in the full int8 graph outside a declared per-channel gate path: "
                f"{', '.join(offending)}"
            )

    t = thresholds
    sets = [("held-out images", held_out, t.max_relative_error, t.min_top1_agreement)]
    if probes:
        report.probe_names, probe = probe_images(spec, *data_range, seed=seed)
        sets.append(
            (
                "out-of-distribution probes",
                probe,
                t.max_probe_relative_error,
                t.min_probe_top1_agreement,
            )
        )
    for label, images, max_rel, min_top1 in sets:
        want = keras_outputs(model, images)
        if any(not np.all(np.isfinite(w)) for w in want):
            failures.append(f"the Keras model itself gives NaN/infinite outputs on {label}")
        try:
            got = run_tflite(interpreter, images)
        except RuntimeError as error:
            failures.append(
                f"the LiteRT interpreter failed on {label}: {' '.join(str(error).split())}"
            )
            break
        metrics = compare_outputs(got, want, [quantized_range(o) for o in report.outputs])
        if label.startswith("held-out"):
            report.held_out = metrics
        else:
            report.probes = metrics
            report.probe_errors = {
                name: max(
                    float(np.max(np.abs(g[i] - w[i]))) for g, w in zip(got, want, strict=True)
                )
                for i, name in enumerate(report.probe_names)
            }
        _check_metrics(
            failures,
            label,
            metrics,
            max_rel,
            min_top1,
            t.max_abs_error if label.startswith("held") else None,
        )
    if failures:
        report.hints = export_hints(model, quantization)
        held, max_rel = report.held_out, thresholds.max_relative_error
        if (
            held is not None
            and held.saturated_images
            and max_rel is not None
            and not held.relative_error <= max_rel  # the held-out relative-error check failed
        ):
            report.hints.append(
                f"{held.saturated_images} of {held.samples} held-out images drive the "
                "model's output beyond the int8 range the calibration images set (relative "
                f"error {held.clipped_relative_error:.3g} without that clipping): calibrate "
                "on more images (num_calibration_samples; the CLI's --num-calibration), or on "
                "images like these"
            )
    return report


def verify_tflite(
    tflite,
    model,
    quantization,
    validation_data=None,
    *,
    image_size=None,
    thresholds=None,
    probes=True,
    data_range=None,
    max_validation_samples=256,
    num_threads=2,
    float_allowlist=None,
    enforce=True,
    seed=0,
):
    """Checks that a `.tflite` computes what the Keras `model` computes, and runs on XNNPACK.

    See the module docstring for what is measured. `export_tflite` calls this after every
    conversion; call it yourself on a `.tflite` made elsewhere. The Keras side is always
    the ORIGINAL model (not its inference forms), in inference mode.

    Args:
        tflite: the flatbuffer, as `bytes` or a path.
        model: the Keras model it was converted from.
        quantization: the format it was converted to, one of `QUANTIZATIONS` (selects the
            default thresholds and the int8 checks).
        validation_data: held-out images (array, dataset, ...; see
            `keras_chanattn.images`), not used for calibration. Defaults to `None`:
            smooth random images in the data range, reported as synthetic.
        image_size: `(height, width)` if the model's input leaves them unknown.
        thresholds: a `VerificationThresholds`, or a dict of fields replacing the format's
            defaults (`DEFAULT_THRESHOLDS`). Defaults to `None`.
        probes: also compare on out-of-distribution probes. Defaults to `True`.
        data_range: `(low, high)` pixel range of the probes. Defaults to the range of the
            validation images, else `(0, 1)`.
        max_validation_samples: use at most this many held-out images. Defaults to `256`.
        num_threads: interpreter threads. Defaults to `2`.
        float_allowlist: `{layer name: [op, ...]}`, the ops allowed in float in full int8.
            Defaults to `None`: what the layers declare in `export_float_ops`.
        enforce: raise on a failed check; with `False` the report lists the failures and is
            returned. Defaults to `True`.
        seed: seed of the synthetic images and probes. Defaults to `0`.

    Returns:
        A `VerificationReport`.

    Raises:
        ExportVerificationError: a check failed (with `enforce`); `.report` has the figures.
        ValueError: bad arguments (unknown format, images of the wrong shape...).

    Example:

    >>> report = verify_tflite("model_int8.tflite", model, "int8", validation_images)
    >>> report.held_out.top1_agreement, report.xnnpack_partitions
    (0.996, 1)
    """
    check_quantization(quantization)
    thresholds = resolve_thresholds(quantization, thresholds)
    spec = image_input_spec(model, image_size)
    path = None
    if isinstance(tflite, (str, os.PathLike)):
        path = os.fspath(tflite)
        with open(path, "rb") as f:
            tflite = f.read()
    held_out = as_images(validation_data, spec, "validation_data", max_validation_samples)
    data_range = data_range or value_range(held_out)
    source = "validation_data"
    if held_out is None:
        held_out = synthetic_images(spec, SYNTHETIC_SAMPLES, *data_range, seed=seed)
        source = "synthetic (no validation_data given)"
    export_model, forms = inference_model(model)
    report = run_verification(
        tflite, model, quantization, spec, held_out, source, data_range,
        export_model=export_model, inference_forms=forms,
        float_allowlist=(
            declared_float_ops(export_model) if float_allowlist is None else float_allowlist
        ),
        thresholds=thresholds,
        probes=probes, num_threads=num_threads, seed=seed,
    )  # fmt: skip
    report.path = path
    if enforce and report.failures:
        raise ExportVerificationError(report)
    return report
