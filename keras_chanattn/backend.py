"""Which Keras backend runs, and the guard of the TensorFlow-only entry points.

The layers, model builders, `add_attention`, `.keras` files and `model.fit` run on any
Keras 3 backend (they use `keras.ops` only). Export (SavedModel, TFLite), FLOPs counting,
Grad-CAM and the `tf.distribute` side of training trace TensorFlow graphs, so they need
Keras on TensorFlow: `require_tensorflow` stops them before any work with a one-line
error that names the fix.
"""

import keras


class BackendError(RuntimeError):
    """A TensorFlow-only entry point was called while Keras runs on another backend."""


def backend():
    """The name of the backend Keras runs on: `"tensorflow"`, `"jax"`, `"torch"`, ..."""
    return keras.backend.backend()


def require_tensorflow(what):
    """Raises `BackendError` unless Keras runs on TensorFlow.

    Args:
        what: the entry point, as the message should name it (e.g. `"TFLite export"`).
    """
    if backend() != "tensorflow":
        raise BackendError(
            f"{what} needs KERAS_BACKEND=tensorflow, but Keras runs on {backend()!r}: set "
            "KERAS_BACKEND=tensorflow before Keras is imported (a .keras file saved under "
            "any backend loads there)."
        )
