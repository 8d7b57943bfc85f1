"""`VerificationReport`: what `verify_tflite` measured and checked, for people and as JSON."""

import dataclasses

from keras_chanattn.export.checks import VerificationThresholds
from keras_chanattn.export.errors import CheckReport
from keras_chanattn.export.metrics import ComparisonMetrics


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
        cpu_fully_accelerated: whether LiteRT's v2 API (`CompiledModel` on its CPU
            accelerator) runs every op on the accelerator; `None` when it could not compile
            the model (`cpu_accelerator_error` says why). The ops it leaves are
            `undelegated_ops` (the same XNNPACK).
        cpu_accelerator_error: why the v2 API could not compile the model, or `None`.
        gpu_delegate: the GPU delegate's verdict (`accelerators.gpu_compatibility`):
            `{"checked", "accepts_all", "refused": [{"subgraph", "index", "op", "layer",
            "reason"}], "note"}`, `checked` saying by what: `"analyzer"` (TensorFlow's) or
            `"rules"` (the package's screen of the documented rules); not a failure, a report.
        softmax_head: what export did with a classifier's final softmax: `None` (no such
            head), `"kept"`, or `"left to the app"` (the file outputs the logits, compared
            with the Keras model's logits; apply softmax in the app).
        float_ops: in int8, each float op as `{"op", "layer", "shape", "declared",
            "per_channel", "allowed"}` (allowed = declared by its layer and per-channel).
        float_allowlist: `{layer: [op, ...]}` the layers declared as kept in float.
        inference_forms: layers replaced by their inference forms before conversion.
        widened_ranges: in int8, the calibrated ranges widened to XNNPACK's scale limits
            before quantisation (`keras_chanattn.export.ranges`), as `{"tensor", "layer",
            "op", "before", "limit", "factor"}`; filled by `export_tflite`.
        output_margin: in int8, the fraction the outputs' calibrated ranges were widened by
            (`export.ranges.widen_output_ranges`); `None` in the other formats.
        widened_outputs: in int8, each output widened, as `{"tensor", "calibrated",
            "widened"}` (`[low, high]` before and after).
        held_out: metrics on the held-out images; with an int8 output, the relative-error
            limit applies to its `checked_relative_error` (the output's clipping taken
            out), and `relative_error` keeps the raw worst error.
        held_out_source: where those images came from.
        probes: metrics on the out-of-distribution probes.
        probe_names: the probes, in order.
        probe_errors: max abs error per probe, `{name: error}`.
        thresholds: the limits enforced.
        failures: the failed checks; empty when the model passed.
        hints: when a check failed, what the model's layers suggest trying (their
            `export_hint`); empty otherwise.
        cast_from: the mixed precision policy (e.g. `"mixed_float16"`) the model was cast
            from to float32 for export, or `None`; the checks then compare with the float32
            copy (`PreparedModel.float_model`).
        cast_relative_difference: with `cast_from`, `max |model - float32 copy| / max
            |float32 copy|` on the held-out images: what the cast itself changed.
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
    cpu_fully_accelerated: bool | None = None
    cpu_accelerator_error: str | None = None
    gpu_delegate: dict = dataclasses.field(default_factory=dict)
    softmax_head: str | None = None
    float_ops: list = dataclasses.field(default_factory=list)
    float_allowlist: dict = dataclasses.field(default_factory=dict)
    inference_forms: list = dataclasses.field(default_factory=list)
    widened_ranges: list = dataclasses.field(default_factory=list)
    output_margin: float | None = None
    widened_outputs: list = dataclasses.field(default_factory=list)
    held_out: ComparisonMetrics | None = None
    held_out_source: str = ""
    probes: ComparisonMetrics | None = None
    probe_names: list = dataclasses.field(default_factory=list)
    probe_errors: dict = dataclasses.field(default_factory=dict)
    thresholds: VerificationThresholds | None = None
    failures: list = dataclasses.field(default_factory=list)
    hints: list = dataclasses.field(default_factory=list)
    cast_from: str | None = None
    cast_relative_difference: float | None = None

    def accelerator_summary(self):
        """One line: the v2 CPU accelerator's and the GPU delegate's verdicts."""
        cpu = {True: "fully accelerated", False: "NOT fully accelerated", None: "not compiled"}
        gpu = self.gpu_delegate or {}
        by = " (package's rules screen)" if gpu.get("checked") == "rules" else ""
        if not gpu.get("checked"):
            gpu_text = "GPU delegate not checked"
        elif gpu["accepts_all"]:
            gpu_text = f"GPU delegate takes every op{by}"
        else:
            refused = [f"{r['op']} ({r.get('layer')}): {r['reason']}" for r in gpu["refused"]]
            gpu_text = f"GPU delegate refuses{by} {'; '.join(refused)}"
        return f"CPU accelerator (v2): {cpu[self.cpu_fully_accelerated]}; {gpu_text}"

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
                    f"{metrics.error_figures()}, top-1 agreement {top1}"
                )
                per_image = metrics.image_error_summary()
                if per_image:
                    lines.append(f"    {per_image}")
        if self.undelegated_ops:
            lines.append(f"  outside XNNPACK: {', '.join(self.undelegated_ops)}")
        lines.append(f"  {self.accelerator_summary()}")
        if self.softmax_head == "left to the app":
            lines.append("  softmax head left to the app: the file outputs logits")
        floats = [f"{f['op']} ({f['layer']})" for f in self.float_ops]
        if floats:
            lines.append(f"  float ops: {', '.join(floats)}")
        if self.widened_ranges:
            widened = [f"{w['op']} ({w['layer']}) x{w['factor']:.3g}" for w in self.widened_ranges]
            lines.append(f"  int8 ranges widened for XNNPACK: {', '.join(widened)}")
        if self.widened_outputs:
            margin = f"{self.output_margin:.0%}"
            lines.append(f"  int8 output range widened by {margin} over the calibration's")
        if self.cast_from:
            lines.append(
                f"  exported from a float32 copy of the {self.cast_from} model (relative "
                f"difference {self.cast_relative_difference:.3g} on the held-out images)"
            )
        lines.extend(f"  FAILED: {failure}" for failure in self.failures)
        lines.extend(f"  hint: {hint}" for hint in self.hints)
        return "\n".join(lines)
