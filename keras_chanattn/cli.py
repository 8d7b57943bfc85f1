"""`chanattn <command>`: the command line; each sub-command parses arguments and calls a room.

Sub-commands register themselves in `COMMANDS` through `command(...)`; each is a function
taking the parsed `argparse.Namespace` and returning an exit code.
"""

import argparse
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
    from keras_chanattn.models.params import backbones, complexity_rows, format_rows

    if args.backbone not in backbones():
        print(f"unknown backbone {args.backbone!r}; known: {', '.join(backbones())}")
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
    from keras_chanattn.export.inputs import image_input_spec

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


def build_parser():
    parser = argparse.ArgumentParser(
        prog="chanattn", description="Channel attention blocks for Keras 3, for phones."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (func, help_text, arguments) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        for flags, kwargs in arguments:
            p.add_argument(*flags, **kwargs)
        p.set_defaults(func=func)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
