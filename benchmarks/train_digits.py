"""Benchmark: a CIFAR ResNet-20 on the embedded digits, plain and with each registered block.

Trains every variant with the same recipe and seed (the main job's training stage, no
export) and prints test accuracy and seconds per epoch side by side. Not a test: it takes
minutes. Run from the repository root:

    .venv/bin/python benchmarks/train_digits.py [--epochs 10] [--blocks se,srm]
"""

import argparse
import dataclasses
import time

from keras_chanattn.pipeline import PipelineConfig, default_train_config, run_pipeline


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--blocks", default=None, help="comma-separated; default: all")
    parser.add_argument("--out", default="export/runs", help="runs folder")
    parser.add_argument(
        "--target", type=float, default=0.97, help="accuracy every block must reach"
    )
    args = parser.parse_args()
    config = PipelineConfig(
        blocks=args.blocks.split(",") if args.blocks else "all",
        train=dataclasses.replace(default_train_config(), epochs=args.epochs),
        formats=[],
        out_dir=args.out,
        run_name=f"train-digits-{time.strftime('%Y%m%d-%H%M%S')}",
    )
    rows, _ = run_pipeline(config, verbose=0)
    short = [r["variant"] for r in rows if r["val_accuracy"] < args.target]
    print(f"Blocks below {args.target:.0%} test accuracy: {short or 'none'}")
    return 1 if short else 0


if __name__ == "__main__":
    raise SystemExit(main())
