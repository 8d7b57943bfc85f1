"""The limits a `.tflite` must meet, and the checks that turn figures into failures."""

import dataclasses

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
    # int8 weights, activations quantised on the fly.
    "dynamic": VerificationThresholds(0.1, 0.98, 0.1),
    # Everything int8. The relative error is a maximum over images, so one image sets it;
    # top-1 agreement is the stricter check. Probes drive activations outside the
    # calibrated ranges, where int8 saturates by design, so their error is reported, not
    # enforced; NaNs and interpreter failures on them still fail, in every format.
    "int8": VerificationThresholds(0.2, 0.98, None),
}


def check_quantization(quantization):
    """`quantization` if it is one of `QUANTIZATIONS`; raises `ValueError` otherwise."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(
            f"Unknown TFLite format {quantization!r}; valid formats are {list(QUANTIZATIONS)}."
        )
    return quantization


def default_thresholds(quantization, **overrides):
    """The default `VerificationThresholds` of a format, with some fields replaced."""
    check_quantization(quantization)
    return dataclasses.replace(DEFAULT_THRESHOLDS[quantization], **overrides)


def resolve_thresholds(quantization, thresholds):
    """`thresholds` (None, a dict of fields, or a `VerificationThresholds`) made complete for
    `quantization`; raises `ValueError` for an unknown format or field."""
    check_quantization(quantization)
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


def custom_op_failures(custom_ops):
    """Flex (TensorFlow) and other custom ops: phones' builtin-only runtimes cannot run them."""
    flex = [op for op in custom_ops if op.startswith("Flex")]
    failures = []
    if flex:
        failures.append(f"Flex (TensorFlow) ops {flex}: not builtin, phones cannot run them")
    if set(custom_ops) - set(flex):
        failures.append(f"custom ops {sorted(set(custom_ops) - set(flex))}")
    return failures


def partition_failures(partitions, undelegated_ops, thresholds):
    """Too many XNNPACK partitions, else too many ops left outside XNNPACK."""
    outside = ", ".join(undelegated_ops)
    if thresholds.max_partitions is not None and partitions > thresholds.max_partitions:
        return [
            f"{partitions} XNNPACK partitions > {thresholds.max_partitions} "
            f"(outside XNNPACK: {outside})"
        ]
    limit = thresholds.max_undelegated_ops
    if limit is not None and len(undelegated_ops) > limit:
        return [f"{len(undelegated_ops)} ops outside XNNPACK > {limit}: {outside}"]
    return []


def int8_failures(ios, float_ops):
    """Full int8: a non-int8 input or output, or a float op the allow-list does not cover."""
    failures = [
        f"full int8 model has a {io['dtype']} input/output {io['name']!r}"
        for io in ios
        if io["dtype"] != "int8"
    ]
    offending = [
        f"{f['op']} ({f['layer']}{'' if f['per_channel'] else ', not per-channel'})"
        for f in float_ops
        if not f["allowed"]
    ]
    if offending:
        failures.append(
            "float ops in the full int8 graph outside a declared per-channel gate path: "
            + ", ".join(offending)
        )
    return failures


def check_output_margin(margin):
    """`margin` as a float if it is a finite number `>= 0`; raises `ValueError` otherwise."""
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin < 1e6:
        raise ValueError(
            f"`output_margin` must be a finite number >= 0 (the fraction to widen the int8 "
            f"outputs' calibrated ranges by, e.g. 0.1), got {margin!r}."
        )
    return float(margin)


def metric_failures(label, metrics, max_rel, min_top1, max_abs=None):
    """The limits a `ComparisonMetrics` on `label` (e.g. "held-out images") breaks.

    The relative-error limit applies to `metrics.checked_relative_error`: with a quantised
    output, the error once the output's clipping is taken out; top-1 agreement catches the
    clipping that matters.
    """
    failures = []
    if metrics.nonfinite_outputs:
        failures.append(f"{metrics.nonfinite_outputs} NaN/infinite TFLite outputs on {label}")
    checked = metrics.checked_relative_error
    if max_rel is not None and not checked <= max_rel:
        per_image = metrics.image_error_summary()
        clipped = (
            ""
            if metrics.clipped_relative_error is None
            else f" with the int8 output's clipping taken out ({metrics.relative_error:.3g} raw)"
        )
        failures.append(
            f"relative error on {label} {checked:.3g} > {max_rel:.3g}{clipped} "
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
    return failures


def calibration_hint(held_out, failures):
    """A hint to calibrate on more images when a held-out check failed (among `failures`)
    while some held-out images drove the int8 output beyond its range; `None` otherwise."""
    if (
        held_out is None
        or not held_out.saturated_images
        or not any("on held-out" in failure for failure in failures)
    ):
        return None
    return (
        f"{held_out.saturated_images} of {held_out.samples} held-out images drive the "
        "model's output beyond the int8 range the calibration images set (relative "
        f"error {held_out.relative_error:.3g} with that clipping, "
        f"{held_out.clipped_relative_error:.3g} without): calibrate on more images "
        "(num_calibration_samples; the CLI's --num-calibration), or on images like these, "
        "or widen the output range more (output_margin)"
    )
