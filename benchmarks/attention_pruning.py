"""Attention-guided vs L1 vs random channel pruning on the digits (issue 23's measurement).

For each block, a CIFAR ResNet-20 with the block at the "3x3" position (projection
shortcuts and logits out, as the main job) is trained with the main job's recipe at 16x16;
then for each ratio and criterion it is pruned, fine-tuned for the same short number of
epochs, and exported to verified full int8. Printed: test accuracy per criterion and ratio
(before and after the fine-tune), the int8 size and the LiteRT latency ratio
pruned / unpruned (all of a block's int8 files timed in one interleaved run); a PNG of the
accuracy curves.

    nice -n 10 .venv/bin/python benchmarks/attention_pruning.py --png pruning.png
    .venv/bin/python benchmarks/attention_pruning.py --blocks se --ratios 0.5 --epochs 1
"""

import argparse
import dataclasses
import json
import pathlib
import tempfile
import time

import keras
import numpy as np

from keras_chanattn import prune
from keras_chanattn.bench.latency import measure_latency
from keras_chanattn.data import digits_data
from keras_chanattn.export import export_tflite
from keras_chanattn.images import images_and_labels
from keras_chanattn.models import cifar_resnet
from keras_chanattn.pipeline import default_train_config, small_network_kwargs
from keras_chanattn.train import fit_classifier

CRITERIA = ("attention", "l1", "random")


def arguments():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", nargs="+", default=["se", "srm", "cbam"])
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.25, 0.5, 0.75])
    parser.add_argument("--criteria", nargs="+", default=list(CRITERIA), choices=CRITERIA)
    parser.add_argument("--epochs", type=int, default=None, help="training (recipe: 3)")
    parser.add_argument("--fine-tune-epochs", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--latency-runs", type=int, default=30)
    parser.add_argument("--png", default=None, help="accuracy curves to this PNG")
    parser.add_argument("--json", default=None, help="all rows to this JSON file")
    return parser.parse_args()


def accuracy(model, images, labels):
    return float(np.mean(np.argmax(model.predict(images, verbose=0), -1) == labels))


def train(block, data, config):
    def build():
        return cifar_resnet(
            20, block, position="3x3", shortcut="projection", classifier_activation=None,
            input_shape=data.image_shape, **small_network_kwargs(16).get(block, {}),
        )  # fmt: skip

    return fit_classifier(build, data, config, verbose=0)[0]


def pruned_model(model, criterion, ratio, images):
    if criterion == "attention":
        return prune.prune_by_attention(model, images, ratio)
    if criterion == "l1":
        return prune.prune_by_l1(model, ratio)
    return prune.prune_by_random(model, ratio, seed=0)


def run_block(block, data, args, out):
    """The block's rows: unpruned, then each criterion and ratio."""
    recipe = default_train_config()
    if args.epochs is not None:
        recipe = dataclasses.replace(recipe, epochs=args.epochs)
    tune = dataclasses.replace(recipe, epochs=args.fine_tune_epochs, warmup_epochs=0)
    (x, _), (xt, yt) = images_and_labels(data.train), images_and_labels(data.validation)
    model = train(block, data, recipe)
    files = {"unpruned": out / f"{block}_unpruned.tflite"}
    report = export_tflite(model, files["unpruned"], "int8", x[:200], xt, enforce=False)
    rows = [dict(block=block, criterion="-", ratio=0.0, acc=accuracy(model, xt, yt),
                 acc_before=None, params=model.count_params(), bytes=report.size_bytes,
                 verified=report.passed, failures=report.failures)]  # fmt: skip
    for ratio in args.ratios:
        for criterion in args.criteria:
            pruned = pruned_model(model, criterion, ratio, x[:256])
            before = accuracy(pruned, xt, yt)
            pruned = fit_classifier(lambda p=pruned: p, data, tune, verbose=0)[0]
            key = f"{criterion}_{ratio}"
            files[key] = out / f"{block}_{key}.tflite"
            report = export_tflite(pruned, files[key], "int8", x[:200], xt, enforce=False)
            rows.append(dict(block=block, criterion=criterion, ratio=ratio,
                             acc=accuracy(pruned, xt, yt), acc_before=before,
                             params=pruned.count_params(), bytes=report.size_bytes,
                             verified=report.passed, failures=report.failures))  # fmt: skip
    latency = measure_latency(files, xt[0], runs=args.latency_runs)
    base = latency["unpruned"].median_ms
    for row, key in zip(rows, files, strict=True):
        row["latency_ms"] = latency[key].median_ms
        row["latency_ratio"] = latency[key].median_ms / base
    return rows


def print_rows(rows):
    head = "block criterion ratio acc_before acc params int8_KB latency_ms ratio verified"
    print(" | ".join(head.split()))
    for r in rows:
        before = "-" if r["acc_before"] is None else f"{r['acc_before']:.4f}"
        print(
            f"{r['block']} | {r['criterion']} | {r['ratio']:.2f} | {before} | {r['acc']:.4f} | "
            f"{r['params']:,} | {r['bytes'] / 1024:.1f} | {r['latency_ms']:.3f} | "
            f"{r['latency_ratio']:.2f} | {r['verified']}"
        )
    for r in rows:
        if r["failures"]:
            print(f"{r['block']} {r['criterion']} {r['ratio']}: " + "; ".join(r["failures"]))


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = list(dict.fromkeys(r["block"] for r in rows))
    fig, axes = plt.subplots(1, len(blocks), figsize=(4 * len(blocks), 3.2), squeeze=False)
    for ax, block in zip(axes[0], blocks, strict=True):
        base = next(r for r in rows if r["block"] == block and r["criterion"] == "-")
        for criterion in CRITERIA:
            points = [(0.0, base["acc"])] + [
                (r["ratio"], r["acc"])
                for r in rows
                if r["block"] == block and r["criterion"] == criterion
            ]
            if len(points) > 1:
                ax.plot(*zip(*points, strict=True), marker="o", label=criterion)
        ax.set(title=f"{block} ResNet-20 (3x3)", xlabel="pruning ratio", ylabel="test accuracy")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    args = arguments()
    keras.utils.set_random_seed(0)
    data = digits_data(args.image_size)
    started, rows = time.perf_counter(), []
    with tempfile.TemporaryDirectory() as folder:
        for block in args.blocks:
            rows += run_block(block, data, args, pathlib.Path(folder))
    print_rows(rows)
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.png:
        plot(rows, args.png)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
