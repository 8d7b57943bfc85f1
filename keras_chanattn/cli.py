"""`chanattn <command>`: the command line; each sub-command parses arguments and calls a room.

Sub-commands register themselves in `COMMANDS` through `command(...)`; each is a function
taking the parsed `argparse.Namespace` and returning an exit code. Every error ends the
command with one `chanattn: error: ...` line on stderr: exit status 2 for a usage error (a bad
argument, an unknown name, an existing output, a missing or unreadable input: what a room
raises as `ValueError` or an `OSError` about a path), 1 for work that failed, 130 for an
interrupt. `--verbose` adds the traceback.
"""

import argparse
import dataclasses
import json
import math
import pathlib
import sys
import traceback

COMMANDS = {}
# The commands that export, count FLOPs, run Grad-CAM or train through tf.distribute: on
# another Keras backend they stop before any work (`keras_chanattn.backend`).
TENSORFLOW_COMMANDS = ("run", "train", "params", "export", "bench", "analyze", "prune")
USAGE_ERRORS = (ValueError, OSError)  # OSError: a path that exists, is missing or unwritable
BACKBONE_HELP = "a preset: resnet18-152, resnet20-164 (CIFAR) or mobilenet_v2"
DATA_HELP = "digits, tfds:<name> or an image folder"
BACKBONE_ARGS_HELP = "builder arguments as JSON, merged over the preset's"
NO_PLAIN = "skip the backbone without attention"
GATES_HELP = "require (--gates) or skip (--no-gates) the gates; default: where there are blocks"
FREE_SIZE = "for models of free input size"
FORMAT_HELP = "savedmodel, float32, float16, dynamic, int8 or all; repeat or comma-separate"


def command(name, help_text, arguments=()):
    """Decorator registering a sub-command.

    Args:
        name: the sub-command's name.
        help_text: one line for `chanattn --help`.
        arguments: `(flags, kwargs)` pairs passed to `ArgumentParser.add_argument`
            (`arg(...)` makes one).
    """

    def decorator(func):
        COMMANDS[name] = (func, help_text, tuple(arguments))
        return func

    return decorator


def arg(*flags, **kwargs):
    """One argument of a sub-command: what `ArgumentParser.add_argument` takes."""
    return flags, kwargs


def csv_list(text):
    """A comma-separated argument as the list of its non-empty parts, stripped."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return parts


def at_least(minimum):
    """An argument type: an integer >= `minimum`."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


positive_int = at_least(1)


def finite_float(text):
    """A finite number (no nan or inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def json_object(text):
    """A JSON object (`{"name": value, ...}`), as a dict."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"expected a JSON object such as '{{\"depth\": 32}}', got {text!r}"
        )
    return value


def batch_size(text):
    """An integer batch size >= 1, or `None` for `"dynamic"`."""
    return None if text == "dynamic" else positive_int(text)


@command("list", "List the registered attention blocks.")
def _list(args):
    from keras_chanattn.layers import get_attention_class, list_attention

    for name in list_attention():
        cls = get_attention_class(name)
        summary = (cls.__doc__ or "").strip().splitlines()[0]
        print(f"{name:<20} {cls.__name__:<28} {summary}")
    return 0


@command(
    "run",
    "The main job: fine-tune the plain backbone and each block, export, verify, report.",
    [
        arg("--config", help="JSON config (default: built-in defaults, as export/pipeline.json)"),
        arg("--blocks", type=csv_list, help="comma-separated block names, or 'all' (se,srm,sa)"),
        arg("--no-plain", dest="include_plain", action="store_false", default=None, help=NO_PLAIN),
        arg("--backbone", help=BACKBONE_HELP),
        arg("--data", help=DATA_HELP),
        arg("--image-size", type=positive_int),
        arg("--epochs", type=positive_int),
        arg("--formats", type=csv_list, help="TFLite formats, comma-separated, or none"),
        arg("--out", dest="out_dir", help="runs folder"),
        arg("--name", dest="run_name", help="the run's folder name"),
        arg("--overwrite", action="store_true", default=None, help="replace a same-named run"),
        arg("--quiet", action="store_true", help="no progress bars"),
        arg("--strict", action="store_true", help="exit with status 1 if any verification failed"),
    ],
)
def _run(args):
    from keras_chanattn.pipeline import ALL_BLOCKS, PipelineConfig, run_pipeline

    given = ("backbone", "data", "image_size", "out_dir", "run_name", "include_plain", "overwrite")
    config = PipelineConfig.from_file(
        args.config,
        blocks=ALL_BLOCKS if args.blocks == [ALL_BLOCKS] else args.blocks,
        formats=[] if args.formats == ["none"] else args.formats,
        **{name: getattr(args, name) for name in given},
    )
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
        arg("--backbone", default="resnet20", help=BACKBONE_HELP),
        arg("--backbone-args", type=json_object, help=BACKBONE_ARGS_HELP),
        arg("--attention", help="block name; omit for the plain network"),
        arg("--data", default="digits", help=DATA_HELP),
        arg("--data-dir", help="TFDS data_dir (local, prepared)"),
        arg("--image-size", type=positive_int, default=32),
        arg("--epochs", type=positive_int, default=10),
        arg("--batch-size", type=positive_int, default=64),
        arg("--optimizer", default="adamw", choices=["sgd", "adamw"]),
        arg("--learning-rate", type=finite_float, default=2e-3),
        arg("--weight-decay", type=finite_float, default=0.05),
        arg("--label-smoothing", type=finite_float, default=0.1),
        arg("--mixed-precision", choices=["mixed_float16", "mixed_bfloat16"]),
        arg("--distribute", choices=["mirrored", "multi-worker"], help="multi-worker: TF_CONFIG"),
        arg("--sync-batch-norm", action="store_true"),
        arg("--seed", type=int, default=0),
        arg("--deterministic", action="store_true", help="same seed, same weights (slower)"),
        arg("--out", dest="out_dir", required=True, help="checkpoints and model; rerun to resume"),
        arg("--overwrite", action="store_true", help="replace a finished run in --out"),
    ],
)
def _train(args):
    from keras_chanattn.data import load_data
    from keras_chanattn.layers import get_attention_class
    from keras_chanattn.models.presets import PLAIN, build_model, get_preset
    from keras_chanattn.pipeline import PipelineConfig
    from keras_chanattn.train import TrainConfig, distribution_strategy, fit_classifier

    get_preset(args.backbone)  # names checked before the data loads
    if args.attention:
        get_attention_class(args.attention)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(
        flip=args.data != "digits", **{k: v for k, v in vars(args).items() if k in fields}
    )
    # A multi-worker strategy must exist before TensorFlow runs anything (the data loads).
    strategy = distribution_strategy(args.distribute)
    data_kwargs = {"data_dir": args.data_dir} if args.data_dir else {}
    data = load_data(args.data, args.image_size, seed=args.seed, **data_kwargs)
    variant = args.attention or PLAIN
    main_job = PipelineConfig()  # the main job's builder arguments, for its own backbone
    backbone_kwargs = dict(main_job.backbone_kwargs if args.backbone == main_job.backbone else {})
    backbone_kwargs.update(args.backbone_args or {})
    shape = (args.image_size, args.image_size, data.image_shape[-1])
    model, summary = fit_classifier(
        lambda: build_model(
            args.backbone, variant, input_shape=shape, num_classes=data.num_classes,
            classifier_activation=None, name=f"{variant}_{args.backbone}", **backbone_kwargs,
        ),
        data, config, out_dir=args.out_dir, strategy=strategy, overwrite=args.overwrite,
    )  # fmt: skip
    saved = "saved by worker 0" if strategy and not strategy.extended.should_checkpoint else "saved"
    print(
        f"{model.name}: validation accuracy {summary['val_accuracy']:.4f}, loss "
        f"{summary['val_loss']:.4f}, {summary['epochs_run']} epochs run "
        f"({summary['seconds_per_epoch']:.1f} s each), {summary['replicas']} replica(s); "
        f"model {saved} to {args.out_dir}/last.keras"
    )
    return 0


@command(
    "params",
    "Print params, trainable params, delta and FLOPs of a backbone with every block.",
    [
        arg("backbone", nargs="?", default="resnet50", help=BACKBONE_HELP + "; default resnet50"),
        arg("--blocks", type=csv_list, help="comma-separated block names (default: all)"),
        arg("--input-size", type=positive_int, help="square input size (default: the backbone's)"),
        arg("--alpha", type=finite_float, help="mobilenet_v2 width multiplier"),
        arg("--no-flops", action="store_true", help="skip the FLOPs count (faster)"),
    ],
)
def _params(args):
    from keras_chanattn.models.params import complexity_rows, format_rows
    from keras_chanattn.models.presets import list_presets

    if args.backbone not in list_presets():
        raise ValueError(f"unknown backbone {args.backbone!r}; known: {', '.join(list_presets())}")
    kwargs = {}
    if args.input_size:
        kwargs["input_shape"] = (args.input_size, args.input_size, 3)
    if args.alpha is not None:
        kwargs["alpha"] = args.alpha
    rows = complexity_rows(args.backbone, args.blocks, flops=not args.no_flops, **kwargs)
    print(format_rows(rows, args.backbone))
    return 0


@command(
    "export",
    "Export a .keras model to SavedModel and verified TFLite (float32, float16, dynamic, int8).",
    [
        arg("model", help="the .keras model file"),
        arg("--format", dest="formats", type=csv_list, action="append", help=FORMAT_HELP),
        arg("--out", dest="out_dir", required=True, help="output directory"),
        arg("--overwrite", action="store_true", help="replace existing artefacts"),
        arg("--data", help=DATA_HELP + ": train split calibrates int8, validation verifies"),
        arg("--calibration", help=".npy/.npz calibration images (int8)"),
        arg("--validation", help=".npy/.npz held-out images to verify on"),
        arg("--image-size", type=positive_int, nargs=2, metavar=("H", "W")),
        arg("--batch-size", type=batch_size, default="1", help="SavedModel batch, or 'dynamic'"),
        arg("--num-calibration", type=positive_int, default=200, help="calibration images"),
        arg("--threads", type=positive_int, default=2, help="verification interpreter threads"),
        arg("--no-enforce", action="store_true", help="write artefacts that fail verification"),
    ],
)
def _export(args):
    from keras_chanattn.export.artifacts import FORMATS, check_formats, export_artifacts
    from keras_chanattn.images import image_input_spec, load_image_file
    from keras_chanattn.model_files import load_model_file

    formats = [name for group in args.formats or [["all"]] for name in group]
    formats = check_formats(list(FORMATS) if "all" in formats else formats)
    model = load_model_file(args.model)
    calibration = load_image_file(args.calibration) if args.calibration else None
    validation = load_image_file(args.validation) if args.validation else None
    if args.data:
        from keras_chanattn.data import load_data

        spec = image_input_spec(model, args.image_size)
        data = load_data(args.data, (spec.height, spec.width), spec.channels)
        calibration = data.train if calibration is None else calibration
        validation = data.validation if validation is None else validation
    reports = export_artifacts(
        model, args.out_dir, formats, calibration,
        validation, stem=pathlib.Path(args.model).stem, overwrite=args.overwrite,
        image_size=args.image_size, batch_size=args.batch_size,
        num_calibration_samples=args.num_calibration, enforce=not args.no_enforce,
        num_threads=args.threads,
    )  # fmt: skip
    return 0 if all(r is not None and r.passed for r in reports.values()) else 1


@command(
    "bench",
    "Measure a backbone plain and with each block (or .keras models) side by side: size, "
    "latency, partitions, fidelity, accuracy per TFLite format.",
    [
        arg("backbone", nargs="?", default="resnet20", help=BACKBONE_HELP + "; default resnet20"),
        arg("--models", type=csv_list, help="comma-separated .keras files instead of a backbone"),
        arg("--blocks", type=csv_list, help="default: all blocks"),
        arg("--no-plain", action="store_true", help=NO_PLAIN),
        arg("--backbone-args", type=json_object, help=BACKBONE_ARGS_HELP),
        arg("--attention-args", type=json_object, help='per block, e.g. {"sa": {"groups": 8}}'),
        arg("--image-size", type=positive_int, help="default: the backbone's"),
        arg("--formats", type=csv_list, help="default: all four TFLite formats"),
        arg("--data", default="digits", help=DATA_HELP + ", or none (synthetic, no accuracy)"),
        arg("--calibration", type=positive_int, default=200, help="calibration images"),
        arg("--max-samples", type=positive_int, default=256, help="held-out images"),
        arg("--threads", type=positive_int, default=2, help="LiteRT threads"),
        arg("--warmup", type=at_least(0), default=5, help="untimed rounds"),
        arg("--runs", type=positive_int, default=30, help="timed rounds"),
        arg("--baseline", type=csv_list, help="models latency ratios are taken against (plain)"),
        arg("--out", dest="out_dir", required=True, help="output directory"),
        arg("--overwrite", action="store_true", help="replace existing reports"),
        arg("--no-plots", action="store_true", help="skip the PNG plots"),
        arg("--no-flops", action="store_true", help="skip the FLOPs count"),
        arg("--seed", type=int, default=0),
        arg("--quiet", action="store_true", help="no progress bar or table"),
    ],
)
def _bench(args):
    from keras_chanattn import bench
    from keras_chanattn.export.checks import QUANTIZATIONS
    from keras_chanattn.images import image_input_spec, synthetic_images

    if args.models:
        models, skipped = bench.load_model_files(args.models), {}
        shape = image_input_spec(next(iter(models.values()))).shape
    else:
        builder_kwargs = args.backbone_args or {}
        shape = bench.preset_input_shape(args.backbone, args.image_size, **builder_kwargs)
    data = None
    if args.data != "none":
        from keras_chanattn.data import load_data

        data = load_data(args.data, shape[:2], shape[-1], seed=args.seed)
    if not args.models:
        builder_kwargs = {"classifier_activation": None, **builder_kwargs, "input_shape": shape}
        if data is not None:
            builder_kwargs["num_classes"] = data.num_classes
        models, skipped = bench.backbone_models(
            args.backbone, args.blocks, include_plain=not args.no_plain,
            attention_kwargs=args.attention_args, **builder_kwargs,
        )  # fmt: skip
    for block, reason in skipped.items():
        print(f"chanattn bench: skipping {block}: {reason}", file=sys.stderr)
    if data is None:
        spec = image_input_spec(next(iter(models.values())))
        calibration, validation = synthetic_images(spec, args.calibration, seed=args.seed), None
        print("chanattn bench: --data none: int8 calibrated on synthetic images.")
    else:
        calibration, validation = data.train, data.validation
    result = bench.bench(
        models, args.out_dir, formats=args.formats or QUANTIZATIONS, baseline=args.baseline,
        representative_data=calibration, validation_data=validation,
        num_threads=args.threads, warmup=args.warmup, runs=args.runs,
        max_samples=args.max_samples, num_calibration_samples=args.calibration,
        flops=not args.no_flops, plots=not args.no_plots, overwrite=args.overwrite,
        seed=args.seed, verbose=0 if args.quiet else 1, skipped=skipped,
    )  # fmt: skip
    return 0 if all(row["verified"] for row in result.rows) else 1


@command(
    "analyze",
    "What the attention of .keras models learned: channel-weight statistics, correlation "
    "heatmaps, top-activating images and Grad-CAM, with a report comparing the models.",
    [
        arg("models", nargs="+", metavar="MODEL", help=".keras model files"),
        arg("--data", default="digits", help=DATA_HELP + "; its validation split is used"),
        arg("--out", dest="out_dir", required=True, help="output directory"),
        arg("--layer", help="Grad-CAM's layer (default: the last 4-D feature map)"),
        arg("--block", help="the top-activating grid's block (default: the last channel gate)"),
        arg("--samples", type=at_least(2), default=256, help="images the gates are read on"),
        arg("--top-k", type=positive_int, default=5, help="images per channel in the grid"),
        arg("--grad-cam-images", type=at_least(0), default=8, help="0 skips Grad-CAM"),
        arg("--gates", action=argparse.BooleanOptionalAction, help=GATES_HELP),
        arg("--image-size", type=positive_int, nargs=2, metavar=("H", "W"), help=FREE_SIZE),
        arg("--overwrite", action="store_true", help="replace an earlier analysis in --out"),
        arg("--seed", type=int, default=0, help="seed of the data's split"),
    ],
)
def _analyze(args):
    from keras_chanattn.analysis.report import analyze_models

    summary = analyze_models(
        args.models, args.data, args.out_dir, image_size=args.image_size, samples=args.samples,
        top_k=args.top_k, grad_cam_images=args.grad_cam_images, layer=args.layer,
        block=args.block, gates=args.gates, overwrite=args.overwrite, seed=args.seed,
    )  # fmt: skip
    print(f"Report: {summary['report']}")
    return 0


def prune_ratio(text):
    """A `--ratio`: a number in [0, 1)."""
    value = finite_float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1) (a fraction to remove), got {text}")
    return value


@command(
    "prune",
    "Prune a trained .keras classifier by what its attention gates learned (or L1, or at "
    "random), fine-tune it, export and verify it, and compare it with the unpruned model.",
    [
        arg("model", metavar="MODEL", help="a trained .keras classifier (logits out)"),
        arg("--ratio", type=prune_ratio, required=True, help="fraction of channels to remove"),
        arg("--criterion", choices=("attention", "l1", "random"), default="attention"),
        arg("--data", default="digits", help=DATA_HELP),
        arg("--fine-tune-epochs", type=at_least(0), default=2, help="0 skips the fine-tune"),
        arg("--out", dest="out_dir", required=True, help="output directory"),
        arg("--image-size", type=positive_int, help=FREE_SIZE),
        arg("--min-channels", type=positive_int, default=8, help="fewest channels kept"),
        arg("--divisor", type=positive_int, default=8, help="kept counts are multiples of it"),
        arg("--overwrite", action="store_true", help="replace an earlier prune job in --out"),
        arg("--seed", type=int, default=0, help="data split, random criterion, fine-tune"),
        arg("--quiet", action="store_true", help="no progress lines"),
    ],
)
def _prune(args):
    from keras_chanattn.prune.job import prune_job

    report = prune_job(
        args.model, args.ratio, data=args.data, criterion=args.criterion,
        fine_tune_epochs=args.fine_tune_epochs, out_dir=args.out_dir,
        image_size=args.image_size, overwrite=args.overwrite, min_channels=args.min_channels,
        divisor=args.divisor, seed=args.seed, verbose=0 if args.quiet else 1,
    )  # fmt: skip
    failed = report["unpruned"]["failures"] + report["pruned"]["failures"]
    print(f"Report: {pathlib.Path(args.out_dir) / 'report.md'}")
    return 1 if failed else 0


@command(
    "int8-limits",
    "List the int8 ADD/SUB/MUL of .tflite files whose scales XNNPACK refuses "
    "(exit 0: none; 1: some; 2: a file could not be read, the others still checked).",
    [arg("paths", nargs="+", metavar="FILE", help=".tflite files")],
)
def _int8_limits(args):
    from keras_chanattn.export.ranges import format_scale_problems, int8_scale_problems

    unreadable = outside = False
    for path in args.paths:
        try:
            checked, found = int8_scale_problems(pathlib.Path(path).read_bytes())
        except (OSError, ValueError) as error:
            print(f"chanattn int8-limits: {path}: {error}", file=sys.stderr)
            unreadable = True
            continue
        print(format_scale_problems(path, checked, found))
        outside = outside or bool(found)
    return 2 if unreadable else int(outside)


def build_parser():
    """The `chanattn` parser: one sub-parser per registered command, each with `--verbose`."""
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
            help="show TensorFlow's native log lines (the command filters them otherwise) "
            "and the traceback of an error",
        )
        p.set_defaults(func=func)
    return parser


def _error_line(error):
    """`error` as one line: its message, with the type where the message alone is vague."""
    text = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, USAGE_ERRORS) and not isinstance(error, OSError):
        return text
    if isinstance(error, OSError) and error.filename and str(error.filename) not in text:
        text = f"{text}: {error.filename}"
    return text if isinstance(error, OSError) else f"{type(error).__name__}: {text}"


def main(argv=None):
    """Runs `chanattn` on `argv` (default: `sys.argv[1:]`) and returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.command in TENSORFLOW_COMMANDS:
            from keras_chanattn.backend import require_tensorflow

            require_tensorflow(f"`chanattn {args.command}`")
        return args.func(args)
    except KeyboardInterrupt:
        if args.verbose:
            traceback.print_exc()
        print("chanattn: interrupted; earlier outputs are as they were", file=sys.stderr)
        return 130
    except Exception as error:  # one line for the user; --verbose keeps the traceback
        if args.verbose:
            traceback.print_exc()
        status = 2 if isinstance(error, USAGE_ERRORS) else 1
        hint = "" if args.verbose or status == 2 else " (--verbose shows the traceback)"
        print(f"chanattn: error: {_error_line(error)}{hint}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
