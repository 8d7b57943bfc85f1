"""Which parametrised cases run in the fast suite (`pytest -m "not slow"`).

A family of cases over every block and format is run whole by the full suite; the fast suite
keeps a representative few, so a change is checked in minutes and CI still runs them all.
"""

import pytest


def slow_unless(fast, *values, id=None, marks=()):
    """`pytest.param(*values)`, marked `slow` unless `fast`."""
    marks = list(marks if isinstance(marks, (list, tuple)) else [marks])
    return pytest.param(*values, id=id, marks=marks if fast else [*marks, pytest.mark.slow])


def _keras_backend():
    import keras

    return keras.backend.backend()


# Tests of the TensorFlow-only parts (export, tf.data, tf.distribute, tf.GradientTape,
# Grad-CAM): skipped when the suite runs under another Keras backend (tests/test_backend_jax.py).
tensorflow_only = pytest.mark.skipif(
    _keras_backend() != "tensorflow",
    reason="TensorFlow-only (export, tf.data, tf.distribute or tf.GradientTape): "
    "run under KERAS_BACKEND=tensorflow",
)
