"""The main job's training recipe with and without augmentation, at several image sizes.

Trains the main job's variants (ResNet-20 on the digits, plain, SE, SRM, SA) with the
default recipe (`keras_chanattn.pipeline.default_train_config`), once with the batch
augmentation on and once off, at each image size, and prints validation accuracy and
training seconds per model. The recipe is deterministic: accuracies repeat on the same
machine and software; seconds depend on the machine's load. Run from the repository root:

    .venv/bin/python benchmarks/main_job_recipe.py [--sizes 24,16] [--blocks se,srm]
"""

import argparse
import dataclasses
import time

from keras_chanattn.data import load_data
from keras_chanattn.pipeline import (
    DEFAULT_BLOCKS,
    PipelineConfig,
    build_model,
    default_train_config,
)
from keras_chanattn.train import fit_classifier


def _list(text):
    return [item for item in text.split(",") if item]


def measure(size, augment, variants):
    """`[(variant, validation accuracy, seconds)]` of the recipe at `size`."""
    config = PipelineConfig(image_size=size)
    data = load_data("digits", size, seed=config.train.seed)
    recipe = dataclasses.replace(default_train_config(), augment=augment)
    rows = []
    for variant in variants:
        start = time.perf_counter()
        _, summary = fit_classifier(
            lambda v=variant: build_model(config, v, data.num_classes, data.image_shape[-1]),
            data,
            recipe,
            verbose=0,
        )
        rows.append((variant, summary["val_accuracy"], time.perf_counter() - start))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=_list, default=["24"], help="image sizes, e.g. 24,16")
    parser.add_argument("--blocks", type=_list, default=list(DEFAULT_BLOCKS))
    parser.add_argument("--augment", type=_list, default=["on", "off"], help="on, off or both")
    args = parser.parse_args()
    variants = ["plain", *args.blocks]
    print(f"{'size':>4}  {'augment':>7}  {'model':>6}  {'val acc':>7}  {'seconds':>7}")
    for size in args.sizes:
        for augment in args.augment:
            for variant, accuracy, seconds in measure(int(size), augment == "on", variants):
                print(f"{size:>4}  {augment:>7}  {variant:>6}  {accuracy:7.4f}  {seconds:7.1f}")


if __name__ == "__main__":
    main()
