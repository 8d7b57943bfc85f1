"""Verification of a `.tflite` against the Keras model it came from, reported and enforced.

`verify_tflite` runs the flatbuffer in the LiteRT interpreter (`ai_edge_litert`, with its
default XNNPACK delegate, as a phone would) and the ORIGINAL Keras model side by side on
held-out images and on out-of-distribution probes (noise, constant and high-contrast images
within the data range), and inspects the graph:

- the op list, read from the flatbuffer: Flex (TensorFlow) and custom ops are failures;
- the XNNPACK partitions (`graph.PartitionGraph`): the ops left to LiteRT's own kernels are
  reported as `undelegated_ops`, each with its Keras layer, and for an int8 ADD, SUB or MUL
  the scale limits of XNNPACK's kernel it breaks (`export.ranges`);
- the accelerators (`accelerators`), reported, not enforced: whether LiteRT's v2 API
  (`CompiledModel` on its CPU accelerator) runs every op accelerated, and which ops the GPU
  delegate would refuse, with the reason and the Keras layer;
- in full int8, the float ops: with int8 input and output there must be no float op at all,
  except the per-channel gate path a layer declares with a class attribute
  `export_float_ops = ("SQRT", ...)` (TFLite builtin op names): those ops, inside that layer
  only, and the DEQUANTIZE / QUANTIZE pairs around them, as long as every float tensor they
  produce is per-channel (at most one dimension other than the batch above 1);
- numerics (`metrics.compare_outputs`): max abs error, relative error
  (`max abs error / max |Keras output|`), top-1 agreement and non-finite outputs, checked
  against the format's `VerificationThresholds` (`checks`).
"""

import os

import numpy as np

from keras_chanattn.backend import require_tensorflow
from keras_chanattn.export.accelerators import cpu_fully_accelerated, gpu_compatibility
from keras_chanattn.export.checks import (
    DEFAULT_THRESHOLDS,
    QUANTIZATIONS,
    SYNTHETIC_SAMPLES,
    VerificationThresholds,
    calibration_hint,
    check_quantization,
    custom_op_failures,
    default_thresholds,
    int8_failures,
    metric_failures,
    partition_failures,
    resolve_thresholds,
)
from keras_chanattn.export.errors import ExportVerificationError
from keras_chanattn.export.graph import (
    PartitionGraph,
    attribute_layer,
    flatbuffer_ops,
    operator_outputs,
)
from keras_chanattn.export.inference import export_hints, layer_names
from keras_chanattn.export.litert import io_details, make_interpreter, run_tflite, signature_io
from keras_chanattn.export.metrics import ComparisonMetrics, compare_outputs, quantized_range
from keras_chanattn.export.prepared import PreparedModel
from keras_chanattn.export.report import VerificationReport
from keras_chanattn.export.saved_model import keras_outputs
from keras_chanattn.images import (
    as_images,
    image_input_spec,
    probe_images,
    synthetic_images,
    value_range,
)

# What other modules and tests import from here.
__all__ = [
    "DEFAULT_THRESHOLDS",
    "QUANTIZATIONS",
    "SYNTHETIC_SAMPLES",
    "ComparisonMetrics",
    "VerificationReport",
    "VerificationThresholds",
    "attribute_layer",
    "check_quantization",
    "compare_outputs",
    "default_thresholds",
    "flatbuffer_ops",
    "held_out_images",
    "quantized_range",
    "resolve_thresholds",
    "run_tflite",
    "run_verification",
    "verify_tflite",
]


def held_out_images(images, spec, data_range, seed):
    """`(images, source)`: the held-out `images`, or smooth random ones in `data_range`
    (reported as synthetic) when there are none."""
    if images is not None:
        return images, "validation_data"
    synthetic = synthetic_images(spec, SYNTHETIC_SAMPLES, *data_range, seed=seed)
    return synthetic, "synthetic (no validation_data given)"


def _check_graph(report, graph, thresholds):
    """XNNPACK took the model, in few enough partitions."""
    report.xnnpack_partitions = len(graph.delegates)
    if report.xnnpack_error:
        report.failures.append(f"XNNPACK could not prepare the model: {report.xnnpack_error}")
        return
    report.undelegated_ops = graph.undelegated()
    report.failures += partition_failures(
        report.xnnpack_partitions, report.undelegated_ops, thresholds
    )


def _check_accelerators(report, tflite_bytes, known_layers):
    """LiteRT's v2 CPU accelerator and the GPU delegate (`accelerators`): reported, not
    enforced. Each op the GPU delegate refuses is named with its Keras layer."""
    report.cpu_fully_accelerated, report.cpu_accelerator_error = cpu_fully_accelerated(tflite_bytes)
    gpu = gpu_compatibility(tflite_bytes)
    outputs = operator_outputs(tflite_bytes)
    for refused in gpu["refused"]:
        names = outputs[refused["index"]][1] if refused["subgraph"] == 0 else []
        refused["layer"] = attribute_layer(names[0], known_layers) if names else None
    report.gpu_delegate = gpu


def _check_io(report, interpreter, graph, spec, float_allowlist):
    """The input takes the Keras model's images; in int8, int8 I/O and only declared float
    ops. Returns whether the images can be compared at all."""
    _, _, input_details, outputs = signature_io(interpreter)
    report.input = io_details(input_details)
    report.outputs = [io_details(details) for _, details in outputs]
    if tuple(report.input["shape"][1:]) != spec.shape:
        report.failures.append(
            f"the .tflite takes images of shape {report.input['shape']}, the Keras model "
            f"{list(spec.batch_shape(None))}"
        )
        return False
    if report.quantization == "int8":
        report.float_ops = graph.float_ops(float_allowlist)
        report.failures += int8_failures([report.input, *report.outputs], report.float_ops)
    return True


def _image_sets(report, held_out, thresholds, probes, spec, data_range, seed):
    """`[(label, images, max relative error, min top-1 agreement, max abs error, is probe)]`."""
    t = thresholds
    sets = [
        ("held-out images", held_out, t.max_relative_error, t.min_top1_agreement,
         t.max_abs_error, False),
    ]  # fmt: skip
    if probes:
        report.probe_names, probe = probe_images(spec, *data_range, seed=seed)
        sets.append(
            ("out-of-distribution probes", probe, t.max_probe_relative_error,
             t.min_probe_top1_agreement, None, True)
        )  # fmt: skip
    return sets


def _compare(report, reference, interpreter, image_sets):
    """Keras (`reference(images)`, its outputs) against TFLite on each image set: the metrics
    and the limits they break."""
    output_ranges = [quantized_range(o) for o in report.outputs]
    for label, images, max_rel, min_top1, max_abs, is_probe in image_sets:
        want = reference(images)
        if any(not np.all(np.isfinite(w)) for w in want):
            report.failures.append(f"the Keras model itself gives NaN/infinite outputs on {label}")
        try:
            got = run_tflite(interpreter, images)
        except RuntimeError as error:
            report.failures.append(
                f"the LiteRT interpreter failed on {label}: {' '.join(str(error).split())}"
            )
            return
        metrics = compare_outputs(got, want, output_ranges)
        if is_probe:
            report.probes = metrics
            report.probe_errors = {
                name: max(
                    float(np.max(np.abs(g[i] - w[i]))) for g, w in zip(got, want, strict=True)
                )
                for i, name in enumerate(report.probe_names)
            }
        else:
            report.held_out = metrics
        report.failures += metric_failures(label, metrics, max_rel, min_top1, max_abs)


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
    reference=None,
    notes=None,
):
    """The checks behind `verify_tflite`, on prepared inputs; returns the report (never raises
    `ExportVerificationError`). `widened_ranges` are the conversion's (`fit_xnnpack_ranges`),
    recorded with the layer each tensor belongs to. `reference(images)` gives the Keras
    outputs: `keras_outputs` of `model` when `None` (a `PreparedModel.keras_outputs` shares
    them between formats). `notes`: other report fields to set, `{name: value}` (the
    conversion's `output_margin`, a cast's `cast_from`...)."""
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
        **(notes or {}),
    )
    report.op_counts, report.custom_ops = flatbuffer_ops(tflite_bytes)
    report.failures += custom_op_failures(report.custom_ops)
    if report.failures:
        return report  # the interpreter cannot even load unresolved custom ops

    interpreter, report.xnnpack_error = make_interpreter(tflite_bytes, num_threads)
    graph = PartitionGraph(interpreter, known_layers)
    _check_graph(report, graph, thresholds)
    _check_accelerators(report, tflite_bytes, known_layers)
    if not _check_io(report, interpreter, graph, spec, float_allowlist):
        return report
    image_sets = _image_sets(report, held_out, thresholds, probes, spec, data_range, seed)
    reference = reference or (lambda images: keras_outputs(model, images))
    _compare(report, reference, interpreter, image_sets)
    if report.failures:
        report.hints = export_hints(model, quantization)
        hint = calibration_hint(report.held_out, report.failures)
        if hint:
            report.hints.append(hint)
    return report


def _flatbuffer(tflite):
    """`(bytes, path)` of a flatbuffer given as bytes (path `None`) or as a path."""
    if not isinstance(tflite, (str, os.PathLike)):
        return tflite, None
    path = os.fspath(tflite)
    with open(path, "rb") as f:
        return f.read(), path


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

    The checks: the module docstring; `export_tflite` runs them after every conversion. The
    Keras side is the ORIGINAL model (not its inference forms) in inference mode, in float32
    under a mixed precision policy (`PreparedModel.float_model`); a file without the
    model's softmax head (full int8 leaves it to the app) is compared with its logits.

    Args:
        tflite: the flatbuffer, as `bytes` or a path.
        model: the Keras model it was converted from.
        quantization: the format it was converted to, one of `QUANTIZATIONS` (selects the
            default thresholds and the int8 checks).
        validation_data: held-out images (array, dataset, ...; see `keras_chanattn.images`),
            not used for calibration. Defaults to `None`: smooth random images in the data
            range, reported as synthetic.
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
    require_tensorflow("TFLite verification (verify_tflite)")
    thresholds = resolve_thresholds(quantization, thresholds)
    spec = image_input_spec(model, image_size)
    tflite, path = _flatbuffer(tflite)
    held_out = as_images(validation_data, spec, "validation_data", max_validation_samples)
    data_range = data_range or value_range(held_out)
    held_out, source = held_out_images(held_out, spec, data_range, seed)
    with PreparedModel(model) as prepared:
        if float_allowlist is None:
            float_allowlist = prepared.float_allowlist
        reference, softmax_head = prepared.reference_for(tflite)
        report = run_verification(
            tflite, model, quantization, spec, held_out, source, data_range,
            export_model=prepared.export_model, inference_forms=prepared.inference_forms,
            float_allowlist=float_allowlist, thresholds=thresholds, probes=probes,
            num_threads=num_threads, seed=seed, reference=reference,
            notes=prepared.cast_notes(held_out) | {"softmax_head": softmax_head},
        )  # fmt: skip
    report.path = path
    if enforce and report.failures:
        raise ExportVerificationError(report)
    return report
