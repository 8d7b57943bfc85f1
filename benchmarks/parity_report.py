"""Prints each registered block's worst float32 error against its NumPy reference.

The figures behind the layer suite's parity test (which asserts <= 1e-5): every test
case and argument variant of `tests/references/`, training and inference mode, inputs of
shape 2x7x5, 1x8x8 and 3x1x1, random weights. Run from the repository root:

    .venv/bin/python benchmarks/parity_report.py
"""

import sys
from pathlib import Path

import keras
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras_chanattn  # noqa: E402
from tests.layer_cases import CASES, randomize_weights  # noqa: E402


def worst_error(name):
    case = CASES[name]
    variants = [case.kwargs] + [dict(case.kwargs, **extra) for extra in case.extra_kwargs]
    worst = 0.0
    for training in (False, True):
        for shape in [(2, 7, 5), (1, 8, 8), (3, 1, 1)]:
            for i, kwargs in enumerate(variants):
                layer = keras_chanattn.create_attention(name, **kwargs)
                x = np.random.default_rng(i).normal(size=(*shape, case.channels))
                x = x.astype("float32")
                layer.build(x.shape)
                randomize_weights(layer, seed=i)
                expected = case.reference(layer, x.astype(np.float64), training)
                got = keras.ops.convert_to_numpy(layer(x, training=training))
                worst = max(worst, float(np.max(np.abs(got - expected))))
    return worst, len(variants)


def main():
    print(f"{'block':<18} {'max abs error':>13} {'variants':>8}")
    for name in keras_chanattn.list_attention():
        error, count = worst_error(name)
        print(f"{name:<18} {error:>13.1e} {count:>8}")


if __name__ == "__main__":
    main()
