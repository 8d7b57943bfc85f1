"""TFLite conversion (float32, float16, dynamic range, full int8), verified, written atomically.

The model goes through its inference forms (`inference_model`), a SavedModel with a static
batch of 1 in a temporary directory, and `tf.lite.TFLiteConverter.from_saved_model` with
builtin ops only, so an op with no TFLite builtin fails the conversion instead of becoming a
Flex op a phone cannot run. Keras' own `model.export(format="litert")` takes converter
options too, but writes the file in place and allows Flex ops by default, and cannot keep a
declared gate path in float; hence this module.

Formats:
- `"float32"`: no quantisation.
- `"float16"`: float16 weights, float32 compute (`supported_types = [tf.float16]`).
- `"dynamic"`: int8 weights, activations quantised on the fly (no calibration data).
- `"int8"`: full integer, int8 input and output, calibrated on `representative_data`
  (`TFLITE_BUILTINS_INT8`). Ops a layer declares in `export_float_ops` stay in float, inside
  that layer only (the converter's node deny-list), with DEQUANTIZE / QUANTIZE around them.
  Between calibration and quantisation, the ranges of small terms that XNNPACK's int8 ADD,
  SUB and MUL cannot take are widened (`keras_chanattn.export.ranges`; the report's
  `widened_ranges` lists them).
"""

import re

from keras_chanattn._compat.tf_converter import calibrate_only, quantize_calibrated
from keras_chanattn.backend import require_tensorflow
from keras_chanattn.export.checks import (
    check_output_margin,
    check_quantization,
    resolve_thresholds,
)
from keras_chanattn.export.errors import ConversionError, ExportVerificationError
from keras_chanattn.export.files import check_output_path, write_bytes, write_text
from keras_chanattn.export.graph import attribute_layer, operator_outputs
from keras_chanattn.export.inference import layer_names
from keras_chanattn.export.prepared import prepared_for
from keras_chanattn.export.ranges import OUTPUT_MARGIN, fit_xnnpack_ranges, widen_output_ranges
from keras_chanattn.export.verify import held_out_images, run_verification
from keras_chanattn.images import as_images, image_input_spec, value_range


def _float_nodes(calibrated, float_allowlist, known_layers):
    """Output tensor names, in a calibrated float model, of the ops to keep in float."""
    names = []
    for op, outputs in operator_outputs(calibrated):
        for name in outputs:
            layer = attribute_layer(name, known_layers)
            if layer in float_allowlist and op in float_allowlist[layer]:
                names.append(name)
    return names


def _converter(prepared, spec, quantization, calibration):
    """A builtin-ops-only converter of the prepared SavedModel, set up for `quantization`.

    The float formats share one converter (`PreparedModel.converter`), every option they
    read set here; full int8 gets its own, since calibration marks the converter it runs on.
    """
    import tensorflow as tf

    if quantization == "int8":
        # Without the softmax head: XNNPACK has no int8 SOFTMAX (`export.head`).
        saved_model = prepared.saved_model(spec, logits=prepared.has_softmax_head)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
        converter.representative_dataset = lambda: ([image[None]] for image in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        return converter
    converter = prepared.converter(spec)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.optimizations = [] if quantization == "float32" else [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16] if quantization == "float16" else []
    converter.representative_dataset = None
    converter.inference_input_type = tf.float32
    converter.inference_output_type = tf.float32
    return converter


def _convert_int8(converter, export_model, float_allowlist, output_margin):
    """Calibrates, widens the outputs' ranges by `output_margin` and the ranges XNNPACK's
    int8 kernels cannot take (`export.ranges`), then quantises with the declared float ops
    deny-listed.

    Returns:
        `(flatbuffer, notes)`: `notes` holds the report's `widened_ranges`,
        `widened_outputs` and `output_margin`.
    """
    calibrated = calibrate_only(converter)
    float_nodes = (
        _float_nodes(calibrated, float_allowlist, layer_names(export_model))
        if float_allowlist
        else []
    )
    calibrated, outputs = widen_output_ranges(calibrated, output_margin, float_nodes)
    calibrated, widened = fit_xnnpack_ranges(calibrated, float_nodes)
    notes = {"widened_ranges": widened, "widened_outputs": outputs, "output_margin": output_margin}
    return quantize_calibrated(converter, calibrated, float_nodes), notes


def _conversion_error(error, export_model, quantization):
    found = re.search(r"(?:TF Select|Custom) ops: ([^\n]+)", str(error))
    if found:
        message = f"ops with no TFLite builtin: {found.group(1).strip()}"
    else:
        message = " ".join(str(error).split())[:2000]
    return ConversionError(
        f"Converting model {export_model.name!r} to TFLite ({quantization}) failed: "
        f"{message}. Export allows TFLite builtin ops only (no Flex ops); such an op "
        "(or one without an int8 kernel, in int8) needs another formulation."
    )


def _convert(prepared, spec, quantization, calibration, output_margin):
    """`(flatbuffer, notes)` of the prepared inference form, from its batch-1 SavedModel
    (`PreparedModel.saved_model`); `notes`: what the int8 conversion widened
    (`_convert_int8`), `{}` in the other formats."""
    export_model = prepared.export_model
    converter = _converter(prepared, spec, quantization, calibration)
    try:
        if quantization == "int8":
            return _convert_int8(converter, export_model, prepared.float_allowlist, output_margin)
        return converter.convert(), {}
    except Exception as error:  # the converter raises several unrelated types
        raise _conversion_error(error, export_model, quantization) from error


def _calibration_images(quantization, representative_data, spec, limit):
    expected = f"(N, {spec.height}, {spec.width}, {spec.channels})"
    if quantization == "int8" and representative_data is None:
        raise ValueError(
            f"quantization='int8' needs representative_data: images of shape {expected} like "
            "those the model will see (a NumPy array, a tf.data.Dataset of images or (image, "
            "label) pairs, or a callable returning an iterable of batches), to calibrate the "
            "activation ranges. About 100 to 500 images are typical."
        )
    return as_images(representative_data, spec, "representative_data", limit)


def _output_paths(path, report_path, overwrite):
    """Both paths checked before any work (`files.check_output_path`)."""
    path = check_output_path(path, overwrite, "file")
    if report_path is not None:
        report_path = check_output_path(report_path, overwrite, "file")
    return path, report_path


def _images(quantization, representative_data, validation_data, spec, num_calibration,
            max_validation, seed):  # fmt: skip
    """`(calibration, held-out images, their source, data range)` for `export_tflite`."""
    calibration = _calibration_images(quantization, representative_data, spec, num_calibration)
    held_out = as_images(validation_data, spec, "validation_data", max_validation)
    data_range = value_range(held_out, calibration)
    held_out, source = held_out_images(held_out, spec, data_range, seed)
    return calibration, held_out, source, data_range


def _write_outputs(report, tflite_bytes, path, report_path, overwrite, enforce):
    """Writes the flatbuffer and the report unless a check failed under `enforce` (raises)."""
    if enforce and report.failures:
        raise ExportVerificationError(report)
    report.path = write_bytes(path, tflite_bytes, overwrite)
    if report_path is not None:
        write_text(report_path, report.to_json(), overwrite)
    return report


def convert_tflite(
    model,
    quantization="float32",
    representative_data=None,
    *,
    image_size=None,
    num_calibration_samples=200,
    prepared=None,
    output_margin=OUTPUT_MARGIN,
):
    """Converts `model` to a TFLite flatbuffer (no verification, nothing written).

    Args and errors as `export_tflite`. Prefer `export_tflite`, which also verifies.

    Returns:
        The flatbuffer, as `bytes`.
    """
    require_tensorflow("TFLite conversion (convert_tflite)")
    check_quantization(quantization)
    output_margin = check_output_margin(output_margin)
    spec = image_input_spec(model, image_size)
    calibration = _calibration_images(
        quantization, representative_data, spec, num_calibration_samples
    )
    with prepared_for(model, prepared) as prepared:
        return _convert(prepared, spec, quantization, calibration, output_margin)[0]


def export_tflite(
    model,
    path,
    quantization="float32",
    representative_data=None,
    validation_data=None,
    *,
    overwrite=False,
    image_size=None,
    num_calibration_samples=200,
    max_validation_samples=256,
    thresholds=None,
    probes=True,
    enforce=True,
    report_path=None,
    num_threads=2,
    seed=0,
    prepared=None,
    output_margin=OUTPUT_MARGIN,
):
    """Converts `model` (its inference forms first) to TFLite, verifies the result
    (`verify_tflite`'s checks) and writes it atomically; a failed check writes nothing.

    Args:
        model: a Keras model with one NHWC image input.
        path: the `.tflite` file to write.
        quantization: `"float32"`, `"float16"`, `"dynamic"` or `"int8"` (full integer, int8
            input and output). Defaults to `"float32"`.
        representative_data: calibration images, required for `"int8"`: a NumPy array
            `(N, H, W, C)`, an `(images, labels)` tuple, a `tf.data.Dataset` of images or
            `(image, label)` pairs, or a callable returning those. Defaults to `None`.
        validation_data: held-out images for the verification, in the same forms; keep
            them apart from the calibration images. Defaults to `None`: smooth random
            images in the calibration data's range, reported as synthetic.
        overwrite: replace an existing `path` and `report_path`. Defaults to `False`.
        image_size: `(height, width)` where the model leaves them unknown. Defaults to `None`.
        num_calibration_samples: calibrate on at most this many images. Defaults to `200`.
        max_validation_samples: verify on at most this many held-out images (`256`).
        thresholds: a `VerificationThresholds` or a dict of fields replacing the format's
            defaults (`keras_chanattn.export.DEFAULT_THRESHOLDS`). Defaults to `None`.
        probes: also verify on out-of-distribution probes. Defaults to `True`.
        enforce: raise on a failed check (and write nothing); with `False` the file is
            written and the report lists the failures. Defaults to `True`.
        report_path: also write the report as JSON there. Defaults to `None`.
        num_threads: threads of the verification interpreter. Defaults to `2`.
        seed: seed of the synthetic images and probes. Defaults to `0`.
        prepared: a `PreparedModel` of `model`, shared by its exports (one SavedModel for
            every format, the Keras outputs once). Defaults to `None`: one for this call.
        output_margin: in int8, widen the outputs' calibrated ranges by this fraction, so
            that outputs a little beyond the calibration images' do not clip (`0.1`).

    Returns:
        The `VerificationReport`, with `path` set.

    Raises:
        ValueError: bad format, thresholds, calibration data or a non-NHWC image input.
        FileExistsError: `path` (or `report_path`) exists and `overwrite` is false.
        ConversionError: the converter rejected the model (e.g. an op with no builtin).
        ExportVerificationError: a verification check failed; `.report` has the figures.
    """
    require_tensorflow("TFLite export (export_tflite)")
    thresholds = resolve_thresholds(quantization, thresholds)
    output_margin = check_output_margin(output_margin)
    path, report_path = _output_paths(path, report_path, overwrite)
    spec = image_input_spec(model, image_size)
    calibration, held_out, source, data_range = _images(
        quantization, representative_data, validation_data, spec, num_calibration_samples,
        max_validation_samples, seed,
    )  # fmt: skip
    with prepared_for(model, prepared) as prepared:
        tflite_bytes, notes = _convert(prepared, spec, quantization, calibration, output_margin)
        reference, notes["softmax_head"] = prepared.reference_for(tflite_bytes)
        report = run_verification(
            tflite_bytes, model, quantization, spec, held_out, source, data_range,
            export_model=prepared.export_model, inference_forms=prepared.inference_forms,
            float_allowlist=prepared.float_allowlist, thresholds=thresholds, probes=probes,
            num_threads=num_threads, seed=seed, widened_ranges=notes.pop("widened_ranges", ()),
            reference=reference, notes=notes | prepared.cast_notes(held_out),
        )  # fmt: skip
    return _write_outputs(report, tflite_bytes, path, report_path, overwrite, enforce)
