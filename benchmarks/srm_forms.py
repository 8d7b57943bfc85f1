"""Compares SRM's two full-int8 export forms on a trained model: with and without the
per-channel scaling before pooling (`StyleRecalibration(scale_statistics=...)`).

Converts the model twice (every SRM layer set one way, then the other), each on several
random draws of calibration images from the digits' training split, and prints the int8
.tflite's relative error and top-1 agreement against the float Keras model on the held-out
split, with the out-of-distribution probes' figures. The model must take the digits at its
input size (e.g. a model the main job trained: `export/runs/<run>/srm/model.keras`).

    .venv/bin/python benchmarks/srm_forms.py export/runs/<run>/srm/model.keras
"""

import argparse

import numpy as np


def _layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _layers(layer)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a .keras file holding StyleRecalibration layers")
    parser.add_argument("--draws", type=int, default=3, help="calibration draws per form")
    parser.add_argument("--calibration", type=int, default=200, help="images per draw")
    args = parser.parse_args(argv)

    import keras

    from keras_chanattn.data import load_digits_images
    from keras_chanattn.export import convert_tflite, verify_tflite
    from keras_chanattn.images import image_input_spec
    from keras_chanattn.layers import StyleRecalibration

    model = keras.saving.load_model(args.model)
    spec = image_input_spec(model)
    (train, _), (held_out, _) = load_digits_images((spec.height, spec.width), spec.channels)
    if spec.height is None or spec.width is None:
        parser.error(f"{args.model} leaves its input size unknown; save it with a fixed size.")
    blocks = [layer for layer in _layers(model) if isinstance(layer, StyleRecalibration)]
    if not blocks:
        parser.error(f"{args.model} holds no StyleRecalibration layer.")
    print(f"{args.model}: {len(blocks)} SRM layers; held-out {len(held_out)} digits images")
    print(f"{'form':<10}{'draw':>5}{'rel err':>9}{'top-1':>8}{'probe err':>11}{'probe top-1':>12}")
    for scaled in (False, True):
        for block in blocks:
            block.scale_statistics = scaled
        for draw in range(args.draws):
            rng = np.random.default_rng(draw)
            calibration = train[rng.permutation(len(train))[: args.calibration]]
            tflite = convert_tflite(model, "int8", calibration)
            r = verify_tflite(tflite, model, "int8", held_out, enforce=False)
            print(
                f"{'scaled' if scaled else 'default':<10}{draw:>5}"
                f"{r.held_out.relative_error:>9.3f}{r.held_out.top1_agreement:>8.3f}"
                f"{r.probes.relative_error:>11.3f}{r.probes.top1_agreement:>12.3f}"
                + ("" if r.passed else "  FAILED: " + "; ".join(r.failures))
            )


if __name__ == "__main__":
    main()
