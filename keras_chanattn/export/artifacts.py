"""Several exports of one model into one directory, with a JSON report beside each artefact.

What the `chanattn export` command runs; the pipeline can call it too. For a model `stem`:
`<out>/<stem>_saved_model/` (+ `.json`), `<out>/<stem>_<format>.tflite` (+ `.json`).
"""

import os

from keras_chanattn.export.checks import QUANTIZATIONS
from keras_chanattn.export.errors import ConversionError, ExportVerificationError
from keras_chanattn.export.files import check_output_path, write_text
from keras_chanattn.export.prepared import PreparedModel
from keras_chanattn.export.saved_model import export_saved_model
from keras_chanattn.export.tflite import export_tflite

SAVED_MODEL = "savedmodel"
FORMATS = (SAVED_MODEL, *QUANTIZATIONS)


def artifact_paths(out_dir, stem, fmt):
    """`(artefact path, report path)` of format `fmt` for a model named `stem` in `out_dir`."""
    if fmt == SAVED_MODEL:
        base = os.path.join(out_dir, f"{stem}_saved_model")
        return base, base + ".json"
    base = os.path.join(out_dir, f"{stem}_{fmt}")
    return base + ".tflite", base + ".json"


def check_formats(formats):
    """`formats` without repeats, in order; raises `ValueError` for an unknown or no format."""
    formats = list(dict.fromkeys(formats))  # unique, in order
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"Unknown export format(s) {unknown}; valid formats are {list(FORMATS)}.")
    return formats


def _check_outputs(out_dir, stem, formats, overwrite):
    """Refuses, before any work, an existing artefact or report (unless `overwrite`)."""
    for fmt in formats:
        for path in artifact_paths(out_dir, stem, fmt):
            kind = "directory" if path.endswith("_saved_model") else "file"
            check_output_path(path, overwrite, kind)


def _export(model, fmt, path, representative_data, validation_data, *, overwrite, image_size,
            batch_size, num_calibration_samples, enforce, num_threads, prepared):  # fmt: skip
    """`(report, text to log)` of one format's export to `path`."""
    if fmt == SAVED_MODEL:
        report = export_saved_model(
            model, path, batch_size=batch_size, overwrite=overwrite, image_size=image_size,
            check_data=validation_data, prepared=prepared,
        )  # fmt: skip
        text = (
            f"{fmt}: {'PASSED' if report.passed else 'FAILED'}, relative error "
            f"{report.relative_error:.3g} on reload -> {path}"
        )
        return report, text
    report = export_tflite(
        model, path, fmt, representative_data, validation_data, overwrite=overwrite,
        image_size=image_size, num_calibration_samples=num_calibration_samples,
        enforce=enforce, num_threads=num_threads, prepared=prepared,
    )  # fmt: skip
    return report, report.summary() + f"\n  -> {path}"


def _export_or_failure(model, fmt, path, *args, **kwargs):
    """`_export`, with a failed verification's report, or `None` for a failed conversion,
    and the text saying so."""
    try:
        return _export(model, fmt, path, *args, **kwargs)
    except ExportVerificationError as error:
        text = f"{fmt}: FAILED, nothing written\n" + "\n".join(
            f"  FAILED: {failure}" for failure in error.report.failures
        )
        return error.report, text
    except ConversionError as error:
        return None, f"{fmt}: FAILED to convert: {error}"


def export_artifacts(
    model,
    out_dir,
    formats=FORMATS,
    representative_data=None,
    validation_data=None,
    *,
    stem=None,
    overwrite=False,
    image_size=None,
    batch_size=1,
    num_calibration_samples=200,
    enforce=True,
    num_threads=2,
    log=print,
):
    """Exports `model` to each of `formats` in `out_dir`, writing a JSON report beside each.

    Every output path is checked before any work starts, so an existing artefact stops the
    run at once (unless `overwrite`). A format that fails its verification leaves its report
    (with `"passed": false`) and no artefact, and the other formats still run. The formats
    share one `PreparedModel`: one inference form, one batch-1 SavedModel every TFLite format
    converts, and the Keras outputs computed once.

    Args:
        model: a Keras model with one NHWC image input.
        out_dir: the output directory (created if missing).
        formats: some of `FORMATS` (`"savedmodel"`, `"float32"`, `"float16"`, `"dynamic"`,
            `"int8"`). Defaults to all of them.
        representative_data: calibration images for int8 (see `export_tflite`).
        validation_data: held-out images for the verification.
        stem: file name stem. Defaults to the model's name.
        overwrite: replace existing artefacts. Defaults to `False`.
        image_size: `(height, width)` where the model leaves them unknown.
        batch_size: the SavedModel's batch size (`None` for dynamic). Defaults to `1`.
        num_calibration_samples: calibrate int8 on at most this many images.
        enforce: with `False`, artefacts that fail verification are written anyway.
        num_threads: threads of the verification interpreter. Defaults to `2`.
        log: called with one text block per format. Defaults to `print`.

    Returns:
        `{format: report}` (`SavedModelReport` or `VerificationReport`; a failed report for a
        format that failed).

    Raises:
        FileExistsError: an output exists and `overwrite` is false (nothing is done).
        ValueError: bad formats or inputs.
    """
    formats = check_formats(formats)
    stem = stem or model.name
    _check_outputs(out_dir, stem, formats, overwrite)
    reports = {}
    with PreparedModel(model) as prepared:
        for fmt in formats:
            path, report_path = artifact_paths(out_dir, stem, fmt)
            reports[fmt], text = _export_or_failure(
                model, fmt, path, representative_data, validation_data, overwrite=overwrite,
                image_size=image_size, batch_size=batch_size,
                num_calibration_samples=num_calibration_samples, enforce=enforce,
                num_threads=num_threads, prepared=prepared,
            )  # fmt: skip
            if reports[fmt] is not None:
                write_text(report_path, reports[fmt].to_json(), overwrite)
            log(text)
    return reports
