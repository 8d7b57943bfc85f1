"""What the full-int8 output range's margin costs and saves, for each margin.

The margin widens the int8 output's range over the calibration images' logits
(`keras_chanattn.export.ranges.widen_output_ranges`). Printed per model and margin: the
relative error (raw, and with the output's clipping taken out), the images clipped, and the
top-1 agreement with the float Keras model.

Each model is converted to full int8 once per margin and calibration draw (random draws of
the digits' training split), and compared with the Keras model on the held-out split. The
models must take the digits at their input size (e.g. those `chanattn run --name timing`
trains: `export/runs/timing/<block>/model.keras`).

    .venv/bin/python benchmarks/int8_output_margin.py export/runs/timing/*/model.keras
"""

import argparse

import numpy as np


def _margins(text):
    return [float(value) for value in text.split(",")]


def measure(model, train, held_out, margins, draws, calibration):
    """`{margin: [ComparisonMetrics per draw]}` of `model`'s int8 conversions."""
    from keras_chanattn.export import PreparedModel, convert_tflite
    from keras_chanattn.export.litert import io_details, make_interpreter, run_tflite, signature_io
    from keras_chanattn.export.metrics import compare_outputs, quantized_range

    found = {margin: [] for margin in margins}
    with PreparedModel(model) as prepared:
        want = prepared.keras_outputs(held_out)
        for draw in range(draws):
            images = train[np.random.default_rng(draw).permutation(len(train))[:calibration]]
            for margin in margins:
                tflite = convert_tflite(
                    model, "int8", images, prepared=prepared, output_margin=margin
                )
                interpreter, _ = make_interpreter(tflite, 2)
                ranges = [quantized_range(io_details(d)) for _, d in signature_io(interpreter)[3]]
                got = run_tflite(interpreter, held_out)
                found[margin].append(compare_outputs(got, want, ranges))
    return found


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help=".keras files taking the digits")
    parser.add_argument(
        "--margins", type=_margins, default=[0.0, 0.1, 0.2, 0.25], help="comma-separated"
    )
    parser.add_argument("--draws", type=int, default=3, help="calibration draws per margin")
    parser.add_argument("--calibration", type=int, default=200, help="images per draw")
    args = parser.parse_args(argv)

    from keras_chanattn.data import load_digits_images
    from keras_chanattn.images import image_input_spec
    from keras_chanattn.model_files import load_model_file

    width = max(len(path) for path in args.models) + 2
    print(f"{'model':<{width}}{'margin':>7}{'rel err':>9}{'clipped out':>12}"
          f"{'images clipped':>15}{'top-1':>8}")  # fmt: skip
    for path in args.models:
        model = load_model_file(path)
        spec = image_input_spec(model)
        (train, _), (held_out, _) = load_digits_images((spec.height, spec.width), spec.channels)
        found = measure(model, train, held_out, args.margins, args.draws, args.calibration)
        for margin, metrics in found.items():
            # Means over the draws; the clipped count is out of len(held_out) per draw.
            print(
                f"{path:<{width}}{margin:>7.2f}"
                f"{np.mean([m.relative_error for m in metrics]):>9.4f}"
                f"{np.mean([m.clipped_relative_error for m in metrics]):>12.4f}"
                f"{np.mean([m.saturated_images for m in metrics]):>15.2f}"
                f"{np.mean([m.top1_agreement for m in metrics]):>8.4f}",
                flush=True,
            )
    print(f"means over {args.draws} calibration draws of {args.calibration} images")


if __name__ == "__main__":
    main()
