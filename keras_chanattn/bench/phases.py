"""The bench's measuring phases: cost, export and verification, accuracy, latency."""

import contextlib
import sys

import keras
import numpy as np

from keras_chanattn.bench.heldout import top1_classes
from keras_chanattn.bench.latency import measure_latency, read_tflite
from keras_chanattn.export.artifacts import artifact_paths
from keras_chanattn.export.errors import ConversionError
from keras_chanattn.export.litert import make_interpreter, run_tflite
from keras_chanattn.export.saved_model import keras_outputs
from keras_chanattn.export.tflite import export_tflite
from keras_chanattn.models.params import count_flops, count_params


class PhaseBar:
    """A `keras.utils.Progbar` for one phase, titled, on `stream` (default: stderr).

    Silent when `verbose` is 0 or the phase has nothing to do.
    """

    def __init__(self, title, target, verbose=1, stream=None, unit="step"):
        self.stream = sys.stderr if stream is None else stream
        self.bar = None
        if verbose and target > 0:
            self.stream.write(f"{title}\n")
            with contextlib.redirect_stdout(self.stream):
                self.bar = keras.utils.Progbar(target, unit_name=unit)

    def add(self, steps=1):
        if self.bar is not None:
            with contextlib.redirect_stdout(self.stream):
                self.bar.add(steps)


def cost_phase(models, flops=True):
    """`{label: {"params", "trainable_params", "flops"}}`; FLOPs are multiply-adds at batch 1
    (`None` unless `flops`)."""
    counts = {}
    for label, model in models.items():
        total, trainable = count_params(model)
        counts[label] = {
            "params": total,
            "trainable_params": trainable,
            "flops": count_flops(model) if flops else None,
        }
    return counts


def export_phase(models, data, exported, tflite_dir, config, stream=None):
    """`(reports, errors)`: exports and verifies every model in every format of `config`
    (`export_tflite`, not enforced) into `tflite_dir`, except the files in `exported`
    (`{label: {format: VerificationReport}}`), taken as they are.

    `data` is `(representative_data, {label: held-out images})`; a conversion error is
    recorded in `errors[(label, format)]` instead of stopping the run.
    """
    representative_data, held_out = data
    keys = [(label, fmt) for label in models for fmt in config.formats]
    todo = [key for key in keys if key[1] not in exported.get(key[0], {})]
    title = f"export and verify: {len(todo)} file(s)"
    bar = PhaseBar(title, len(todo), config.verbose, stream, unit="file")
    reports, errors = {}, {}
    for label, fmt in keys:
        if (label, fmt) not in todo:
            reports[(label, fmt)] = exported[label][fmt]
            continue
        path, report_path = artifact_paths(tflite_dir, label, fmt)
        try:
            reports[(label, fmt)] = export_tflite(
                models[label], path, fmt,
                representative_data=representative_data if fmt == "int8" else None,
                validation_data=held_out[label], max_validation_samples=config.max_samples,
                overwrite=config.overwrite, enforce=False, report_path=report_path,
                num_calibration_samples=config.num_calibration_samples,
                num_threads=config.num_threads, seed=config.seed,
            )  # fmt: skip
        except ConversionError as error:
            errors[(label, fmt)] = str(error)
        bar.add()
    return reports, errors


def accuracy_phase(models, reports, held_out, labels, config, stream=None):
    """`(keras_accuracy, accuracy)`: top-1 accuracy on the labelled held-out images of each
    Keras model (`{label: float}`) and of each exported file (`{(label, format): float}`)."""
    formats = config.formats
    target = len(models) * (1 + len(formats))
    bar = PhaseBar("accuracy: Keras and .tflite", target, config.verbose, stream, unit="model")
    keras_accuracy, accuracy = {}, {}
    for label, model in models.items():
        top1 = top1_classes(keras_outputs(model, held_out[label]))
        bar.add()
        if top1 is None:  # not a classifier
            bar.add(len(formats))
            continue
        keras_accuracy[label] = float(np.mean(top1 == labels[label]))
        for fmt in formats:
            report = reports.get((label, fmt))
            if report is not None:
                interpreter, _ = make_interpreter(read_tflite(report.path), config.num_threads)
                got = top1_classes(run_tflite(interpreter, held_out[label]))
                if got is not None:
                    accuracy[(label, fmt)] = float(np.mean(got == labels[label]))
            bar.add()
    return keras_accuracy, accuracy


def latency_phase(reports, held_out, specs, config, stream=None):
    """`{(label, format): LatencyStats}`: the exported files timed interleaved, format by
    format (`measure_latency`), on the first held-out image when there is one."""
    rounds = config.warmup + config.runs
    title = f"latency: {len(config.formats)} format(s), {rounds} rounds each"
    bar = PhaseBar(title, len(config.formats) * rounds, config.verbose, stream, unit="round")
    latency = {}
    for fmt in config.formats:
        paths = {label: reports[(label, fmt)].path for label in specs if (label, fmt) in reports}
        stats = _time_format(paths, held_out, specs, config, bar)
        latency.update({(label, fmt): s for label, s in stats.items()})
    return latency


def _time_format(paths, held_out, specs, config, bar):
    timing = {
        "num_threads": config.num_threads,
        "warmup": config.warmup,
        "runs": config.runs,
        "seed": config.seed,
    }
    first = next(iter(paths), None)
    if first is not None and all(specs[k].shape == specs[first].shape for k in paths):
        image = None if held_out[first] is None else held_out[first][0]
        return measure_latency(paths, image, on_round=bar.add, **timing)
    stats = {}  # models of different input sizes: each with its own synthetic image
    for label, path in paths.items():
        stats.update(measure_latency({label: path}, **timing))
    bar.add(config.warmup + config.runs)
    return stats
