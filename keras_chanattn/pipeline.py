"""The main job: for the plain backbone and each block, build -> fit -> export -> verify -> report.

`run_pipeline(PipelineConfig(...))` is what `chanattn run` calls. Its default configuration
(`export/pipeline.json` at the top of the repository holds the same values) trains a CIFAR
ResNet-20 (0.27 M parameters, 32x32 input) on the embedded digits for every registered
block, which needs no network. (A from-scratch MobileNetV2 does not learn the 1,347 digit
images in a few epochs at 32x32: it reduces them to 1x1 maps; pass `backbone="mobilenet_v2"`
for real data at larger sizes.)
"""

import dataclasses
import datetime
import json
import pathlib
import time

from keras_chanattn.layers.registry import list_attention

BACKBONES = ("cifar_resnet", "mobilenet_v2", "resnet")
PLAIN = "plain"


@dataclasses.dataclass
class PipelineConfig:
    """What the main job builds, trains, exports and measures. Plain data throughout.

    Attributes:
        backbone: `"cifar_resnet"`, `"mobilenet_v2"` or `"resnet"`. Defaults to
            `"cifar_resnet"`.
        backbone_kwargs: arguments of the backbone builder (e.g. `{"depth": 20}` or
            `{"alpha": 0.35}`). Defaults to `{"depth": 20, "shortcut": "projection"}`: the
            parameter-free zero-padding shortcut subsamples with a strided slice, which
            XNNPACK does not take, splitting the phone graph.
        blocks: attention names to compare (`None`: every registered block). Defaults to
            `None`.
        include_plain: also run the backbone without attention. Defaults to `True`.
        attention_kwargs: per-block constructor arguments, `{name: {arg: value}}`.
            Defaults to `{"sa": {"groups": 8}, "sge": {"groups": 8}}`: the first stage of
            a CIFAR ResNet has 16 channels, fewer than the papers' 64 groups.
        data: `"digits"`, `"tfds:<name>"` or an image folder. Defaults to `"digits"`.
        data_kwargs: arguments of the data source (e.g. `{"data_dir": ...}`). Defaults to `{}`.
        image_size: input height and width. Defaults to `32`.
        epochs: fine-tuning epochs per model. Five because Triplet, the slowest learner,
            measured 0.987 validation accuracy and full-int8 agreement 1.000 after five, and
            0.907 and 0.988 (at the 0.98 check) after three (`chanattn run --blocks triplet
            --no-plain --epochs N`, on the project's 2-core CPU machine). Defaults to `5`.
        batch_size: batch size. Defaults to `64`.
        optimizer: `"adamw"` or `"sgd"`. Defaults to `"adamw"`.
        learning_rate: peak learning rate. Defaults to `2e-3`.
        weight_decay: decoupled weight decay (not on biases, norms and blocks). Defaults
            to `0.05`.
        formats: TFLite formats to export and verify. Defaults to all four.
        out_dir: where artefacts and the report go (one sub-folder per run). Defaults to
            `"export/runs"`.
        run_name: name of the run's folder; `None` for a time stamp. Defaults to `None`.
        overwrite: replace an existing run folder of the same name. Defaults to `False`.
        num_threads: LiteRT threads for verification and latency. Defaults to `2`.
        latency_runs: timed rounds per format, each running every model once in a
            shuffled order. Defaults to `30`.
        calibration_samples: training images calibrating full int8. Defaults to `200`.
        seed: seed of data split, initialisation and shuffling. Defaults to `0`.
        deterministic: train with TensorFlow's op determinism (`TrainConfig.deterministic`),
            so a rerun on the same machine and software gives the same models and figures.
            Defaults to `True`.
    """

    backbone: str = "cifar_resnet"
    backbone_kwargs: dict = dataclasses.field(
        default_factory=lambda: {"depth": 20, "shortcut": "projection"}
    )
    blocks: list | None = None
    include_plain: bool = True
    attention_kwargs: dict = dataclasses.field(
        default_factory=lambda: {"sa": {"groups": 8}, "sge": {"groups": 8}}
    )
    data: str = "digits"
    data_kwargs: dict = dataclasses.field(default_factory=dict)
    image_size: int = 32
    epochs: int = 5
    batch_size: int = 64
    optimizer: str = "adamw"
    learning_rate: float = 2e-3
    weight_decay: float = 0.05
    formats: list = dataclasses.field(
        default_factory=lambda: ["float32", "float16", "dynamic", "int8"]
    )
    out_dir: str = "export/runs"
    run_name: str | None = None
    overwrite: bool = False
    num_threads: int = 2
    latency_runs: int = 30
    calibration_samples: int = 200
    seed: int = 0
    deterministic: bool = True

    def __post_init__(self):
        if self.backbone not in BACKBONES:
            raise ValueError(f"`backbone` must be one of {list(BACKBONES)}, got {self.backbone!r}.")
        if self.blocks is not None:
            unknown = sorted(set(self.blocks) - set(list_attention()))
            if unknown:
                raise ValueError(
                    f"Unknown blocks {unknown}; registered: {', '.join(list_attention())}."
                )
        if self.epochs < 1:
            raise ValueError(f"`epochs` must be >= 1, got {self.epochs}.")

    @classmethod
    def from_file(cls, path, **overrides):
        """Reads a JSON configuration; `overrides` (not None) replace its values."""
        values = json.loads(pathlib.Path(path).read_text())
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"Unknown keys {unknown} in {path}.")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def variants(self):
        """The model variants of the run: `"plain"` first, then the blocks."""
        blocks = list_attention() if self.blocks is None else list(self.blocks)
        return ([PLAIN] if self.include_plain else []) + blocks


def build_model(config, variant, num_classes, channels=3):
    """Builds the configured backbone with `variant` (a block name or `"plain"`), logits out."""
    from keras_chanattn import models

    attention = None if variant == PLAIN else variant
    kwargs = dict(config.backbone_kwargs)
    kwargs.update(config.attention_kwargs.get(variant, {}) if attention else {})
    builder = {
        "mobilenet_v2": models.mobilenet_v2,
        "cifar_resnet": models.cifar_resnet,
        "resnet": models.resnet,
    }[config.backbone]
    return builder(
        attention=attention,
        input_shape=(config.image_size, config.image_size, channels),
        num_classes=num_classes,
        classifier_activation=None,
        name=f"{variant}_{config.backbone}",
        **kwargs,
    )


def _run_dir(config):
    name = config.run_name or datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = pathlib.Path(config.out_dir) / name
    if path.exists() and any(path.iterdir()) and not config.overwrite:
        raise FileExistsError(
            f"{path} already holds a run; pass overwrite=True (--overwrite) or another run_name."
        )
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_pipeline(config=None, verbose=1, log=print):
    """Runs the main job and writes its report; returns the rows of the results table.

    Args:
        config: a `PipelineConfig`. Defaults to `PipelineConfig()`.
        verbose: `model.fit` verbosity (1 shows a progress bar). Defaults to `1`.
        log: where progress lines go. Defaults to `print`.

    Returns:
        `(rows, run_dir)`: one dict per variant, and the folder holding the report.
    """
    from keras_chanattn.data import load_data
    from keras_chanattn.train import TrainConfig, fit_classifier

    config = config or PipelineConfig()
    run_dir = _run_dir(config)
    (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))
    data = load_data(config.data, config.image_size, seed=config.seed, **config.data_kwargs)
    train_config = TrainConfig(
        epochs=config.epochs,
        batch_size=config.batch_size,
        optimizer=config.optimizer,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        seed=config.seed,
        deterministic=config.deterministic,
        flip=False,
    )
    variants = config.variants()
    calibration, held_out = _export_images(data, config)
    rows, models, exported = [], {}, {}
    started = time.perf_counter()
    for i, variant in enumerate(variants, 1):
        log(f"[{i}/{len(variants)}] {variant}: fine-tuning {config.backbone} on {config.data}")
        model, summary = fit_classifier(
            lambda v=variant: build_model(config, v, data.num_classes, data.image_shape[-1]),
            data,
            train_config,
            verbose=verbose,
        )
        model_dir = run_dir / variant
        model_dir.mkdir()
        model.save(model_dir / "model.keras")
        models[variant] = model
        rows.append(
            {
                "variant": variant,
                "params": int(model.count_params()),
                "val_accuracy": summary["val_accuracy"],
                "seconds_per_epoch": summary["seconds_per_epoch"],
            }
        )
        if config.formats:
            log(f"[{i}/{len(variants)}] {variant}: exporting to {', '.join(config.formats)}")
            exported[variant] = export_variant(model, model_dir, calibration, held_out, config)
            rows[-1]["failures"] = [
                f"{fmt}: {failure}"
                for fmt, report in exported[variant].items()
                for failure in report.failures
            ]
    measured = None
    if config.formats:
        log(f"Measuring {len(models)} models x {len(config.formats)} formats (interleaved)")
        measured = measure(models, exported, run_dir / "bench", calibration, held_out, config,
                           verbose)  # fmt: skip
    elapsed = time.perf_counter() - started
    write_report(run_dir, config, rows, measured, elapsed)
    log(format_table(rows))
    if measured is not None:
        log(measured.table())
    failed = [(r["variant"], f) for r in rows for f in r.get("failures", [])]
    for variant, failure in failed:
        log(f"VERIFICATION FAILED {variant}: {failure}")
    log(f"Report: {run_dir / 'report.md'} ({elapsed:.0f} s)")
    return rows, run_dir


def _export_images(data, config):
    """Calibration images (from the training split) and held-out `(images, labels)`."""
    import numpy as np

    if not config.formats:
        return None, None

    def take(ds, n):
        pairs = list(ds.take(n).as_numpy_iterator())
        return np.stack([x for x, _ in pairs]), np.array([y for _, y in pairs])

    return take(data.train, config.calibration_samples)[0], take(data.validation, 256)


def export_variant(model, model_dir, calibration, held_out, config):
    """Exports one trained model to SavedModel and each TFLite format, verifying each.

    Verification failures do not stop the run: the file is written, the report JSON beside
    it lists the failures (the run's exit code says so).

    Returns:
        `{format: VerificationReport}`.
    """
    from keras_chanattn.export import export_saved_model, export_tflite

    images = held_out[0]
    export_saved_model(model, model_dir / "saved_model", check_data=images[:32])
    return {
        fmt: export_tflite(
            model,
            model_dir / f"model_{fmt}.tflite",
            fmt,
            representative_data=calibration if fmt == "int8" else None,
            validation_data=images,
            enforce=False,
            report_path=model_dir / f"model_{fmt}.json",
            num_threads=config.num_threads,
            seed=config.seed,
        )
        for fmt in config.formats
    }


def measure(models, exported, out_dir, calibration, held_out, config, verbose):
    """Times the exported files side by side (interleaved) and writes the bench reports."""
    from keras_chanattn.bench import bench

    return bench(
        models,
        out_dir,
        formats=config.formats,
        baseline="plain" if "plain" in models else None,
        representative_data=calibration,
        validation_data=held_out,
        exported=exported,
        num_threads=config.num_threads,
        runs=config.latency_runs,
        overwrite=config.overwrite,
        seed=config.seed,
        verbose=verbose,
        log=lambda *_: None,
    )


COLUMNS = (
    ("variant", "block", "{}"),
    ("params", "params", "{:,}"),
    ("val_accuracy", "val acc", "{:.4f}"),
    ("seconds_per_epoch", "s/epoch", "{:.1f}"),
    ("failures", "verified", "{}"),
)


def format_table(rows, columns=COLUMNS):
    """A Markdown table of `rows` (the columns present in the first row)."""
    cols = [c for c in columns if rows and c[0] in rows[0]]
    lines = [
        "| " + " | ".join(title for _, title, _ in cols) + " |",
        "|" + "|".join("---" for _ in cols) + "|",
    ]
    for row in rows:
        cells = [_cell(row.get(key), fmt) for key, _, fmt in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value, fmt):
    if value is None:
        return "-"
    if isinstance(value, list):  # the failures
        return "FAILED" if value else "yes"
    return fmt.format(value)


def write_report(run_dir, config, rows, measured, elapsed):
    """Writes `report.md`, `results.json` and `results.csv` into `run_dir`."""
    import csv

    (run_dir / "results.json").write_text(json.dumps(rows, indent=2))
    with open(run_dir / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)
    text = [
        f"# keras-chanattn run `{run_dir.name}`",
        "",
        f"Backbone `{config.backbone}` {config.backbone_kwargs}, data `{config.data}` at "
        f"{config.image_size}x{config.image_size}, {config.epochs} epochs, wall time "
        f"{elapsed:.0f} s.",
        "",
        "## Training (held-out accuracy) and export verification",
        "",
        format_table(rows),
    ]
    if measured is not None:
        text += [
            "",
            f"## On-device-style measurement (LiteRT + XNNPACK, {config.num_threads} threads, "
            f"{config.latency_runs} interleaved runs)",
            "",
            measured.table(markdown=True),
            "",
            "![latency overhead](bench/latency_overhead.png)",
            "![cost vs fidelity](bench/cost_vs_fidelity.png)",
            "",
            "Machine-readable: `bench/bench.csv`, `bench/bench.json`; per-file verification "
            "reports beside each `.tflite`.",
        ]
    failed = [(r["variant"], f) for r in rows for f in r.get("failures", [])]
    if failed:
        text += ["", "## Verification failures", ""] + [f"- {v}: {f}" for v, f in failed]
    text += ["", "Configuration: `config.json`; per-variant artefacts in the sub-folders."]
    (run_dir / "report.md").write_text("\n".join(text) + "\n")
