"""`chanattn <command>`: the command line; each sub-command parses arguments and calls a room.

Sub-commands register themselves in `COMMANDS` through `command(...)`; each is a function
taking the parsed `argparse.Namespace` and returning an exit code.
"""

import argparse
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
