"""Benchmark: what the attention learned on the digits (SE vs SRM gates, Grad-CAM pointing).

(a) SE and SRM ResNet-20 trained as the main job trains them (read from a `chanattn run`
folder with `--run`, the preferred way, or trained here with the main job's recipe): per
stage, the mean |off-diagonal| correlation of the channel weights over held-out digits and
their effective rank, and the distinct images of each model's top-activating grid (k=5),
all from `keras_chanattn.analysis.analyze_models`. The SRM paper finds SE's channel weights
more correlated than SRM's.

(b) The Grad-CAM pointing game: plain, SE, SRM, SA and CBAM ResNet-20, each trained briefly
(the main job's recipe, 3 epochs) on digits upscaled (10x10) and placed at a random position
inside a larger blank canvas (24x24); on held-out canvases, the share of Grad-CAM maps (of the true
class) whose peak lies inside the digit's box, and the mean share of the map's mass inside
it. Chance is the box's share of the canvas.

    .venv/bin/python benchmarks/attention_analysis.py --run export/runs/<run>
"""

import argparse
import dataclasses
import json
import pathlib
import tempfile
import time

import numpy as np

STAGE_VARIANTS = ("se", "srm")
POINTING_VARIANTS = "plain,se,srm,sa,cbam"


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--run", help="a `chanattn run` folder holding se/ and srm/ model.keras (else: train)")
    add("--depth", type=int, default=20, help="CIFAR ResNet depth (6n + 2)")
    add("--epochs", type=int, default=None, help="epochs of (a) when training; default: 3")
    add("--image-size", type=int, help="(a) when training; default: the main job's")
    add("--samples", type=int, default=256, help="held-out digits the gates are read on")
    add("--blocks", default=POINTING_VARIANTS, help="(b): comma-separated variants")
    add("--canvas", type=int, default=24, help="(b): canvas height and width")
    add("--digit-size", type=int, default=10, help="(b): the digit's size on the canvas")
    add("--canvas-epochs", type=int, default=3, help="(b): epochs per model (the main job: 3)")
    add("--canvases", type=int, default=256, help="(b): held-out canvases scored")
    add("--limit", type=int, default=None, help="training images at most (tiny runs)")
    add("--out", help="keep the analysis folder of (a) here (default: a temporary one)")
    add("--seed", type=int, default=0)
    return parser.parse_args(argv)


def pipeline_config(args, image_size):
    """The main job's configuration at this depth and size (its default recipe)."""
    from keras_chanattn.pipeline import PipelineConfig, default_train_config

    train = default_train_config()
    if args.epochs is not None:
        train = dataclasses.replace(train, epochs=args.epochs)
    train = dataclasses.replace(train, seed=args.seed)
    kwargs = {"backbone": "cifar_resnet", "backbone_kwargs": {"depth": args.depth,
              "shortcut": "projection"}} if args.depth != 20 else {}  # fmt: skip
    if image_size is not None:
        kwargs["image_size"] = image_size
    return PipelineConfig(train=train, formats=[], **kwargs)


def train(config, variant, data):
    """`variant` (a block name or "plain") trained as the main job trains it."""
    from keras_chanattn.pipeline import build_model
    from keras_chanattn.train import fit_classifier

    model, summary = fit_classifier(
        lambda: build_model(config, variant, data.num_classes, data.image_shape[-1]),
        data, config.train, verbose=0,
    )  # fmt: skip
    return model, summary["val_accuracy"]


def limited(data, limit):
    if limit is None:
        return data
    return dataclasses.replace(data, train=data.train.take(limit))


def stage_models(args):
    """`{variant: model or path}` for (a): the run's files, or models trained here."""
    if args.run:
        paths = {v: pathlib.Path(args.run) / v / "model.keras" for v in STAGE_VARIANTS}
        missing = [str(p) for p in paths.values() if not p.is_file()]
        if missing:
            raise SystemExit(f"--run {args.run}: no {', '.join(missing)}; run `chanattn run`.")
        config = pathlib.Path(args.run) / "config.json"
        if config.is_file():
            c = json.loads(config.read_text())
            size = f"{c['image_size']}x{c['image_size']}"
            print(f"(a) models of {args.run}: {c['backbone']} {c['backbone_kwargs']}, "
                  f"{c['data']} at {size}, train {c['train']}")  # fmt: skip
        return paths
    from keras_chanattn.data import load_data

    config = pipeline_config(args, args.image_size)
    data = limited(load_data("digits", config.image_size, seed=args.seed), args.limit)
    models = {}
    for variant in STAGE_VARIANTS:
        models[variant], accuracy = train(config, variant, data)
        print(f"(a) trained {variant}: validation accuracy {accuracy:.4f}", flush=True)
    return models


def report_stages(args, out):
    """Part (a): per stage, the SE and SRM gates' correlation, effective rank, diversity."""
    from keras_chanattn.analysis import analyze_models

    models = stage_models(args)
    summary = analyze_models(
        list(models.values()), "digits", out, labels=list(models), samples=args.samples,
        top_k=5, grad_cam_images=0, seed=args.seed, log=None,
    )  # fmt: skip
    by_variant = {m["label"]: m for m in summary["models"]}
    print(f"\n(a) channel weights over {summary['samples']} held-out digits "
          "(per stage: mean over its blocks / its last block)")  # fmt: skip
    print(f"{'stage':<8}{'model':<6}{'blocks':>7}{'mean |corr|':>18}{'eff. rank':>18}"
          f"{'distinct top-5':>18}")  # fmt: skip
    stages = dict.fromkeys(s for m in summary["models"] for s in m["stages"])
    for stage in stages:
        for variant, model in by_variant.items():
            rows = [r for r in model["statistics"] if r["stage"] == stage]
            if rows:
                keys = ("mean_abs_offdiagonal", "effective_rank", "distinct_top_images")
                cells = [f"{_mean(rows, k):>10.3g} / {_number(rows[-1][k]):<5}" for k in keys]
                print(f"{stage:<8}{variant:<6}{len(rows):>7}" + "".join(cells))
    for variant, model in by_variant.items():
        top = model["top_activating"]
        print(f"{variant}: top-5 grid of {top['block']}: {top['distinct_images']} distinct "
              f"images over {model['statistics'][-1]['channels']} channels")  # fmt: skip


def _mean(rows, key):
    values = [r[key] for r in rows if r[key] is not None]
    return float(np.mean(values)) if values else float("nan")


def _number(value):
    return "-" if value is None else f"{value:.3g}"


def canvases(images, canvas, size, seed):
    """Each digit resized to `size` and placed at a random position on a blank `canvas`;
    returns the canvases and the boxes `(y0, x0, y1, x1)`."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    small = tf.image.resize(images, (size, size), method="bilinear").numpy().clip(0, 1)
    out = np.zeros((len(images), canvas, canvas, images.shape[-1]), "float32")
    corners = rng.integers(0, canvas - size + 1, (len(images), 2))
    for i, (y, x) in enumerate(corners):
        out[i, y : y + size, x : x + size] = small[i]
    return out, np.concatenate([corners, corners + size], axis=1)


def pointing_data(args):
    """`(ImageData of canvases, held-out canvases, their boxes, their labels)`."""
    import tensorflow as tf

    from keras_chanattn.data import DIGITS_CLASSES, ImageData, load_digits_images

    (x, y), (xt, yt) = load_digits_images(8, 3, seed=args.seed)
    train_x, _ = canvases(x, args.canvas, args.digit_size, args.seed)
    test_x, boxes = canvases(xt[: args.canvases], args.canvas, args.digit_size, args.seed + 1)
    train_y, test_y = y, yt[: args.canvases]
    data = ImageData(
        train=tf.data.Dataset.from_tensor_slices((train_x, train_y)),
        validation=tf.data.Dataset.from_tensor_slices((test_x, test_y)),
        num_classes=DIGITS_CLASSES, class_names=[str(i) for i in range(DIGITS_CLASSES)],
        image_shape=train_x.shape[1:],
    )  # fmt: skip
    return limited(data, args.limit), test_x, boxes, test_y


def report_pointing(args):
    """Part (b): per model, the pointing game and the map mass inside the digit's box."""
    from keras_chanattn.analysis import grad_cam, pointing_hits

    data, images, boxes, labels = pointing_data(args)
    config = pipeline_config(args, args.canvas)
    config.train = dataclasses.replace(config.train, epochs=args.canvas_epochs)
    chance = args.digit_size**2 / args.canvas**2
    print(f"\n(b) Grad-CAM pointing game on {len(images)} held-out {args.canvas}x{args.canvas} "
          f"canvases, digit {args.digit_size}x{args.digit_size} at a random position "
          f"(chance {chance:.3f}); {args.canvas_epochs} epochs each")  # fmt: skip
    print(f"{'model':<7}{'val acc':>8}{'pointing':>10}{'mass in box':>13}{'layer':>20}")
    rows, cols = np.mgrid[: args.canvas, : args.canvas]
    inside = ((rows >= boxes[:, 0, None, None]) & (rows < boxes[:, 2, None, None])
              & (cols >= boxes[:, 1, None, None]) & (cols < boxes[:, 3, None, None]))  # fmt: skip
    for variant in args.blocks.split(","):
        model, accuracy = train(config, variant, data)
        result = grad_cam(model, images, class_index=labels.astype("int64"))
        maps = result.upsampled.astype("float64")
        totals = maps.sum(axis=(1, 2))  # an all-zero map puts no mass in the box
        mass = (maps * inside).sum(axis=(1, 2)) / np.where(totals > 0, totals, 1.0)
        hits = pointing_hits(maps, boxes)
        print(f"{variant:<7}{accuracy:>8.3f}{hits.mean():>10.3f}{mass.mean():>13.3f}"
              f"{result.layer:>20}", flush=True)  # fmt: skip


def main(argv=None):
    args = parse(argv)
    started = time.perf_counter()
    print("settings: " + ", ".join(f"{k}={v}" for k, v in vars(args).items()), flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        report_stages(args, args.out or pathlib.Path(scratch) / "analysis")
    report_pointing(args)
    print(f"\n{time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()
