"""Side-by-side measurement of Keras image models as phones run them: cost and fidelity.

`bench(models, out_dir, ...)` exports every model to each TFLite format (`export_tflite`:
inference forms, builtin ops only, verified against the Keras model), then measures, in one
run and one table:

- parameters and FLOPs (`keras_chanattn.models.params`: multiply-adds at batch 1);
- the `.tflite` size per format;
- the latency per format in the LiteRT interpreter with its default XNNPACK delegate and
  `num_threads` threads, at batch 1: `warmup` rounds, then `runs` timed rounds where each
  round invokes every model once in a freshly shuffled order, so that drift (thermal state,
  other processes, frequency scaling) hits every model alike; median, p90, mean and min,
  and the ratio of the medians to one or more named baseline models. The models of one
  format are interleaved with each other (their interpreters are alive together); the
  formats are timed one after the other, as ratios are taken within a format;
- the XNNPACK partitions, the ops left outside XNNPACK and the float ops kept in full int8,
  and the verification's fidelity figures (relative and max abs error, top-1 agreement
  with the Keras model on held-out images and out-of-distribution probes), from the
  `VerificationReport` of each export;
- top-1 accuracy of the Keras model and of each `.tflite`, when the held-out data carry
  labels.

It writes, without replacing anything unless asked (atomically, through
`keras_chanattn.export.files`): `bench.txt` (the table), `bench.csv` and `bench.json` (one
row per model and format), `latency_overhead.png` (latency over the first baseline, per
model and format) and `cost_vs_fidelity.png` (accuracy, or relative error when no labels
are given, against latency), and the `.tflite` files with their verification reports under
`tflite/`. `backbone_models` builds the plain network and one model per block through
`keras_chanattn.models`, so `bench(*backbone_models("resnet50"))`-style comparisons need
one line.
"""

import csv
import dataclasses
import io
import json
import os
import sys
import time

import numpy as np

from keras_chanattn.export.errors import ConversionError
from keras_chanattn.export.files import check_output_path, write_bytes, write_text
from keras_chanattn.export.verify import QUANTIZATIONS, check_quantization
from keras_chanattn.images import as_images, image_input_spec, synthetic_images

PLAIN = "plain"

# The files `bench` writes into its output directory (besides `tflite/`).
REPORT_FILES = {
    "table": "bench.txt",
    "csv": "bench.csv",
    "json": "bench.json",
    "latency_plot": "latency_overhead.png",
    "fidelity_plot": "cost_vs_fidelity.png",
}
TFLITE_DIR = "tflite"

# The columns of every row, in order; `ratio_vs_<baseline>` columns follow `latency_min_ms`.
COLUMNS = (
    "model",  # the model's label
    "format",  # TFLite format
    "params",  # all parameters (trainable and not)
    "trainable_params",
    "flops",  # multiply-adds of one forward pass at batch 1 (models.params.count_flops)
    "size_bytes",  # the .tflite file's size
    "path",  # the .tflite file
    "threads",  # interpreter threads
    "runs",  # timed runs
    "xnnpack",  # XNNPACK took the model (else LiteRT's own kernels ran it)
    "latency_median_ms",
    "latency_p90_ms",
    "latency_mean_ms",
    "latency_min_ms",
    "partitions",  # XNNPACK delegate partitions
    "undelegated_ops",  # ops outside XNNPACK, as "OP (layer)"
    "float_ops",  # full int8: float ops kept, as "OP (layer)"
    "widened_ranges",  # full int8: ranges widened for XNNPACK, as "OP (layer)"
    "max_abs_error",  # held-out images, TFLite against Keras
    "relative_error",  # max abs error / max |Keras output|: the worst image's
    "image_relative_error_median",  # each image's own max abs error / max |Keras output|
    "image_relative_error_p99",  # the same, 99th percentile
    "saturated_images",  # full int8: held-out images with an output beyond the int8 range
    "clipped_relative_error",  # full int8: the relative error with that clipping taken out
    "top1_agreement",
    "probe_relative_error",  # out-of-distribution probes
    "probe_top1_agreement",
    "held_out_source",  # where the held-out images came from
    "verified",  # the export passed every verification check
    "failures",  # the failed checks
    "accuracy",  # top-1 accuracy of the .tflite on labelled held-out images
    "keras_accuracy",  # top-1 accuracy of the Keras model on the same images
    "error",  # why the model could not be converted to this format
)
_LIST_COLUMNS = ("undelegated_ops", "float_ops", "widened_ranges", "failures")


def ratio_column(baseline):
    """The name of the column holding latency ratios against model `baseline`."""
    return f"ratio_vs_{baseline}"


# --- latency ---------------------------------------------------------------------------------


@dataclasses.dataclass
class LatencyStats:
    """Timings of one `.tflite` in milliseconds, and whether XNNPACK ran it."""

    runs: int
    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    xnnpack: bool

    @classmethod
    def from_seconds(cls, seconds, xnnpack):
        ms = np.asarray(seconds, "float64") * 1e3
        return cls(
            runs=int(ms.size),
            median_ms=float(np.median(ms)),
            p90_ms=float(np.percentile(ms, 90)),
            mean_ms=float(ms.mean()),
            min_ms=float(ms.min()),
            xnnpack=bool(xnnpack),
        )


def _interpreter(tflite_bytes, num_threads):
    # verify.py's: XNNPACK applied, or LiteRT's kernels and the reason XNNPACK refused.
    from keras_chanattn.export.verify import _interpreter as prepared_interpreter

    return prepared_interpreter(tflite_bytes, num_threads)


def _read(tflite):
    if isinstance(tflite, (bytes, bytearray)):
        return bytes(tflite)
    with open(tflite, "rb") as f:
        return f.read()


def _set_input(interpreter, image):
    """Sets the model's input to `image` (float, `(H, W, C)`), quantised if the input is."""
    details = interpreter.get_input_details()[0]
    x = np.asarray(image, "float32")[None]
    dtype = np.dtype(details["dtype"])
    if np.issubdtype(dtype, np.integer):
        scale, zero_point = details["quantization"]
        info = np.iinfo(dtype)
        x = np.clip(np.round(x / scale + zero_point), info.min, info.max)
    interpreter.set_tensor(details["index"], x.astype(dtype))


def measure_latency(
    tflite_files,
    image=None,
    *,
    num_threads=2,
    warmup=5,
    runs=30,
    seed=0,
    on_round=None,
):
    """Times several `.tflite` models interleaved, in the LiteRT interpreter with XNNPACK.

    Every model gets its own interpreter (default XNNPACK delegate, `num_threads`), all
    alive at once. After `warmup` untimed rounds, each of `runs` rounds invokes every model
    once, in an order shuffled anew per round, and times `invoke()` alone; slow drift of the
    machine thus spreads over all models alike instead of favouring whichever ran first.

    Args:
        tflite_files: `{key: path or flatbuffer bytes}`.
        image: one input image `(H, W, C)` in the models' float range, quantised for int8
            inputs. Defaults to `None`: a smooth random image in [0, 1].
        num_threads: interpreter threads. Defaults to `2`.
        warmup: untimed rounds first. Defaults to `5`.
        runs: timed rounds. Defaults to `30`.
        seed: seed of the shuffling. Defaults to `0`.
        on_round: called with no argument after every round (for progress). Defaults to
            `None`.

    Returns:
        `{key: LatencyStats}`.
    """
    if runs < 1 or warmup < 0 or num_threads < 1:
        raise ValueError(
            f"Need runs >= 1, warmup >= 0 and num_threads >= 1; got runs={runs}, "
            f"warmup={warmup}, num_threads={num_threads}."
        )
    interpreters, xnnpack = {}, {}
    for key, tflite in tflite_files.items():
        interpreter, reason = _interpreter(_read(tflite), num_threads)
        details = interpreter.get_input_details()
        if len(details) != 1:
            raise ValueError(f"{key}: expected one image input, found {len(details)} inputs.")
        shape = tuple(int(d) for d in details[0]["shape"][1:])
        if image is None:
            height, width, channels = shape
            from keras_chanattn.images import ImageSpec

            x = synthetic_images(ImageSpec(height, width, channels, "float32"), 1, seed=seed)[0]
        else:
            x = image
        if tuple(np.shape(x)) != shape:
            raise ValueError(f"{key}: takes images of shape {shape}, got {np.shape(x)}.")
        _set_input(interpreter, x)
        interpreters[key], xnnpack[key] = interpreter, reason is None
    rng = np.random.default_rng(seed)
    keys = list(interpreters)
    times = {key: [] for key in keys}
    for round_index in range(warmup + runs):
        for i in rng.permutation(len(keys)):
            key = keys[i]
            start = time.perf_counter()
            interpreters[key].invoke()
            elapsed = time.perf_counter() - start
            if round_index >= warmup:
                times[key].append(elapsed)
        if on_round is not None:
            on_round()
    return {key: LatencyStats.from_seconds(times[key], xnnpack[key]) for key in keys}


# --- models ------------------------------------------------------------------------------------


def backbone_models(
    backbone,
    blocks=None,
    *,
    include_plain=True,
    attention_kwargs=None,
    paper_settings=True,
    **builder_kwargs,
):
    """Builds a backbone plain and with each attention block, for `bench`.

    Args:
        backbone: a name from `keras_chanattn.models.params.backbones()` (`"resnet50"`,
            `"resnet20"`, `"mobilenet_v2"`, ...), or a builder `f(attention, **kwargs)`
            returning a Keras model.
        blocks: registered block names. Defaults to `None`: every registered block.
        include_plain: also build the backbone without attention, labelled `"plain"`.
            Defaults to `True`.
        attention_kwargs: per-block constructor arguments, `{block: {arg: value}}`.
            Defaults to `None`.
        paper_settings: use the papers' per-stage settings where the package knows them
            (ECA's kernel sizes on ResNet-50). Defaults to `True`.
        **builder_kwargs: arguments of every build (e.g. `input_shape`, `num_classes`).

    Returns:
        `(models, skipped)`: `{label: model}` (`"plain"` first, then the blocks by name), and
        `{block: reason}` for blocks the builder refused with these arguments (e.g. more
        groups than channels), so that one block's limits do not stop a comparison.
    """
    from keras_chanattn.layers.registry import list_attention
    from keras_chanattn.models import params

    if callable(backbone):
        build, name = backbone, getattr(backbone, "__name__", "model")
    else:
        table = params.backbones()
        if backbone not in table:
            raise ValueError(f"Unknown backbone {backbone!r}; known: {', '.join(table)}.")
        build, name = table[backbone], backbone
    blocks = list_attention() if blocks is None else list(blocks)
    unknown = sorted(set(blocks) - set(list_attention()))
    if unknown:
        raise ValueError(f"Unknown blocks {unknown}; registered: {', '.join(list_attention())}.")
    if PLAIN in blocks:
        raise ValueError(f"{PLAIN!r} is the label of the backbone without attention, not a block.")
    attention_kwargs = attention_kwargs or {}
    models, skipped = {}, {}
    if include_plain:
        models[PLAIN] = build(None, name=f"{PLAIN}_{name}", **builder_kwargs)
    for block in blocks:
        kwargs = dict(builder_kwargs)
        if paper_settings and isinstance(backbone, str):
            kwargs.update(params.paper_settings(backbone, block))
        kwargs.update(attention_kwargs.get(block, {}))
        try:
            models[block] = build(block, name=f"{block}_{name}", **kwargs)
        except ValueError as error:
            skipped[block] = str(error)
    return models, skipped


def _labelled(models):
    if isinstance(models, dict):
        labelled = dict(models)
    else:
        labelled = {}
        for model in models:
            if model.name in labelled:
                raise ValueError(
                    f"Two models are named {model.name!r}; give them distinct names, or pass "
                    "a dict {label: model}."
                )
            labelled[model.name] = model
    if not labelled:
        raise ValueError("bench needs at least one model.")
    for label in labelled:
        if not isinstance(label, str) or not label or os.sep in label:
            raise ValueError(f"Model labels must be non-empty file names; got {label!r}.")
    return labelled


# --- held-out data -----------------------------------------------------------------------------


def _images_and_labels(data, limit=None):
    """Splits `data` into (images, labels or None) when it carries labels; a dataset is read
    up to `limit` images."""
    import tensorflow as tf

    if data is None:
        return None, None
    if isinstance(data, tuple) and len(data) == 2 and np.ndim(data[0]) == 4:
        return np.asarray(data[0]), np.asarray(data[1])
    if isinstance(data, tf.data.Dataset):
        images, labels = [], []
        for item in data.as_numpy_iterator():
            if not isinstance(item, (tuple, list)) or len(item) < 2:
                return data, None
            image, label = np.asarray(item[0]), np.asarray(item[1])
            if image.ndim == 3:
                image, label = image[None], label[None]
            images.append(image)
            labels.append(label)
            if limit is not None and sum(len(x) for x in images) >= limit:
                break
        if not images:
            return data, None
        return np.concatenate(images), np.concatenate(labels)
    return data, None


def _class_labels(labels, count):
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] > 1:
        labels = labels.argmax(1)  # one-hot
    labels = labels.reshape(-1)
    if labels.size < count:
        raise ValueError(f"validation_data has {count} images but {labels.size} labels.")
    return labels[:count].astype("int64")


def _top1(outputs):
    """Argmax of the first `(N, classes)` output, or `None`."""
    for out in outputs if isinstance(outputs, (list, tuple)) else [outputs]:
        out = np.asarray(out)
        if out.ndim == 2 and out.shape[1] >= 2:
            return out.argmax(1)
    return None


# --- the run -----------------------------------------------------------------------------------


class _Progress:
    """A one-line progress bar with a label; redrawn in place on a terminal, else sparse."""

    def __init__(self, total, stream=None, enabled=True, width=30):
        self.total, self.done, self.width = max(int(total), 1), 0, width
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.dynamic = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.started = time.perf_counter()
        self.last_printed = -1

    def step(self, label, n=1):
        self.done = min(self.done + n, self.total)
        if not self.enabled:
            return
        fraction = self.done / self.total
        filled = int(round(fraction * self.width))
        elapsed = time.perf_counter() - self.started
        line = (
            f"[{'=' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} "
            f"{elapsed:5.0f}s  {label}"
        )
        if self.dynamic:
            self.stream.write("\r" + line[:120].ljust(120))
            if self.done == self.total:
                self.stream.write("\n")
        else:
            tenth = int(fraction * 10)
            if tenth == self.last_printed and self.done != self.total:
                return
            self.last_printed = tenth
            self.stream.write(line + "\n")
        self.stream.flush()


@dataclasses.dataclass
class BenchResult:
    """What `bench` measured.

    Attributes:
        rows: one dict per model and format, with the keys `columns`.
        columns: `COLUMNS` with the `ratio_vs_<baseline>` columns inserted.
        baselines: the models latency ratios are taken against.
        formats: the TFLite formats.
        config: how the run was made (threads, runs, warm-up, seed, sample counts).
        skipped: `{label: reason}` for models left out before the run.
        files: `{kind: path}` of the reports written (see `REPORT_FILES`).
        reports: `{(label, format): VerificationReport}`.
    """

    rows: list
    columns: list
    baselines: list
    formats: list
    config: dict
    skipped: dict = dataclasses.field(default_factory=dict)
    files: dict = dataclasses.field(default_factory=dict)
    reports: dict = dataclasses.field(default_factory=dict, repr=False)

    def row(self, model, fmt):
        """The row of `model` (label) in format `fmt`."""
        for row in self.rows:
            if row["model"] == model and row["format"] == fmt:
                return row
        raise KeyError(f"No row for model {model!r} in format {fmt!r}.")

    def to_dict(self):
        return {
            "config": self.config,
            "baselines": self.baselines,
            "formats": self.formats,
            "columns": self.columns,
            "skipped": self.skipped,
            "rows": self.rows,
        }

    def to_json(self, indent=2):
        return json.dumps(self.to_dict(), indent=indent)

    def table(self, markdown=False):
        """The rows as a text (or Markdown) table, with a legend."""
        text = format_table(self.rows, self.baselines, markdown=markdown)
        notes = [f"skipped {label}: {reason}" for label, reason in self.skipped.items()]
        return "\n".join([text, *notes])

    def to_csv(self):
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow(
                {
                    k: "; ".join(map(str, v)) if isinstance(v, list) else ("" if v is None else v)
                    for k, v in row.items()
                }
            )
        return buffer.getvalue()


def bench(
    models,
    out_dir,
    *,
    formats=QUANTIZATIONS,
    baseline=None,
    representative_data=None,
    validation_data=None,
    exported=None,
    skipped=None,
    num_threads=2,
    warmup=5,
    runs=30,
    max_samples=256,
    num_calibration_samples=200,
    flops=True,
    plots=True,
    overwrite=False,
    seed=0,
    verbose=1,
    log=print,
    stream=None,
):
    """Exports, verifies and times several Keras models side by side; writes the reports.

    See the module docstring for what is measured and written. Verification failures do not
    stop the run: they are in the `verified` and `failures` columns (and the `.tflite` is
    written, so that it can be timed). A format a model cannot be converted to gets a row
    with `error` set and no timings.

    Args:
        models: a list of Keras models (labelled by their names) or a dict `{label: model}`;
            each takes one NHWC image of fixed size (see `keras_chanattn.export`).
        out_dir: the output directory (created if missing).
        formats: TFLite formats, some of `"float32"`, `"float16"`, `"dynamic"`, `"int8"`.
            Defaults to all four.
        baseline: the label(s) of the model(s) latency ratios are taken against: a label or
            a list of labels (a `ratio_vs_<label>` column each; the first one is plotted).
            Defaults to `None`: `"plain"` if there is such a model, else the first model.
        representative_data: calibration images for `"int8"` (required there), in any form
            `export_tflite` takes. Defaults to `None`.
        validation_data: held-out images for the verification and, with labels (an
            `(images, labels)` tuple or a dataset of `(image, label)` pairs), for accuracy.
            Defaults to `None`: synthetic images, no accuracy.
        exported: `.tflite` files made earlier, `{label: {format: VerificationReport}}` (as
            `export_tflite` returns, `path` set); those are timed as they are instead of
            being exported again. Defaults to `None`.
        skipped: models left out before the run, `{label: reason}` (as `backbone_models`
            returns), recorded in the reports. Defaults to `None`.
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
        verbose: 1 shows a progress bar and prints the table, 0 is silent. Defaults to `1`.
        log: where the table goes. Defaults to `print`.
        stream: where the progress bar goes. Defaults to `sys.stderr`.

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
    >>> print(result.table())
    """
    from keras_chanattn.export.artifacts import artifact_paths
    from keras_chanattn.export.saved_model import keras_outputs
    from keras_chanattn.export.tflite import export_tflite
    from keras_chanattn.export.verify import run_tflite
    from keras_chanattn.models.params import count_flops, count_params

    models = _labelled(models)
    formats = [check_quantization(f) for f in dict.fromkeys(formats)]
    if not formats:
        raise ValueError(f"No formats given; valid formats are {list(QUANTIZATIONS)}.")
    if baseline is None:
        baselines = [PLAIN if PLAIN in models else next(iter(models))]
    else:
        baselines = [baseline] if isinstance(baseline, str) else list(baseline)
    missing = [b for b in baselines if b not in models]
    if missing:
        raise ValueError(f"Baseline(s) {missing} are not among the models {list(models)}.")
    if runs < 1 or warmup < 0 or num_threads < 1:
        raise ValueError(
            f"Need runs >= 1, warmup >= 0 and num_threads >= 1; got runs={runs}, "
            f"warmup={warmup}, num_threads={num_threads}."
        )
    exported = exported or {}
    to_export = [
        (label, fmt) for label in models for fmt in formats if fmt not in exported.get(label, {})
    ]
    if representative_data is None and any(fmt == "int8" for _, fmt in to_export):
        raise ValueError(
            "Format 'int8' needs representative_data: calibration images like those the "
            "models will see (see export_tflite)."
        )

    out_dir = os.path.abspath(os.fspath(out_dir))
    tflite_dir = os.path.join(out_dir, TFLITE_DIR)
    files = {kind: os.path.join(out_dir, name) for kind, name in REPORT_FILES.items()}
    if not plots:
        files = {k: v for k, v in files.items() if not k.endswith("_plot")}
    for path in files.values():
        check_output_path(path, overwrite, "file")
    for label, fmt in to_export:
        for path in artifact_paths(tflite_dir, label, fmt):
            check_output_path(path, overwrite, "file")

    specs = {label: image_input_spec(model) for label, model in models.items()}
    held_out_images, held_out_labels = _images_and_labels(validation_data, max_samples)
    has_labels = held_out_labels is not None
    held_out = {}
    for label, spec in specs.items():
        images = as_images(held_out_images, spec, "validation_data", max_samples)
        held_out[label] = images
    samples = {label: (0 if x is None else len(x)) for label, x in held_out.items()}
    labels = (
        {label: _class_labels(held_out_labels, n) for label, n in samples.items()}
        if has_labels
        else {}
    )

    total = len(to_export) + len(formats) * (warmup + runs)
    if has_labels:
        total += len(models) * (1 + len(formats))
    progress = _Progress(total, stream, enabled=verbose > 0)

    # Export and verify.
    reports, errors = {}, {}
    for label, fmt in [(label, fmt) for label in models for fmt in formats]:
        if fmt in exported.get(label, {}):
            reports[(label, fmt)] = exported[label][fmt]
            continue
        path, report_path = artifact_paths(tflite_dir, label, fmt)
        progress.step(f"export {label} {fmt}", 0)
        try:
            reports[(label, fmt)] = export_tflite(
                models[label], path, fmt,
                representative_data=representative_data if fmt == "int8" else None,
                validation_data=held_out[label], max_validation_samples=max_samples,
                overwrite=overwrite, num_calibration_samples=num_calibration_samples, enforce=False,
                report_path=report_path, num_threads=num_threads, seed=seed,
            )  # fmt: skip
        except ConversionError as error:
            errors[(label, fmt)] = str(error)
        progress.step(f"export {label} {fmt}")

    # Accuracy on labelled held-out images.
    keras_accuracy, accuracy = {}, {}
    if has_labels:
        for label, model in models.items():
            progress.step(f"accuracy {label} keras", 0)
            top1 = _top1(keras_outputs(model, held_out[label]))
            if top1 is not None:
                keras_accuracy[label] = float(np.mean(top1 == labels[label]))
            progress.step(f"accuracy {label} keras")
            for fmt in formats:
                report = reports.get((label, fmt))
                if report is not None and top1 is not None:
                    progress.step(f"accuracy {label} {fmt}", 0)
                    interpreter, _ = _interpreter(_read(report.path), num_threads)
                    got = _top1(run_tflite(interpreter, held_out[label]))
                    if got is not None:
                        accuracy[(label, fmt)] = float(np.mean(got == labels[label]))
                progress.step(f"accuracy {label} {fmt}")

    # Latency, interleaved across the models of each format.
    latency = {}
    for fmt in formats:
        paths = {label: reports[(label, fmt)].path for label in models if (label, fmt) in reports}
        image = None
        first = next(iter(paths), None)
        if first is not None and held_out[first] is not None:
            image = held_out[first][0]
        if paths and all(specs[k].shape == specs[first].shape for k in paths):
            stats = measure_latency(
                paths, image, num_threads=num_threads, warmup=warmup, runs=runs, seed=seed,
                on_round=lambda fmt=fmt: progress.step(f"latency {fmt}"),
            )  # fmt: skip
        else:  # models of different input sizes: each with its own synthetic image
            stats = {}
            for label, path in paths.items():
                stats.update(
                    measure_latency(
                        {label: path}, num_threads=num_threads, warmup=warmup, runs=runs, seed=seed
                    )
                )
            progress.step(f"latency {fmt}", warmup + runs)
        latency.update({(label, fmt): s for label, s in stats.items()})
        if not paths:
            progress.step(f"latency {fmt}", warmup + runs)

    # The rows.
    counts = {}
    for label, model in models.items():
        total_params, trainable = count_params(model)
        counts[label] = {
            "params": total_params,
            "trainable_params": trainable,
            "flops": count_flops(model) if flops else None,
        }
    columns = list(COLUMNS)
    at = columns.index("latency_min_ms") + 1
    columns[at:at] = [ratio_column(b) for b in baselines]
    rows = []
    for label in models:
        for fmt in formats:
            key = (label, fmt)
            row = _row(label, fmt, counts[label], reports.get(key), errors.get(key))
            row.update(_latency_fields(latency.get(key)), threads=num_threads)
            row.update(accuracy=accuracy.get(key), keras_accuracy=keras_accuracy.get(label))
            rows.append(row)
    by_key = {(r["model"], r["format"]): r for r in rows}
    for row in rows:
        for b in baselines:
            reference = by_key[(b, row["format"])]["latency_median_ms"]
            mine = row["latency_median_ms"]
            row[ratio_column(b)] = (
                None if reference is None or mine is None else float(mine / reference)
            )
    rows = [{c: row.get(c) for c in columns} for row in rows]

    config = {
        "num_threads": num_threads,
        "warmup": warmup,
        "runs": runs,
        "seed": seed,
        "max_samples": max_samples,
        "num_calibration_samples": num_calibration_samples,
        "held_out_samples": samples,
        "accuracy": has_labels,
        "interleaving": "per format: every round runs each model once, in a shuffled order",
        "flops_unit": "multiply-adds at batch 1",
    }
    result = BenchResult(
        rows=rows,
        columns=columns,
        baselines=baselines,
        formats=formats,
        config=config,
        skipped=dict(skipped or {}),
        reports=reports,
    )
    write_reports(result, files, overwrite)
    if verbose:
        log(result.table())
        log(f"Reports: {', '.join(result.files.values())}")
    return result


def _latency_fields(stats):
    if stats is None:
        return {}
    return {
        "runs": stats.runs,
        "xnnpack": stats.xnnpack,
        "latency_median_ms": stats.median_ms,
        "latency_p90_ms": stats.p90_ms,
        "latency_mean_ms": stats.mean_ms,
        "latency_min_ms": stats.min_ms,
    }


def _row(label, fmt, counts, report, error):
    """The model's counts and the export's figures (verification report) of one row."""
    row = {"model": label, "format": fmt, **counts, "error": error}
    if report is not None:
        held, probes = report.held_out, report.probes
        row.update(
            size_bytes=int(os.path.getsize(report.path)) if report.path else report.size_bytes,
            path=report.path,
            partitions=report.xnnpack_partitions,
            undelegated_ops=list(report.undelegated_ops),
            float_ops=[f"{f['op']} ({f['layer']})" for f in report.float_ops],
            widened_ranges=[f"{w['op']} ({w['layer']})" for w in report.widened_ranges],
            max_abs_error=held.max_abs_error if held else None,
            relative_error=held.relative_error if held else None,
            image_relative_error_median=held.median_image_relative_error if held else None,
            image_relative_error_p99=held.p99_image_relative_error if held else None,
            saturated_images=held.saturated_images if held else None,
            clipped_relative_error=held.clipped_relative_error if held else None,
            top1_agreement=held.top1_agreement if held else None,
            probe_relative_error=probes.relative_error if probes else None,
            probe_top1_agreement=probes.top1_agreement if probes else None,
            held_out_source=report.held_out_source,
            verified=report.passed,
            failures=list(report.failures),
        )
    return row


# --- reports -----------------------------------------------------------------------------------


def write_reports(result, files, overwrite=False):
    """Writes the table, CSV, JSON and plots of `result` to `files` (`{kind: path}`) atomically;
    sets `result.files`."""
    written = {}
    if "table" in files:
        written["table"] = write_text(files["table"], result.table() + "\n", overwrite)
    if "csv" in files:
        written["csv"] = write_text(files["csv"], result.to_csv(), overwrite)
    if "json" in files:
        written["json"] = write_text(files["json"], result.to_json() + "\n", overwrite)
    if "latency_plot" in files:
        written["latency_plot"] = write_bytes(
            files["latency_plot"], plot_latency_overhead(result), overwrite
        )
    if "fidelity_plot" in files:
        written["fidelity_plot"] = write_bytes(
            files["fidelity_plot"], plot_cost_vs_fidelity(result), overwrite
        )
    result.files = written
    return written


def _fmt(value, spec):
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, list):
        return str(len(value))
    return spec.format(value)


def format_table(rows, baselines, markdown=False):
    """One line per model and format: the figures that decide which block to ship."""
    cells = [
        ("model", "model", "{}"),
        ("format", "format", "{}"),
        ("params", "params", "{:,}"),
        ("flops", "MFLOPs", None),
        ("size_bytes", "KiB", None),
        ("latency_median_ms", "median ms", "{:.3f}"),
        ("latency_p90_ms", "p90 ms", "{:.3f}"),
        *[(ratio_column(b), f"x {b}", "{:.3f}") for b in baselines],
        ("partitions", "parts", "{}"),
        ("undelegated_ops", "outside", None),
        ("float_ops", "float", None),
        ("relative_error", "rel err", "{:.2g}"),
        ("top1_agreement", "top-1 agr", "{:.3f}"),
        ("probe_relative_error", "probe err", "{:.2g}"),
        ("accuracy", "acc", "{:.3f}"),
        ("verified", "verified", None),
    ]
    header = [title for _, title, _ in cells]
    lines = []
    for row in rows:
        line = []
        for key, _, spec in cells:
            value = row.get(key)
            if key == "flops":
                text = _fmt(None if value is None else value / 1e6, "{:.1f}")
            elif key == "size_bytes":
                text = _fmt(None if value is None else value / 1024, "{:.1f}")
            elif key == "verified" and row.get("error"):
                text = "no export"
            else:
                text = _fmt(value, spec or "{}")
            line.append(text)
        lines.append(line)
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        out += ["| " + " | ".join(line) + " |" for line in lines]
    else:
        widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
        render = lambda parts: "  ".join(  # noqa: E731
            p.ljust(w) if i < 2 else p.rjust(w)
            for i, (p, w) in enumerate(zip(parts, widths, strict=True))
        )
        out = [render(header), "-" * len(render(header))] + [render(line) for line in lines]
    ratio_note = ", ".join(f"'x {b}'" for b in baselines)
    out += [
        "",
        f"Latency: LiteRT interpreter with XNNPACK, batch 1, median and p90 of interleaved "
        f"runs; {ratio_note}: median over that model's median in the same format. parts: "
        "XNNPACK partitions; outside: ops left to LiteRT's kernels; float: float ops in full "
        "int8. rel err / top-1 agr: .tflite against the Keras model on held-out images; probe "
        "err: on out-of-distribution probes; acc: top-1 accuracy of the .tflite (labels given).",
    ]
    for row in rows:
        if row.get("error"):
            out.append(f"{row['model']} {row['format']}: {row['error']}")
        elif row.get("xnnpack") is False:
            out.append(
                f"{row['model']} {row['format']}: XNNPACK could not take the model; timed on "
                "LiteRT's own kernels."
            )
    return "\n".join(out)


def _figure(width, height):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(figure):
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def plot_latency_overhead(result):
    """PNG bytes: latency overhead over the first baseline, in percent, per model and format."""
    baseline = result.baselines[0]
    labels = list(dict.fromkeys(r["model"] for r in result.rows if r["model"] != baseline))
    figure = _figure(max(6.0, 0.35 * len(labels) * len(result.formats) + 2.0), 4.5)
    axes = figure.add_subplot()
    width = 0.8 / len(result.formats)
    for k, fmt in enumerate(result.formats):
        values = []
        for label in labels:
            ratio = result.row(label, fmt)[ratio_column(baseline)]
            values.append(np.nan if ratio is None else 100.0 * (ratio - 1.0))
        positions = np.arange(len(labels)) + (k - (len(result.formats) - 1) / 2) * width
        axes.bar(positions, values, width, label=fmt)
    axes.axhline(0.0, color="black", linewidth=0.8)
    axes.set_xticks(np.arange(len(labels)), labels, rotation=30, ha="right")
    axes.set_ylabel(f"latency over {baseline} (%)")
    axes.set_title(
        f"Latency over {baseline}, per model and format\n{result.config['num_threads']} "
        f"thread(s), median of {result.config['runs']} interleaved runs, LiteRT + XNNPACK",
        fontsize=10,
    )
    for container in axes.containers:
        axes.bar_label(container, fmt="%+.0f%%", fontsize=7, padding=2)
    axes.margins(y=0.15)
    if labels:
        axes.legend(title="format", fontsize=8)
    return _png(figure)


def plot_cost_vs_fidelity(result):
    """PNG bytes: accuracy (labels given) or relative error against latency, per format."""
    use_accuracy = bool(result.config.get("accuracy"))
    key = "accuracy" if use_accuracy else "relative_error"
    count = len(result.formats)
    figure = _figure(4.0 * count + 0.5, 4.0)
    for k, fmt in enumerate(result.formats):
        axes = figure.add_subplot(1, count, k + 1)
        rows = [
            r
            for r in result.rows
            if r["format"] == fmt and r["latency_median_ms"] is not None and r[key] is not None
        ]
        x = [r["latency_median_ms"] for r in rows]
        y = [r[key] for r in rows]
        axes.scatter(x, y, color=f"C{k}")
        for r, xi, yi in zip(rows, x, y, strict=True):
            axes.annotate(r["model"], (xi, yi), textcoords="offset points", xytext=(3, 3))
        if not use_accuracy and y and min(y) > 0 and max(y) > 10 * min(y):
            axes.set_yscale("log")
        axes.set_xlabel("median latency (ms)")
        axes.set_ylabel(
            "top-1 accuracy of the .tflite" if use_accuracy else "relative error vs Keras"
        )
        axes.set_title(fmt)
        axes.grid(True, alpha=0.3)
    return _png(figure)
