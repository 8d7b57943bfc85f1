"""The bench run: its settings, the checks made before any work, and the phases in order."""

import dataclasses
import os

from keras_chanattn.bench import phases
from keras_chanattn.bench.heldout import held_out_sets
from keras_chanattn.bench.latency import check_timing
from keras_chanattn.bench.models import label_models
from keras_chanattn.bench.results import (
    REPORT_FILES,
    TFLITE_DIR,
    BenchResult,
    Measurements,
    make_rows,
    write_reports,
)
from keras_chanattn.export.artifacts import artifact_paths
from keras_chanattn.export.checks import QUANTIZATIONS, check_quantization
from keras_chanattn.export.files import check_output_path
from keras_chanattn.images import image_input_spec
from keras_chanattn.models.presets import PLAIN


@dataclasses.dataclass
class BenchConfig:
    """How `bench` measures; plain data, recorded in the results.

    Attributes:
        formats: TFLite formats, some of `"float32"`, `"float16"`, `"dynamic"`, `"int8"`.
            Defaults to all four.
        baseline: the label(s) of the model(s) latency ratios are taken against: a label or
            a list of labels (a `ratio_vs_<label>` column each; the first one is plotted).
            Defaults to `None`: `"plain"` if there is such a model, else the first model.
        num_threads: LiteRT threads, for the timings and the verification. Defaults to `2`.
        warmup: untimed rounds before the timed ones. Defaults to `5`.
        runs: timed rounds (each runs every model of a format once). Defaults to `30`.
        max_samples: use at most this many held-out images. Defaults to `256`.
        num_calibration_samples: calibrate int8 on at most this many images. Defaults to
            `200`.
        flops: count FLOPs (a few seconds for a deep model). Defaults to `True`.
        plots: write the PNG plots (needs matplotlib). Defaults to `True`.
        overwrite: replace existing reports and `.tflite` files. Defaults to `False`.
        seed: seed of the shuffled order, the synthetic images and the probes. Defaults
            to `0`.
        verbose: 1 shows a progress bar per phase and prints the table, 0 is silent.
            Defaults to `1`.
    """

    formats: tuple = QUANTIZATIONS
    baseline: str | list | None = None
    num_threads: int = 2
    warmup: int = 5
    runs: int = 30
    max_samples: int = 256
    num_calibration_samples: int = 200
    flops: bool = True
    plots: bool = True
    overwrite: bool = False
    seed: int = 0
    verbose: int = 1

    def __post_init__(self):
        self.formats = tuple(check_quantization(f) for f in dict.fromkeys(self.formats))
        if not self.formats:
            raise ValueError(f"No formats given; valid formats are {list(QUANTIZATIONS)}.")
        check_timing(self.runs, self.warmup, self.num_threads)

    def baselines(self, labels):
        """The baseline labels among `labels` (the models' labels, in order)."""
        if self.baseline is None:
            return [PLAIN if PLAIN in labels else next(iter(labels))]
        baselines = [self.baseline] if isinstance(self.baseline, str) else list(self.baseline)
        missing = [b for b in baselines if b not in labels]
        if missing:
            raise ValueError(f"Baseline(s) {missing} are not among the models {list(labels)}.")
        return baselines


def bench(
    models,
    out_dir,
    config=None,
    *,
    representative_data=None,
    validation_data=None,
    exported=None,
    skipped=None,
    log=print,
    stream=None,
    **settings,
):
    """Exports, verifies and times several Keras models side by side; writes the reports.

    Failed verification checks and conversions do not stop the run: they are recorded in
    the rows (`verified`, `failures`, `error`); what is measured is in the package docstring.

    Args:
        models: a list of Keras models (labelled by their names) or a dict `{label: model}`;
            each takes one NHWC image of fixed size (see `keras_chanattn.export`).
        out_dir: the output directory (created if missing).
        config: a `BenchConfig`. Defaults to `None`: `BenchConfig()`.
        representative_data: calibration images for `"int8"` (required there), in any form
            `export_tflite` takes. Defaults to `None`.
        validation_data: held-out images for the verification and, with labels (an
            `(images, labels)` tuple or a dataset of `(image, label)` pairs), for accuracy.
            Defaults to `None`: synthetic images, no accuracy.
        exported: `.tflite` files made earlier, `{label: {format: VerificationReport}}`
            (`path` set), timed as they are instead of exported again. Defaults to `None`.
        skipped: models left out before the run, `{label: reason}` (as `backbone_models`
            returns), recorded in the reports. Defaults to `None`.
        log: where the table goes. Defaults to `print`.
        stream: where the progress bars go. Defaults to `sys.stderr`.
        **settings: `BenchConfig` fields, replacing `config`'s (e.g. `formats=["int8"]`).

    Returns:
        A `BenchResult`.

    Raises:
        ValueError: unknown formats or baseline, int8 without `representative_data`, images
            of the wrong shape, duplicate model names.
        FileExistsError: an output exists and `overwrite` is false (checked before any work).

    Example:

    >>> models, _ = backbone_models("resnet20", ["se", "srm"], input_shape=(32, 32, 3))
    >>> result = bench(models, "bench_out", formats=["float32", "int8"],
    ...                representative_data=x_train[:200], validation_data=(x_test, y_test))
    """
    config = dataclasses.replace(config or BenchConfig(), **settings)
    models = label_models(models)
    baselines = config.baselines(list(models))
    exported = exported or {}
    tflite_dir, files = _checked_outputs(out_dir, models, exported, representative_data, config)
    specs = {label: image_input_spec(model) for label, model in models.items()}
    held_out, labels = held_out_sets(specs, validation_data, config.max_samples)

    measured = Measurements()
    data = (representative_data, held_out)
    measured.reports, measured.errors = phases.export_phase(
        models, data, exported, tflite_dir, config, stream
    )
    if labels:
        measured.keras_accuracy, measured.accuracy = phases.accuracy_phase(
            models, measured.reports, held_out, labels, config, stream
        )
    measured.latency = phases.latency_phase(measured.reports, held_out, specs, config, stream)
    measured.counts = phases.cost_phase(models, config.flops)

    run = _run_config(config, held_out, bool(labels))
    result = _results(list(models), baselines, measured, config, run, skipped)
    write_reports(result, files, config.overwrite)
    if config.verbose:
        log(result.table())
        log(f"Reports: {', '.join(result.files.values())}")
    return result


def _results(labels, baselines, measured, config, run, skipped):
    """The `BenchResult` of the models `labels`: rows from `measured`, `run` its config."""
    rows, columns = make_rows(labels, config.formats, baselines, measured, config.num_threads)
    return BenchResult(
        rows=rows,
        columns=columns,
        baselines=baselines,
        formats=list(config.formats),
        config=run,
        skipped=dict(skipped or {}),
        reports=measured.reports,
    )


def _checked_outputs(out_dir, models, exported, representative_data, config):
    """`(tflite_dir, {kind: report path})`, once every file to write is known to be free (or
    `overwrite`) and int8 has calibration data where it is to be exported."""
    to_export = [
        (label, fmt)
        for label in models
        for fmt in config.formats
        if fmt not in exported.get(label, {})
    ]
    if representative_data is None and any(fmt == "int8" for _, fmt in to_export):
        raise ValueError(
            "Format 'int8' needs representative_data: calibration images like those the "
            "models will see (see export_tflite)."
        )
    out_dir = os.path.abspath(os.fspath(out_dir))
    tflite_dir = os.path.join(out_dir, TFLITE_DIR)
    files = {
        kind: os.path.join(out_dir, name)
        for kind, name in REPORT_FILES.items()
        if config.plots or not kind.endswith("_plot")
    }
    for path in files.values():
        check_output_path(path, config.overwrite, "file")
    for label, fmt in to_export:
        for path in artifact_paths(tflite_dir, label, fmt):
            check_output_path(path, config.overwrite, "file")
    return tflite_dir, files


def _run_config(config, held_out, has_labels):
    """How the run was made, as the results record it."""
    return {
        "num_threads": config.num_threads,
        "warmup": config.warmup,
        "runs": config.runs,
        "seed": config.seed,
        "max_samples": config.max_samples,
        "num_calibration_samples": config.num_calibration_samples,
        "held_out_samples": {label: 0 if x is None else len(x) for label, x in held_out.items()},
        "accuracy": has_labels,
        "interleaving": "per format: every round runs each model once, in a shuffled order",
        "flops_unit": "multiply-adds at batch 1",
    }
