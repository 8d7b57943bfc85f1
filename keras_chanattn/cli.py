"""`chanattn <command>`: the command line; each sub-command parses arguments and calls a room.

Sub-commands register themselves in `COMMANDS` through `command(...)`; each is a function
taking the parsed `argparse.Namespace` and returning an exit code.
"""

import argparse
import dataclasses
import json
import os
import sys

COMMANDS = {}


def command(name, help_text, arguments=()):
    """Decorator registering a sub-command.

    Args:
        name: the sub-command's name.
        help_text: one line for `chanattn --help`.
        arguments: `(flags, kwargs)` pairs passed to `ArgumentParser.add_argument`.
    """

    def decorator(func):
        COMMANDS[name] = (func, help_text, tuple(arguments))
        return func

    return decorator


@command("list", "List the registered attention blocks.")
def _list(args):
    from keras_chanattn.layers import get_attention_class, list_attention

    for name in list_attention():
        cls = get_attention_class(name)
        summary = (cls.__doc__ or "").strip().splitlines()[0]
        print(f"{name:<20} {cls.__name__:<28} {summary}")
    return 0


def _csv(text):
    return [part.strip() for part in text.split(",") if part.strip()]


@command(
    "run",
    "The main job: fine-tune the plain backbone and each block, export, verify, report.",
    [
        (
            ("--config",),
            {
                "default": None,
                "help": "JSON config (default: built-in defaults, "
                "the same as export/pipeline.json)",
            },
        ),  # fmt: skip
        (
            ("--blocks",),
            {
                "type": _csv,
                "default": None,
                "help": "comma-separated block names, or 'all' (default: se,srm,sa)",
            },
        ),  # fmt: skip
        (("--no-plain",), {"action": "store_true", "help": "skip the plain backbone"}),
        (
            ("--backbone",),
            {"default": None, "help": "a preset (resnet20, mobilenet_v2, ...; see `params`)"},
        ),  # fmt: skip
        (("--data",), {"default": None, "help": "digits, tfds:<name> or an image folder"}),
        (("--image-size",), {"type": int, "default": None}),
        (("--epochs",), {"type": int, "default": None}),
        (
            ("--formats",),
            {"type": _csv, "default": None, "help": "TFLite formats, comma-separated, or none"},
        ),
        (("--out",), {"dest": "out_dir", "default": None, "help": "runs folder"}),
        (("--name",), {"dest": "run_name", "default": None, "help": "the run's folder name"}),
        (("--overwrite",), {"action": "store_true", "help": "replace a run of the same name"}),
        (("--quiet",), {"action": "store_true", "help": "no progress bars"}),
        (
            ("--strict",),
            {"action": "store_true", "help": "exit with status 1 if any verification failed"},
        ),
    ],
)
def _run(args):
    from keras_chanattn.pipeline import ALL_BLOCKS, PipelineConfig, run_pipeline

    overrides = {
        "blocks": ALL_BLOCKS if args.blocks == [ALL_BLOCKS] else args.blocks,
        "backbone": args.backbone,
        "data": args.data,
        "image_size": args.image_size,
        "formats": [] if args.formats == ["none"] else args.formats,
        "out_dir": args.out_dir,
        "run_name": args.run_name,
        "include_plain": False if args.no_plain else None,
        "overwrite": True if args.overwrite else None,
    }
    if args.config:
        config = PipelineConfig.from_file(args.config, **overrides)
    else:
        config = PipelineConfig(**{k: v for k, v in overrides.items() if v is not None})
    if args.epochs is not None:
        config.train = dataclasses.replace(config.train, epochs=args.epochs)
    rows, _ = run_pipeline(config, verbose=0 if args.quiet else 1)
    # The job's purpose is the comparison: a block failing verification is a finding,
    # listed in the report and above; --strict turns it into a failed exit status.
    return 1 if args.strict and any(row.get("failures") for row in rows) else 0


@command(
    "train",
    "Fine-tune one backbone with one block (or none) on a data source.",
    [
        (
            ("--backbone",),
            {"default": "resnet20", "help": "a preset (resnet20, mobilenet_v2, ...; see `params`)"},
        ),  # fmt: skip
        (
            ("--backbone-args",),
            {
                "type": json.loads,
                "default": None,
                "help": "builder arguments as JSON, merged over the preset's, "
                'e.g. \'{"shortcut": "projection"}\'',
            },
        ),  # fmt: skip
        (("--attention",), {"default": None, "help": "block name; omit for the plain network"}),
        (("--data",), {"default": "digits", "help": "digits, tfds:<name> or an image folder"}),
        (("--data-dir",), {"default": None, "help": "TFDS data_dir (local, prepared)"}),
        (("--image-size",), {"type": int, "default": 32}),
        (("--epochs",), {"type": int, "default": 10}),
        (("--batch-size",), {"type": int, "default": 64}),
        (("--optimizer",), {"default": "adamw", "choices": ["sgd", "adamw"]}),
        (("--learning-rate",), {"type": float, "default": 2e-3}),
        (("--weight-decay",), {"type": float, "default": 0.05}),
        (("--label-smoothing",), {"type": float, "default": 0.1}),
        (
            ("--mixed-precision",),
            {"default": None, "choices": ["mixed_float16", "mixed_bfloat16"]},
        ),  # fmt: skip
        (
            ("--distribute",),
            {
                "default": None,
                "choices": ["mirrored", "multi-worker"],
                "help": "tf.distribute strategy (TF_CONFIG for multi-worker)",
            },
        ),  # fmt: skip
        (("--sync-batch-norm",), {"action": "store_true"}),
        (("--seed",), {"type": int, "default": 0}),
        (
            ("--deterministic",),
            {
                "action": "store_true",
                "help": "TensorFlow op determinism: the same seed gives the same weights (slower)",
            },
        ),  # fmt: skip
        (
            ("--out",),
            {
                "dest": "out_dir",
                "required": True,
                "help": "checkpoints, log and the model; rerun to resume",
            },
        ),  # fmt: skip
    ],
)
def _train(args):
    import tensorflow as tf

    from keras_chanattn.data import load_data
    from keras_chanattn.models.presets import PLAIN, build_model
    from keras_chanattn.pipeline import PipelineConfig
    from keras_chanattn.train import TrainConfig, fit_classifier

    data_kwargs = {"data_dir": args.data_dir} if args.data_dir else {}
    data = load_data(args.data, args.image_size, seed=args.seed, **data_kwargs)
    strategy = None
    if args.distribute == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
    elif args.distribute == "multi-worker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(
        flip=args.data != "digits", **{k: v for k, v in vars(args).items() if k in fields}
    )
    variant = args.attention or PLAIN
    defaults = PipelineConfig()  # the main job's backbone arguments for its backbone
    backbone_kwargs = dict(defaults.backbone_kwargs if args.backbone == defaults.backbone else {})
    backbone_kwargs.update(args.backbone_args or {})
    model, summary = fit_classifier(
        lambda: build_model(
            args.backbone,
            variant,
            input_shape=(args.image_size, args.image_size, data.image_shape[-1]),
            num_classes=data.num_classes,
            classifier_activation=None,
            name=f"{variant}_{args.backbone}",
            **backbone_kwargs,
        ),
        data,
        config,
        out_dir=args.out_dir,
        strategy=strategy,
    )
    print(
        f"{model.name}: validation accuracy {summary['val_accuracy']:.4f}, loss "
        f"{summary['val_loss']:.4f}, {summary['epochs_run']} epochs run "
        f"({summary['seconds_per_epoch']:.1f} s each), {summary['replicas']} replica(s); "
        f"model saved to {args.out_dir}/last.keras"
    )
    return 0


def _split_names(text):
    return [part.strip() for part in text.split(",") if part.strip()]


@command(
    "params",
    "Print params, trainable params, delta and FLOPs of a backbone with every block.",
    [
        (
            ("backbone",),
            {
                "nargs": "?",
                "default": "resnet50",
                "help": "resnet18-152, resnet20-164 (CIFAR) or mobilenet_v2; default resnet50",
            },
        ),
        (
            ("--blocks",),
            {
                "type": _split_names,
                "default": None,
                "help": "comma-separated block names (default: every registered block)",
            },
        ),
        (
            ("--input-size",),
            {"type": int, "default": None, "help": "square input size (default: the backbone's)"},
        ),
        (("--alpha",), {"type": float, "default": None, "help": "mobilenet_v2 width multiplier"}),
        (("--no-flops",), {"action": "store_true", "help": "skip the FLOPs count (faster)"}),
    ],
)
def _params(args):
    from keras_chanattn.models import presets
    from keras_chanattn.models.params import complexity_rows, format_rows

    if args.backbone not in presets.list_presets():
        print(f"unknown backbone {args.backbone!r}; known: {', '.join(presets.list_presets())}")
        return 2
    kwargs = {}
    if args.input_size:
        kwargs["input_shape"] = (args.input_size, args.input_size, 3)
    if args.alpha is not None:
        kwargs["alpha"] = args.alpha
    rows = complexity_rows(args.backbone, args.blocks, flops=not args.no_flops, **kwargs)
    print(format_rows(rows, args.backbone))
    return 0


def _load_images(path):
    """Images from a `.npy` file, or a `.npz` file's `images` or `x` array (else its first)."""
    import numpy as np

    data = np.load(path)
    if isinstance(data, np.ndarray):
        return data
    with data:
        for key in ("images", "x", *data.files[:1]):
            if key in data.files:
                return data[key]
    raise ValueError(f"{path} holds no arrays.")


@command(
    "export",
    "Export a .keras model to SavedModel and verified TFLite (float32, float16, dynamic, int8).",
    [
        (("model",), {"help": "the .keras model file"}),
        (
            ("--format",),
            {
                "dest": "formats",
                "action": "append",
                "help": "savedmodel, float32, float16, dynamic, int8 or all; repeat or "
                "comma-separate (default: all)",
            },
        ),  # fmt: skip
        (("--out",), {"dest": "out_dir", "required": True, "help": "output directory"}),
        (("--overwrite",), {"action": "store_true", "help": "replace existing artefacts"}),
        (
            ("--data",),
            {
                "default": None,
                "help": "a package data source (digits, tfds:<name>, an image folder): "
                "its train split calibrates int8, its validation split verifies",
            },
        ),  # fmt: skip
        (("--calibration",), {"default": None, "help": ".npy/.npz calibration images (int8)"}),
        (("--validation",), {"default": None, "help": ".npy/.npz held-out images to verify on"}),
        (("--image-size",), {"type": int, "nargs": 2, "default": None, "metavar": ("H", "W")}),
        (("--batch-size",), {"default": "1", "help": "SavedModel batch: an integer or 'dynamic'"}),
        (("--num-calibration",), {"type": int, "default": 200, "help": "calibration images"}),
        (("--threads",), {"type": int, "default": 2, "help": "verification interpreter threads"}),
        (
            ("--no-enforce",),
            {"action": "store_true", "help": "write artefacts even when verification fails"},
        ),  # fmt: skip
    ],
)
def _export(args):
    import keras

    import keras_chanattn  # noqa: F401  (registers the layers for loading)
    from keras_chanattn.export.artifacts import FORMATS, export_artifacts
    from keras_chanattn.images import image_input_spec

    formats = [f.strip() for text in args.formats or ["all"] for f in text.split(",") if f.strip()]
    formats = list(FORMATS) if "all" in formats else formats
    batch_size = None if args.batch_size == "dynamic" else int(args.batch_size)
    model = keras.saving.load_model(args.model)
    calibration = _load_images(args.calibration) if args.calibration else None
    validation = _load_images(args.validation) if args.validation else None
    if args.data:
        from keras_chanattn.data import load_data

        spec = image_input_spec(model, args.image_size)
        data = load_data(args.data, (spec.height, spec.width), spec.channels)
        calibration = data.train if calibration is None else calibration
        validation = data.validation if validation is None else validation
    stem = os.path.splitext(os.path.basename(args.model))[0]
    try:
        reports = export_artifacts(
            model, args.out_dir, formats, calibration, validation, stem=stem,
            overwrite=args.overwrite, image_size=args.image_size, batch_size=batch_size,
            num_calibration_samples=args.num_calibration, enforce=not args.no_enforce,
            num_threads=args.threads,
        )  # fmt: skip
    except (FileExistsError, ValueError) as error:
        print(f"chanattn export: {error}", file=sys.stderr)
        return 2
    return 0 if all(r is not None and r.passed for r in reports.values()) else 1


@command(
    "bench",
    "Measure a backbone plain and with each block (or .keras models) side by side: size, "
    "latency, partitions, fidelity, accuracy per TFLite format.",
    [
        (
            ("backbone",),
            {
                "nargs": "?",
                "default": "resnet20",
                "help": "resnet18-152, resnet20-164 (CIFAR) or mobilenet_v2; default resnet20",
            },
        ),
        (
            ("--models",),
            {
                "type": _split_names,
                "default": None,
                "help": "comma-separated .keras files to compare instead of a backbone",
            },
        ),  # fmt: skip
        (("--blocks",), {"type": _split_names, "default": None, "help": "default: all blocks"}),
        (("--no-plain",), {"action": "store_true", "help": "skip the backbone without attention"}),
        (
            ("--backbone-args",),
            {"type": json.loads, "default": None, "help": "builder arguments as JSON"},
        ),  # fmt: skip
        (
            ("--attention-args",),
            {
                "type": json.loads,
                "default": None,
                "help": 'per-block arguments as JSON, e.g. {"sa": {"groups": 8}}',
            },
        ),  # fmt: skip
        (("--image-size",), {"type": int, "default": None, "help": "default: the backbone's"}),
        (
            ("--formats",),
            {"type": _split_names, "default": None, "help": "default: all four TFLite formats"},
        ),  # fmt: skip
        (
            ("--data",),
            {
                "default": "digits",
                "help": "digits, tfds:<name>, an image folder, or none (synthetic images, no "
                "accuracy): train split calibrates int8, validation split verifies and scores",
            },
        ),  # fmt: skip
        (("--calibration",), {"type": int, "default": 200, "help": "calibration images"}),
        (("--max-samples",), {"type": int, "default": 256, "help": "held-out images"}),
        (("--threads",), {"type": int, "default": 2, "help": "LiteRT threads"}),
        (("--warmup",), {"type": int, "default": 5, "help": "untimed rounds"}),
        (("--runs",), {"type": int, "default": 30, "help": "timed rounds"}),
        (
            ("--baseline",),
            {
                "type": _split_names,
                "default": None,
                "help": "model(s) latency ratios are taken against (default: plain)",
            },
        ),  # fmt: skip
        (("--out",), {"dest": "out_dir", "required": True, "help": "output directory"}),
        (("--overwrite",), {"action": "store_true", "help": "replace existing reports"}),
        (("--no-plots",), {"action": "store_true", "help": "skip the PNG plots"}),
        (("--no-flops",), {"action": "store_true", "help": "skip the FLOPs count"}),
        (("--seed",), {"type": int, "default": 0}),
        (("--quiet",), {"action": "store_true", "help": "no progress bar or table"}),
    ],
)
def _bench(args):
    from keras_chanattn.bench import backbone_models, bench
    from keras_chanattn.export.verify import QUANTIZATIONS
    from keras_chanattn.images import image_input_spec, synthetic_images
    from keras_chanattn.models import presets

    skipped = {}
    try:
        if args.models:
            import keras

            import keras_chanattn  # noqa: F401  (registers the layers for loading)

            models = {
                os.path.splitext(os.path.basename(p))[0]: keras.saving.load_model(p)
                for p in args.models
            }
            spec = image_input_spec(next(iter(models.values())))
            size = (spec.height, spec.width)
        else:
            presets.get_preset(args.backbone)  # an unknown name raises, listing the known
            builder_kwargs = dict(args.backbone_args or {})
            if args.image_size:
                builder_kwargs["input_shape"] = (args.image_size, args.image_size, 3)
            else:  # the builder's default size
                plain = presets.build_model(args.backbone, None, **builder_kwargs)
                builder_kwargs["input_shape"] = tuple(plain.input_shape[1:])
            size = builder_kwargs["input_shape"][:2]
        data = None
        if args.data != "none":
            from keras_chanattn.data import load_data

            data = load_data(args.data, size, seed=args.seed)
        if not args.models:
            if data is not None:
                builder_kwargs["num_classes"] = data.num_classes
            builder_kwargs.setdefault("classifier_activation", None)
            models, skipped = backbone_models(
                args.backbone, args.blocks, include_plain=not args.no_plain,
                attention_kwargs=args.attention_args, **builder_kwargs,
            )  # fmt: skip
        for block, reason in skipped.items():
            print(f"chanattn bench: skipping {block}: {reason}", file=sys.stderr)
        if data is not None:
            calibration, validation = data.train, data.validation
        else:
            spec = image_input_spec(next(iter(models.values())))
            calibration = synthetic_images(spec, args.calibration, seed=args.seed)
            validation = None
            print("chanattn bench: --data none: int8 calibrated on synthetic images.")
        result = bench(
            models, args.out_dir, formats=args.formats or QUANTIZATIONS, baseline=args.baseline,
            representative_data=calibration, validation_data=validation,
            num_threads=args.threads, warmup=args.warmup, runs=args.runs,
            max_samples=args.max_samples, num_calibration_samples=args.calibration,
            flops=not args.no_flops, plots=not args.no_plots, overwrite=args.overwrite,
            seed=args.seed, verbose=0 if args.quiet else 1, skipped=skipped,
        )  # fmt: skip
    except (FileExistsError, ValueError) as error:
        print(f"chanattn bench: {error}", file=sys.stderr)
        return 2
    return 0 if all(row["verified"] for row in result.rows) else 1


@command(
    "int8-limits",
    "List the int8 ADD/SUB/MUL of .tflite files whose scales XNNPACK refuses "
    "(exit 0: none; 1: some; 2: a file could not be read, the others still checked).",
    [(("paths",), {"nargs": "+", "metavar": "FILE", "help": ".tflite files"})],
)
def _int8_limits(args):
    from keras_chanattn.export.ranges import int8_scale_problems

    unreadable = outside = False
    for path in args.paths:
        try:
            with open(path, "rb") as file:
                checked, found = int8_scale_problems(file.read())
        except (OSError, ValueError) as error:
            print(f"chanattn int8-limits: {path}: {error}", file=sys.stderr)
            unreadable = True
            continue
        print(f"{path}: {checked} int8 ADD/SUB/MUL, {len(found)} outside XNNPACK's limits")
        for problem in found:
            print(f"  {problem['op']} {problem['tensor']}: {'; '.join(problem['problems'])}")
        outside = outside or bool(found)
    return 2 if unreadable else int(outside)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="chanattn", description="Channel attention blocks for Keras 3, for phones."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (func, help_text, arguments) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        for flags, kwargs in arguments:
            p.add_argument(*flags, **kwargs)
        p.add_argument(
            "--verbose",
            action="store_true",
            help="show TensorFlow's native log lines (the command filters them otherwise)",
        )
        p.set_defaults(func=func)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
