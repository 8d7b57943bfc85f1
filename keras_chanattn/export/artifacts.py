"""Several exports of one model into one directory, with a JSON report beside each artefact.

What the `chanattn export` command runs; the pipeline can call it too. For a model `stem`:
`<out>/<stem>_saved_model/` (+ `.json`), `<out>/<stem>_<format>.tflite` (+ `.json`).
"""

import os

from keras_chanattn.export.checks import QUANTIZATIONS
from keras_chanattn.export.errors import ConversionError, ExportVerificationError
from keras_chanattn.export.files import check_output_path, write_text
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
            batch_size, num_calibration_samples, enforce, num_threads):  # fmt: skip
    """`(report, text to log)` of one format's export to `path`."""
    if fmt == SAVED_MODEL:
        report = export_saved_model(
            model, path, batch_size=batch_size, overwrite=overwrite, image_size=image_size,
            check_data=validation_data,
        )  # fmt: skip
        text = (
            f"{fmt}: {'PASSED' if report.passed else 'FAILED'}, relative error "
            f"{report.relative_error:.3g} on reload -> {path}"
        )
        return report, text
    report = export_tflite(
        model, path, fmt, representative_data, validation_data, overwrite=overwrite,
        image_size=image_size, num_calibration_samples=num_calibration_samples,
        enforce=enforce, num_threads=num_threads,
    )  # fmt: skip
    return report, report.summary() + f"\n  -> {path}"


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
    (with `"passed": false`) and no artefact, and the other formats still run.

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
    for fmt in formats:
        path, report_path = artifact_paths(out_dir, stem, fmt)
        try:
            report, text = _export(
                model, fmt, path, representative_data, validation_data, overwrite=overwrite,
                image_size=image_size, batch_size=batch_size,
                num_calibration_samples=num_calibration_samples, enforce=enforce,
                num_threads=num_threads,
            )  # fmt: skip
        except ExportVerificationError as error:
            report = error.report
            text = f"{fmt}: FAILED, nothing written\n" + "\n".join(
                f"  FAILED: {failure}" for failure in report.failures
            )
        except ConversionError as error:
            reports[fmt] = None
            log(f"{fmt}: FAILED to convert: {error}")
            continue
        write_text(report_path, report.to_json(), overwrite)
        reports[fmt] = report
        log(text)
    return reports
