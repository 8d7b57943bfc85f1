"""Benchmark: a backbone with each block in float32, float16 and full int8 TFLite, beside peers.

For ResNet-50 (`--backbone resnet50`) or MobileNetV2 (`--backbone mobilenet_v2`, each
`--alpha`, the block after the depthwise conv), builds `plain`, `floor` (the parameter-free
gate `x * sigmoid(GAP(x))`), every block that fits, and per block its peer (`peer_<block>`:
the plain Keras translation of the paper's module, `peer_blocks.py`, carrying the same
weights; `keras_hub_se`: keras-hub's own SE layer, where keras-hub is installed). Exports each
to every format (batch 1; a model that fails to convert or crashes in the interpreter is
reported, not fatal), times each format's models interleaved (`keras_chanattn.bench`, LiteRT +
XNNPACK) and prints per format the latency ratios to the floor and to plain, the XNNPACK
partitions, the top-1 agreement of each .tflite with its Keras model, the goals met or missed,
and per block the ratio ours / peer (goal <= 1.0). From the repository root:

    python benchmarks/phone_forms.py --image-size 64 --blocks se,srm,sa --runs 3   # quick
    python benchmarks/phone_forms.py --backbone resnet50                  # 224, every block
    python benchmarks/phone_forms.py --backbone mobilenet_v2             # alpha 1.0 and 0.35
"""

import argparse
import datetime
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import export_resnet50 as resnet_bench  # noqa: E402  (FLOOR_GATE, images, weights, notes)
import peer_blocks  # noqa: E402

from keras_chanattn.models.presets import PLAIN  # noqa: E402

FLOOR = resnet_bench.FLOOR
FORMATS = ("float32", "float16", "int8")
BACKBONES = ("resnet50", "mobilenet_v2")
PEER = "peer_"
HUB_SE = "keras_hub_se"
# The largest int8 latency ratio to the floor allowed per block (others: reported).
GOALS = {
    "resnet50": {"se": 1.03, "eca": 1.03, "ge": 1.03, "srm": 1.05, "gc": 1.05, "cbam": 1.10,
                 "sa": 1.10, "sge": 1.20, "triplet": 1.50},
    "mobilenet_v2": {"se": 1.03, "eca": 1.03, "ge": 1.03, "srm": 1.08},
}  # fmt: skip
# SE on MobileNetV2 as MobileNetV3 has it: bottleneck make_divisible(C / 4, 8), hard sigmoid.
MOBILENET_SE = {"reduction": 4, "divisor": 8, "gate_activation": "hard_sigmoid"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", choices=BACKBONES, default="resnet50")
    parser.add_argument(
        "--alpha", type=float, action="append", help="MobileNetV2 width (repeatable; 1.0, 0.35)"
    )
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--blocks", default=None, help="comma-separated; default: all")
    parser.add_argument("--formats", default=",".join(FORMATS), help="comma-separated")
    parser.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--threads", type=int, default=2, help="LiteRT threads")
    parser.add_argument("--runs", type=int, default=30, help="timed rounds per format")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds per format")
    parser.add_argument("--calibration", type=int, default=100, help="int8 calibration images")
    parser.add_argument("--held-out", type=int, default=50, help="held-out images")
    parser.add_argument("--synthetic", action="store_true", help="synthetic images, not digits")
    parser.add_argument("--out", default=None, help="default: export/runs/phone-<backbone>-<time>")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    _check_args(parser, args)
    return args


def _check_args(parser, args):
    """Parser errors for bad values, before any work."""
    from keras_chanattn.layers import list_attention

    if args.alpha and args.backbone != "mobilenet_v2":
        parser.error("--alpha is a MobileNetV2 width; give --backbone mobilenet_v2.")
    args.alpha = args.alpha or ([1.0, 0.35] if args.backbone == "mobilenet_v2" else [None])
    if any(a is not None and a <= 0 for a in args.alpha):
        parser.error(f"--alpha must be > 0, got {args.alpha}.")
    args.formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    bad = [f for f in args.formats if f not in FORMATS]
    if bad or not args.formats:
        parser.error(f"--formats {bad or 'empty'}: choose from {', '.join(FORMATS)}.")
    blocks = args.blocks.split(",") if args.blocks else list(peer_blocks.PEERS)
    unknown = sorted(set(blocks) - set(peer_blocks.PEERS))
    if unknown:
        known = ", ".join(sorted(peer_blocks.PEERS))
        parser.error(f"--blocks {unknown}: unknown; choose from {known} (registered: "
                     f"{', '.join(list_attention())}).")  # fmt: skip
    args.blocks = blocks
    for name in ("image_size", "runs", "calibration", "held_out", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1.")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0.")


def fitting_groups(channels, limit=64, halves=False):
    """The largest group count <= `limit` that divides `channels` (into even groups with
    `halves`, as SA needs): the paper's 64 where it fits, fewer on narrow layers."""
    step = 2 if halves else 1
    return next(g for g in range(limit, 0, -1) if channels % (step * g) == 0)


def block_kwargs(backbone, block):
    """Constructor arguments of `block` (ours and its peer alike) on `backbone`."""
    from keras_chanattn.models.resnet import ECA_RESNET50_KERNELS

    if block in ("sa", "sge"):
        halves = block == "sa"
        return {"stage_kwargs": lambda site: {"groups": fitting_groups(site.channels, 64, halves)}}
    if backbone == "resnet50":
        return {"stage_kwargs": ECA_RESNET50_KERNELS} if block == "eca" else {}
    return dict(MOBILENET_SE) if block == "se" else {}


def builder(args, alpha):
    """`build(attention, name, **kwargs)` of the backbone at the image size, random weights,
    a 1000-class head without softmax (the logits are what the agreement compares)."""
    import functools

    from keras_chanattn.models import mobilenet_v2, resnet

    common = {
        "input_shape": (args.image_size, args.image_size, 3),
        "num_classes": 1000,
        "classifier_activation": None,
    }
    if args.backbone == "resnet50":
        return functools.partial(resnet, 50, **common)
    return functools.partial(mobilenet_v2, alpha=alpha, position="3x3", **common)


def build_models(args, alpha):
    """`(models, skipped, pairs)`: plain, floor, and per block ours then its peers (weights
    copied from ours); `pairs` is `{block: [peer labels]}`; `skipped` `{label: why}`."""
    import keras

    build = builder(args, alpha)
    keras.utils.set_random_seed(args.seed)
    floor = build("ge", name=FLOOR, **resnet_bench.FLOOR_GATE)
    models = {PLAIN: build(None, name=PLAIN), FLOOR: floor}
    skipped, pairs = {}, {}
    hub_se, hub_note = peer_blocks.keras_hub_se() if args.peers else (None, None)
    for block in args.blocks:
        kwargs = block_kwargs(args.backbone, block)
        try:
            models[block] = build(block, name=block, **kwargs)
        except ValueError as error:
            skipped[block] = str(error)
            continue
        resnet_bench.randomize_blocks({block: models[block]}, args.seed)
        if not args.peers:
            continue
        peers = {PEER + block: peer_blocks.PEERS[block]}
        if block == "se":
            if hub_se is None:
                skipped[HUB_SE] = hub_note
            else:
                peers[HUB_SE] = hub_se
        for label, cls in peers.items():
            try:
                models[label] = build(cls, name=label, **kwargs)
                share_weights(models[block], models[label])
            except Exception as error:  # a peer that cannot be built is reported, not fatal
                skipped[label] = f"{type(error).__name__}: {error}"
        pairs[block] = [label for label in peers if label in models]
    return models, skipped, pairs


def share_weights(ours, peer):
    """Gives `peer` (the same network with peer blocks) every weight of `ours`."""
    from keras_chanattn.layers import AttentionLayer

    for mine, theirs in zip(ours.layers, peer.layers, strict=True):
        if not mine.weights and not theirs.weights:
            continue
        if mine.name != theirs.name:
            raise ValueError(
                f"Layer {mine.name} of {ours.name} faces {theirs.name} in {peer.name}."
            )
        if isinstance(mine, AttentionLayer):
            theirs.set_weights(theirs.weights_from(mine))
        else:
            theirs.set_weights(mine.get_weights())


def function_gaps(models, pairs, images):
    """`{peer label: max |peer - ours| / max |ours|}` of the Keras models' logits on `images`:
    0 up to rounding where the peer computes the block's function."""
    from keras_chanattn.export.saved_model import keras_outputs

    gaps = {}
    for block, peers in pairs.items():
        ours = keras_outputs(models[block], images, 8)[0]
        for label in peers:
            theirs = keras_outputs(models[label], images, 8)[0]
            gaps[label] = float(np.max(np.abs(theirs - ours)) / max(np.max(np.abs(ours)), 1e-12))
    return gaps


def export_all(models, args, tflite_dir, calibration, held_out):
    """`(reports, errors, classes)`: every model in every format, `{(label, format): report}`,
    `{(label, format): why it failed}` (a conversion error or an interpreter crash), and
    `{label: distinct top-1 classes of the Keras model on the held-out images}` (1: the
    agreement is trivial)."""
    from keras_chanattn.export import PreparedModel, export_tflite
    from keras_chanattn.export.artifacts import artifact_paths

    reports, errors, classes = {}, {}, {}
    for label, model in models.items():
        started = time.perf_counter()
        with PreparedModel(model) as prepared:
            for fmt in args.formats:
                path, report_path = artifact_paths(tflite_dir, label, fmt)
                try:
                    reports[(label, fmt)] = export_tflite(
                        model, path, fmt, calibration if fmt == "int8" else None, held_out,
                        overwrite=args.overwrite, enforce=False, report_path=report_path,
                        num_calibration_samples=args.calibration, max_validation_samples=
                        args.held_out, num_threads=args.threads, seed=args.seed,
                        prepared=prepared,
                    )  # fmt: skip
                except Exception as error:  # reported per model; the run goes on
                    errors[(label, fmt)] = f"{type(error).__name__}: {str(error).splitlines()[0]}"
            logits = prepared.keras_outputs(held_out[: args.held_out])[0]
            classes[label] = len(np.unique(np.argmax(logits, axis=-1)))
        print(f"exported {label} in {time.perf_counter() - started:.0f} s", flush=True)
    return reports, errors, classes


def time_formats(models, reports, args, out, held_out):
    """`{format: BenchResult}`: each format's exported models timed interleaved."""
    from keras_chanattn.bench import bench

    results = {}
    for fmt in args.formats:
        labels = [label for label in models if (label, fmt) in reports]
        if not labels:
            continue
        baselines = [b for b in (FLOOR, PLAIN) if b in labels] or None
        results[fmt] = bench(
            {label: models[label] for label in labels},
            os.path.join(out, fmt),
            baseline=baselines,
            formats=[fmt],
            exported={label: {fmt: reports[(label, fmt)]} for label in labels},
            validation_data=held_out,
            num_threads=args.threads,
            warmup=args.warmup,
            runs=args.runs,
            max_samples=args.held_out,
            flops=False,
            plots=False,
            overwrite=args.overwrite,
            seed=args.seed,
            verbose=0,
        )
    return results


def _ratio(row, baseline):
    value = row.get(f"ratio_vs_{baseline}")
    return "-" if value is None else f"{value:.3f}"


def format_lines(result, fmt, goals, errors, classes):
    """One format's table: latency, ratios to floor and plain, partitions, agreement, goal."""
    header = (
        f"{'model':<16}{'median ms':>10}{'p90 ms':>9}{'/floor':>8}{'/plain':>8}{'parts':>6}"
        f"{'top-1 agr':>10}{'classes':>8}  goal"
    )
    lines = [f"-- {fmt} --", header, "-" * len(header)]
    rows = {row["model"]: row for row in result.rows} if result else {}
    for label in classes:
        if (label, fmt) in errors:
            lines.append(f"{label:<16}FAILED: {errors[(label, fmt)]}")
            continue
        row = rows[label]
        agreement = row["top1_agreement"]
        lines.append(
            f"{label:<16}{row['latency_median_ms']:>10.2f}{row['latency_p90_ms']:>9.2f}"
            f"{_ratio(row, FLOOR):>8}{_ratio(row, PLAIN):>8}{row['partitions']:>6}"
            f"{'-' if agreement is None else f'{agreement:.3f}':>10}{classes[label]:>8}  "
            f"{verdict(label, row, fmt, goals)}"
        )
    return lines


def verdict(label, row, fmt, goals):
    """`met` / `MISSED ...` for a block with a goal (int8 ratio to the floor), else ''."""
    limit = goals.get(label)
    if fmt != "int8" or limit is None:
        return ""
    ratio = row.get(f"ratio_vs_{FLOOR}")
    parts = "" if row["partitions"] == 1 else f" ({row['partitions']} partitions)"
    if ratio is None or ratio > limit:
        return f"MISSED: > {limit:.2f}x floor{parts}"
    return f"met (<= {limit:.2f}){parts}"


def peer_lines(results, pairs, gaps, errors, formats):
    """Per block and peer: ours / peer latency per format (goal <= 1.0), partitions and int8
    top-1 agreement of both, and how far the peer's float function is from ours."""
    header = (
        f"{'block':<8}{'peer':<16}{'format':<9}{'ours ms':>9}{'peer ms':>9}{'ours/peer':>10}"
        f"{'parts o/p':>10}{'agr o/p':>13}  goal <= 1.0"
    )
    lines = ["Ours against the peers (same weights, same converter settings):", header]
    lines.append("-" * len(header))
    for block, peers in pairs.items():
        for label in peers:
            for fmt in formats:
                rows = {r["model"]: r for r in results[fmt].rows} if fmt in results else {}
                mine, theirs = rows.get(block), rows.get(label)
                lead = f"{block:<8}{label:<16}{fmt:<9}"
                if mine is None or theirs is None:
                    failed = errors.get((block, fmt)) or errors.get((label, fmt))
                    lines.append(lead + f"FAILED: {failed}")
                    continue
                ratio = mine["latency_median_ms"] / theirs["latency_median_ms"]
                lines.append(
                    lead + f"{mine['latency_median_ms']:>9.2f}{theirs['latency_median_ms']:>9.2f}"
                    f"{ratio:>10.3f}{mine['partitions']:>5}/{theirs['partitions']:<4}"
                    f"{_agreement(mine):>7}/{_agreement(theirs):<5}  "
                    + ("met" if ratio <= 1.0 else "MISSED")
                )
            lines.append(f"{'':<8}{label:<16}float function: max |peer - ours| / max |ours| = "
                         f"{gaps[label]:.2e}")  # fmt: skip
    return lines


def _agreement(row):
    return "-" if row["top1_agreement"] is None else f"{row['top1_agreement']:.3f}"


def run_backbone(args, alpha, out, data):
    """Builds, exports, times and reports one backbone (one width); returns the text."""
    calibration, held_out, _ = data
    models, skipped, pairs = build_models(args, alpha)
    for label, reason in skipped.items():
        print(f"skipping {label}: {reason}", file=sys.stderr)
    gaps = function_gaps(models, pairs, held_out[:8])
    tflite_dir = os.path.join(out, "tflite")
    started = time.perf_counter()
    reports, errors, classes = export_all(models, args, tflite_dir, calibration, held_out)
    exported = time.perf_counter()
    results = time_formats(models, reports, args, out, held_out)
    phases = (
        f"{len(models)} models: export and verification {exported - started:.0f} s, timing "
        f"{time.perf_counter() - exported:.0f} s."
    )
    name = "ResNet-50" if alpha is None else f"MobileNetV2 alpha {alpha:g} (block after the 3x3)"
    lines = [
        f"== {name}, {args.image_size}x{args.image_size}, batch 1, LiteRT + XNNPACK, "
        f"{args.threads} thread(s); median and p90 of {args.runs} rounds interleaved per "
        f"format after {args.warmup} warm-up rounds =="
    ]
    goals = GOALS[args.backbone]
    for fmt in args.formats:
        lines += format_lines(results.get(fmt), fmt, goals, errors, classes) + [""]
    if pairs:
        lines += peer_lines(results, pairs, gaps, errors, args.formats) + [""]
    notes = []
    for fmt, result in results.items():
        for row in result.rows:
            notes += [f"[{fmt}] {note}" for note in resnet_bench.row_notes(row["model"], row)]
    lines += notes + [f"skipped {label}: {reason}" for label, reason in skipped.items()]
    return "\n".join([*lines, phases])


def legend(args, how):
    goals = ", ".join(f"{b} <= {g:.2f}" for b, g in GOALS[args.backbone].items())
    return [
        f"Data: {how}. Weights: random (the blocks' drawn at random, scale 0.1); every peer "
        "carries its block's network's weights.",
        f"Goals (int8 latency / floor): {goals}; others reported. Peers: ours / peer <= 1.0.",
        "parts: XNNPACK partitions. top-1 agr: the .tflite against its Keras model on the "
        "held-out images (untrained weights: a measure of the format's fidelity); classes: "
        "distinct top-1 classes of the Keras model there (1 = the agreement is trivial).",
        "MobileNetV2 SE: MobileNetV3's settings (bottleneck make_divisible(C/4, 8), hard "
        "sigmoid); SA and SGE: 64 groups where the channels allow, else the largest that fits.",
    ]


def main(argv=None):
    started = time.perf_counter()
    args = parse_args(argv)
    from keras_chanattn.bench import bench  # noqa: F401  (imported now: fail before the exports)
    from keras_chanattn.export.files import write_text

    out = args.out or os.path.join(
        "export", "runs", f"phone-{args.backbone}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    )
    data = resnet_bench.images(args)
    texts = []
    for alpha in args.alpha:
        folder = out if alpha is None else os.path.join(out, f"alpha-{alpha:g}")
        texts.append(run_backbone(args, alpha, folder, data))
        print(texts[-1], flush=True)
    text = "\n\n".join([*texts, *legend(args, data[2])])
    text += f"\n\nWall time {time.perf_counter() - started:.0f} s. Files: {out}"
    write_text(os.path.join(out, "phone_forms.txt"), text + "\n", args.overwrite)
    print("\n".join(legend(args, data[2])))
    print(f"\nWall time {time.perf_counter() - started:.0f} s. Files: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
