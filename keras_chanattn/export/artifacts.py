"""Several exports of one model into one directory, with a JSON report beside each artefact.

What the `chanattn export` command runs; the pipeline can call it too. For a model `stem`:
`<out>/<stem>_saved_model/` (+ `.json`), `<out>/<stem>_<format>.tflite` (+ `.json`).

A report always describes the artefact beside it: a format that fails its verification
where an earlier artefact exists (with `overwrite`) keeps that artefact and its report as
they were, and writes its failed report to `<stem>_<format>.failed.json` instead.
"""

import os

from keras_chanattn.backend import require_tensorflow
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


def failed_report_path(report_path):
    """Where a failed report goes when an earlier artefact is kept: `<name>.failed.json`."""
    return report_path.removesuffix(".json") + ".failed.json"


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
        path, report_path = artifact_paths(out_dir, stem, fmt)
        check_output_path(path, overwrite, "directory" if fmt == SAVED_MODEL else "file")
        check_output_path(report_path, overwrite, "file")
        # Written with overwrite when an earlier artefact is kept: it must not be a folder.
        check_output_path(failed_report_path(report_path), True, "file")


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
    """`(report, text, written)`: `_export`'s, with a failed verification's report, or
    `None` for a failed conversion, and whether an artefact was written."""
    try:
        return (*_export(model, fmt, path, *args, **kwargs), True)
    except ExportVerificationError as error:
        text = f"{fmt}: FAILED, nothing written\n" + "\n".join(
            f"  FAILED: {failure}" for failure in error.report.failures
        )
        return error.report, text, False
    except ConversionError as error:
        return None, f"{fmt}: FAILED to convert: {error}", False


def _write_report(report, path, report_path, *, written, kept, overwrite):
    """Writes `report` beside the artefact it describes; returns a line for the log, or "".

    `written`: the export wrote its artefact to `path`. `kept`: an earlier artefact was
    there. When nothing was written and an earlier artefact is kept, its report is kept
    with it, and this one goes to `failed_report_path(report_path)`. An export that wrote
    its artefact (with `overwrite`) removes the `.failed.json` an earlier failure left.
    """
    failed_path = failed_report_path(report_path)
    if report is None:
        return ""
    if not written and kept:
        write_text(failed_path, report.to_json(), overwrite=True)
        return (
            f"  kept the earlier {os.path.basename(path)} and its report; "
            f"this failed report -> {failed_path}"
        )
    write_text(report_path, report.to_json(), overwrite)
    if written and overwrite and os.path.isfile(failed_path):
        os.unlink(failed_path)
        return f"  removed the earlier failed report {failed_path}"
    return ""


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
    run at once (unless `overwrite`). A format that fails its verification writes no
    artefact, and the other formats still run; its report (with `"passed": false`) goes
    beside where the artefact would be, unless an earlier artefact is there (`overwrite`):
    then that artefact and its report stay as they were, and the failed report goes to
    `<stem>_<format>.failed.json` (`failed_report_path`), so a report always describes the
    artefact beside it; a format that writes its artefact (with `overwrite`) removes such a
    `.failed.json`. With no earlier artefact, the failed report takes the report's usual
    name. The formats share one `PreparedModel`: one inference form (of a float32 copy for
    a mixed precision model), one batch-1 SavedModel every TFLite format converts, and the
    Keras outputs computed once.

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
        format that failed its verification, `None` for one that failed to convert).

    Raises:
        FileExistsError: an output exists and `overwrite` is false (nothing is done).
        ValueError: bad formats or inputs.
    """
    require_tensorflow("Export (export_artifacts)")
    formats = check_formats(formats)
    stem = stem or model.name
    _check_outputs(out_dir, stem, formats, overwrite)
    reports = {}
    with PreparedModel(model) as prepared:
        for fmt in formats:
            path, report_path = artifact_paths(out_dir, stem, fmt)
            kept = os.path.lexists(path)
            reports[fmt], text, written = _export_or_failure(
                model, fmt, path, representative_data, validation_data, overwrite=overwrite,
                image_size=image_size, batch_size=batch_size,
                num_calibration_samples=num_calibration_samples, enforce=enforce,
                num_threads=num_threads, prepared=prepared,
            )  # fmt: skip
            note = _write_report(
                reports[fmt], path, report_path, written=written, kept=kept, overwrite=overwrite
            )
            log(text + (f"\n{note}" if note else ""))
    return reports
