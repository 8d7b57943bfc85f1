"""The main job: for the plain backbone and each block, build -> fit -> export -> verify -> report.

`run_pipeline(PipelineConfig(...))` is what `chanattn run` calls. Its default configuration
(`export/pipeline.json` holds the same values) fine-tunes a CIFAR ResNet-20 on the embedded
digits, plain and with the three seed papers' blocks (SE, SRM, Shuffle Attention), which
needs no network; `blocks="all"` compares every registered block.
"""

import dataclasses
import datetime
import json
import pathlib
import time

import keras

from keras_chanattn.export.files import replacing_folder
from keras_chanattn.layers.registry import list_attention
from keras_chanattn.models.presets import PLAIN, get_preset
from keras_chanattn.train import TrainConfig

DEFAULT_BLOCKS = ("se", "srm", "sa")
ALL_BLOCKS = "all"


def default_train_config():
    """The main job's recipe: a short AdamW fine-tune, deterministic, without augmentation.

    Three epochs on the clean digits score higher unaugmented (docs/benchmarks.md) and save
    the augmentation's per-batch work.
    """
    return TrainConfig(
        epochs=3,
        optimizer="adamw",
        learning_rate=2e-3,
        weight_decay=0.05,
        augment=False,
        flip=False,
        deterministic=True,
    )


@dataclasses.dataclass
class PipelineConfig:
    """What the main job builds, trains, exports and measures. Plain data throughout.

    Attributes:
        backbone: a preset of `keras_chanattn.models.presets` (`"resnet20"`,
            `"mobilenet_v2"`, ...) or a builder family (`"cifar_resnet"`). Defaults to
            `"resnet20"`.
        backbone_kwargs: builder arguments, merged over the preset's. Defaults to
            `{"shortcut": "projection"}`: the parameter-free shortcut subsamples with a
            strided slice, which XNNPACK does not take, splitting the phone graph.
        blocks: attention names to compare, or `"all"` for every registered block.
            Defaults to `["se", "srm", "sa"]`.
        include_plain: also run the backbone without attention. Defaults to `True`.
        attention_kwargs: per-block constructor arguments, `{name: {arg: value}}`.
            Defaults to what each block declares for a small network of 16 channels (a CIFAR
            ResNet's first stage; e.g. 8 groups for SA and SGE, not the papers' 64).
        data: `"digits"`, `"tfds:<name>"` or an image folder. Defaults to `"digits"`.
        data_kwargs: arguments of the data source (e.g. `{"data_dir": ...}`). Defaults to `{}`.
        image_size: input height and width. Defaults to `16`: the 8x8 digits score as high
            as at 24 (docs/benchmarks.md) for less than half the work; a CIFAR ResNet takes
            any size from 8 up.
        train: the fine-tuning recipe, a `keras_chanattn.train.TrainConfig` (its `seed` also
            seeds the data split and the export's probes). Defaults to
            `default_train_config()`.
        formats: TFLite formats to export and verify. Defaults to all four.
        out_dir: where artefacts and the report go (one sub-folder per run). Defaults to
            `"export/runs"`.
        run_name: name of the run's folder; `None` for a time stamp. Defaults to `None`.
        overwrite: replace an existing run folder of the same name. Defaults to `False`.
        num_threads: LiteRT threads for verification and latency. Defaults to `2`.
        latency_runs: timed rounds per format, each running every model once in a
            shuffled order. Defaults to `30`.
        calibration_samples: training images calibrating full int8. Defaults to `200`.
    """

    backbone: str = "resnet20"
    backbone_kwargs: dict = dataclasses.field(default_factory=lambda: {"shortcut": "projection"})
    blocks: list | str = dataclasses.field(default_factory=lambda: list(DEFAULT_BLOCKS))
    include_plain: bool = True
    attention_kwargs: dict = dataclasses.field(default_factory=lambda: small_network_kwargs(16))
    data: str = "digits"
    data_kwargs: dict = dataclasses.field(default_factory=dict)
    image_size: int = 16
    train: TrainConfig = dataclasses.field(default_factory=default_train_config)
    formats: list = dataclasses.field(
        default_factory=lambda: ["float32", "float16", "dynamic", "int8"]
    )
    out_dir: str = "export/runs"
    run_name: str | None = None
    overwrite: bool = False
    num_threads: int = 2
    latency_runs: int = 30
    calibration_samples: int = 200

    def __post_init__(self):
        get_preset(self.backbone)  # an unknown backbone names the known ones
        if isinstance(self.train, dict):
            self.train = _train_config(self.train)
        if self.blocks != ALL_BLOCKS:
            unknown = sorted(set(self.blocks) - set(list_attention()))
            if unknown:
                raise ValueError(
                    f"Unknown blocks {unknown}; registered: {', '.join(list_attention())} "
                    f"(or {ALL_BLOCKS!r} for every one)."
                )
        if not self.variants():
            raise ValueError(
                "Nothing to run: no blocks and include_plain=False; name blocks (e.g. "
                "--blocks se) or keep the plain backbone."
            )
        self._check_values()

    def _check_values(self):
        """Refuses, before any work, settings the job would only trip over later."""
        from keras_chanattn.export.checks import QUANTIZATIONS

        unknown = [f for f in self.formats if f not in QUANTIZATIONS]
        if unknown or len(set(self.formats)) != len(self.formats):
            raise ValueError(
                f"`formats` must be distinct TFLite formats among {', '.join(QUANTIZATIONS)} "
                f"(or none), got {self.formats}."
            )
        for name in ("image_size", "num_threads", "latency_runs", "calibration_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")
        if self.image_size < 8:
            raise ValueError(f"`image_size` must be at least 8 pixels, got {self.image_size}.")
        for name in ("backbone_kwargs", "attention_kwargs", "data_kwargs"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(
                    f"`{name}` must be a JSON object of arguments, got {getattr(self, name)!r}."
                )
        if self.run_name is not None and (
            not self.run_name.strip() or pathlib.Path(self.run_name).name != self.run_name
        ):
            raise ValueError(
                f"`run_name` must be a plain folder name (no path separators), got "
                f"{self.run_name!r}."
            )

    @classmethod
    def from_file(cls, path=None, **overrides):
        """Reads a JSON configuration (`None`: the defaults); `overrides` (not None) replace
        its values."""
        values = json.loads(pathlib.Path(path).read_text()) if path is not None else {}
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"Unknown keys {unknown} in {path}.")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def to_dict(self):
        """The configuration as plain data (what `from_file` reads back)."""
        return dataclasses.asdict(self)

    def variants(self):
        """The model variants of the run: `"plain"` first, then the blocks."""
        blocks = list_attention() if self.blocks == ALL_BLOCKS else list(self.blocks)
        return ([PLAIN] if self.include_plain else []) + blocks


def small_network_kwargs(channels):
    """`{block: kwargs}` for every registered block that needs arguments at `channels`."""
    from keras_chanattn.layers import registry

    found = {name: registry.small_network_kwargs(name, channels) for name in list_attention()}
    return {name: kwargs for name, kwargs in found.items() if kwargs}


def _train_config(values):
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"Unknown training keys {unknown}; known: {', '.join(sorted(known))}.")
    return TrainConfig(**values)


def build_model(config, variant, num_classes, channels=3):
    """Builds the configured backbone with `variant` (a block name or `"plain"`), logits out."""
    from keras_chanattn.models.presets import build_model as build_preset

    kwargs = dict(config.backbone_kwargs)
    kwargs.update(config.attention_kwargs.get(variant, {}) if variant != PLAIN else {})
    return build_preset(
        config.backbone,
        variant,
        input_shape=(config.image_size, config.image_size, channels),
        num_classes=num_classes,
        classifier_activation=None,
        name=f"{variant}_{config.backbone}",
        **kwargs,
    )


REPORT = "report.md"  # written last: a run folder without it is an unfinished run


def _run_dir(config):
    """The run's folder, checked before any work: a finished run (it holds `report.md`) is
    only replaced under `overwrite`; an unfinished one (a failed or interrupted run) is."""
    name = config.run_name or datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = pathlib.Path(config.out_dir) / name
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} is a file, not a run folder; choose another run_name.")
    if (path / REPORT).exists() and not config.overwrite:
        raise FileExistsError(
            f"{path} already holds a finished run; pass overwrite=True (--overwrite) to "
            "replace it, or another run_name (--name)."
        )
    if path.is_dir() and any(path.iterdir()) and not (path / REPORT).exists():
        if not (path / "config.json").exists():
            raise FileExistsError(
                f"{path} is a non-empty folder that is not a run; choose another run_name."
            )
    return path


def run_pipeline(config=None, verbose=1, log=print):
    """Runs the main job and writes its report; returns the rows of the results table.

    Everything is checked, and the data loaded, before the run folder is touched. Replacing
    a finished run (`overwrite`) keeps it until the new run has finished: a failed or
    interrupted replace puts it back as it was.

    Args:
        config: a `PipelineConfig`. Defaults to `PipelineConfig()`.
        verbose: `1` shows one progress bar per phase, `0` none. Defaults to `1`.
        log: where the per-model summaries and the table go. Defaults to `print`.

    Returns:
        `(rows, run_dir)`: one dict per variant, and the folder holding the report.

    Raises:
        FileExistsError: the run folder holds a finished run and `overwrite` is false.
    """
    from keras_chanattn.data import load_data

    config = config or PipelineConfig()
    run_dir = _run_dir(config)
    started = time.perf_counter()
    data = load_data(config.data, config.image_size, seed=config.train.seed, **config.data_kwargs)
    if int(data.validation.cardinality()) == 0:
        raise ValueError(
            f"{config.data!r} has no validation images, which the job verifies and measures "
            "on; give the data source a validation split (e.g. validation_fraction > 0)."
        )
    with replacing_folder(run_dir, REPORT):
        rows = _run_phases(config, data, run_dir, started, verbose, log)
    return rows, run_dir


def _run_phases(config, data, run_dir, started, verbose, log):
    from keras_chanattn.report import failures, results_table, write_report

    (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    models, rows = train_variants(config, data, run_dir, verbose, log)
    measured = None
    if config.formats:
        calibration, held_out = _export_images(data, config)
        exported = export_variants(models, rows, run_dir, calibration, held_out, config, verbose)
        for row in rows:
            log(f"{row['variant']:>12}: {_export_summary(row, config.formats)}")
        measured = measure(models, exported, run_dir / "bench", calibration, held_out, config,
                           verbose)  # fmt: skip
    elapsed = time.perf_counter() - started
    write_report(run_dir, config, rows, measured, elapsed)
    log(results_table(rows))
    if measured is not None:
        log(measured.table())
    for variant, failure in failures(rows):
        log(f"VERIFICATION FAILED {variant}: {failure}")
    log(f"Report: {run_dir / REPORT} ({elapsed:.0f} s)")
    return rows


def _progress(target, verbose, unit):
    return keras.utils.Progbar(target, verbose=verbose, unit_name=unit)


class _EpochProgress(keras.callbacks.Callback):
    """Moves a phase's progress bar on by one at each epoch's end."""

    def __init__(self, bar):
        super().__init__()
        self.bar = bar

    def on_epoch_end(self, epoch, logs=None):
        self.bar.add(1)


def train_variants(config, data, run_dir, verbose, log):
    """Phase 1: fine-tunes every variant, saves `<variant>/model.keras`; one line per model."""
    from keras_chanattn.train import fit_classifier

    variants = config.variants()
    log(f"Training {len(variants)} models ({config.backbone} on {config.data}, "
        f"{config.train.epochs} epochs each)")  # fmt: skip
    bar = _progress(len(variants) * config.train.epochs, verbose, "epoch")
    models, rows = {}, []
    for variant in variants:
        model, summary = fit_classifier(
            lambda v=variant: build_model(config, v, data.num_classes, data.image_shape[-1]),
            data,
            config.train,
            verbose=0,
            callbacks=[_EpochProgress(bar)],
        )
        (run_dir / variant).mkdir()
        model.save(run_dir / variant / "model.keras")
        models[variant] = model
        rows.append(
            {
                "variant": variant,
                "params": int(model.count_params()),
                "val_accuracy": summary["val_accuracy"],
                "seconds_per_epoch": summary["seconds_per_epoch"],
            }
        )
    for row in rows:
        log(f"{row['variant']:>12}: {row['params']:,} params, validation accuracy "
            f"{row['val_accuracy']:.4f}, {row['seconds_per_epoch']:.1f} s/epoch")  # fmt: skip
    return models, rows


def _export_images(data, config):
    """Calibration images (from the training split) and held-out `(images, labels)`."""
    import numpy as np

    def take(ds, n):
        pairs = list(ds.take(n).as_numpy_iterator())
        return np.stack([x for x, _ in pairs]), np.array([y for _, y in pairs])

    return take(data.train, config.calibration_samples)[0], take(data.validation, 256)


def export_variants(models, rows, run_dir, calibration, held_out, config, verbose):
    """Phase 2: exports and verifies every model; each row gets its `failures` list."""
    bar = _progress(len(models) * (1 + len(config.formats)), verbose, "file")
    exported = {}
    for row in rows:
        variant = row["variant"]
        exported[variant] = export_variant(
            models[variant], run_dir / variant, calibration, held_out, config, bar
        )
        row["failures"] = [
            f"{fmt}: {failure}"
            for fmt, report in exported[variant].items()
            for failure in report.failures
        ]
    return exported


def export_variant(model, model_dir, calibration, held_out, config, bar=None):
    """Exports one trained model to SavedModel and each TFLite format, verifying each.

    Verification failures do not stop the run: the file is written, the report JSON beside
    it lists the failures (the run's exit code says so with `--strict`).

    Returns:
        `{format: VerificationReport}`.
    """
    from keras_chanattn.export import PreparedModel, export_saved_model, export_tflite

    images = held_out[0]
    reports = {}
    # One inference form, one batch-1 SavedModel converted to every format, and the Keras
    # outputs computed once, for all the artefacts.
    with PreparedModel(model) as prepared:
        export_saved_model(
            model, model_dir / "saved_model", check_data=images[:32], prepared=prepared
        )
        for fmt in config.formats:
            if bar is not None:
                bar.add(1)
            reports[fmt] = export_tflite(
                model,
                model_dir / f"model_{fmt}.tflite",
                fmt,
                representative_data=calibration if fmt == "int8" else None,
                validation_data=images,
                enforce=False,
                report_path=model_dir / f"model_{fmt}.json",
                num_threads=config.num_threads,
                seed=config.train.seed,
                prepared=prepared,
            )
    if bar is not None:
        bar.add(1)
    return reports


def _export_summary(row, formats):
    if row["failures"]:
        return f"{len(row['failures'])} failed check(s): " + "; ".join(row["failures"])
    return f"SavedModel and {', '.join(formats)} TFLite written, all verified"


def measure(models, exported, out_dir, calibration, held_out, config, verbose):
    """Phase 3: times the exported files side by side (interleaved), writes the bench reports."""
    from keras_chanattn.bench import bench

    return bench(
        models,
        out_dir,
        formats=config.formats,
        baseline=PLAIN if PLAIN in models else None,
        representative_data=calibration,
        validation_data=held_out,
        exported=exported,
        num_threads=config.num_threads,
        runs=config.latency_runs,
        overwrite=config.overwrite,
        seed=config.train.seed,
        verbose=verbose,
        log=lambda *_: None,
    )
