"""One model prepared once for several exports: its inference form, SavedModel and Keras outputs.

Every TFLite format converts the same batch-1 SavedModel of the same inference form, and is
verified against the same Keras outputs; `PreparedModel` computes each of them once and lends
them to `export_saved_model`, `export_tflite` and `export_artifacts` (pass `prepared=`).
"""

import contextlib
import hashlib
import os
import shutil
import tempfile

import numpy as np

from keras_chanattn.backend import require_tensorflow
from keras_chanattn.export.head import (
    KEPT,
    LEFT_TO_APP,
    ends_in_softmax,
    softmax_layer,
    without_softmax,
)
from keras_chanattn.export.inference import declared_float_ops, inference_model
from keras_chanattn.export.precision import float32_model, float32_policy
from keras_chanattn.export.saved_model import keras_outputs, write_saved_model


def _batch_key(batch):
    """The content of `batch` (shape, dtype and bytes), as a dictionary key."""
    data = np.ascontiguousarray(batch)
    return data.shape, data.dtype.str, hashlib.sha256(data.tobytes()).digest()


class PreparedModel:
    """The work every export of `model` shares, done on first use and kept.

    - `float_model`, `cast_from`: `precision.float32_model(model)`: the model itself, or,
      when it computes in a mixed or low precision policy, a float32 copy of it, and the
      policy it was cast from (e.g. `"mixed_float16"`; `None` for a float32 model). Every
      artefact comes from the float32 model and is checked against it.
    - `export_model`, `inference_forms`: `inference_model(float_model)`, cloned once, so
      every artefact comes from the same clone (the same layer names for op attribution).
    - `float_allowlist`: `declared_float_ops(export_model)`.
    - `saved_model(spec)`: a batch-1 SavedModel of `export_model` in a temporary directory,
      written once per image spec; every TFLite format converts it.
    - `converter(spec)`: a `TFLiteConverter` of that SavedModel, loaded once per spec; the
      float formats reconfigure and reuse it (each load reads the SavedModel anew).
    - `keras_outputs(images)`: `saved_model.keras_outputs(float_model, images)`, each batch
      computed once (looked up by its content), so the formats' verifications and the
      SavedModel's reload check share the Keras reference outputs.
    - `has_softmax_head`: the model ends in a softmax (`export.head`); then
      `saved_model(spec, logits=True)` is of the export model without it (what full int8
      converts) and `keras_outputs(images, logits=True)` gives the float model's logits;
      `reference_for(tflite_bytes)` picks the outputs a file is compared with.

    Use it as a context manager (or call `close()`): the temporary directory goes with it.
    The model must not change (weights included) while it is in use.

    Args:
        model: the Keras model every export is of.

    Raises:
        ValueError: a model in a mixed precision policy that cannot be rebuilt in float32
            (`precision.float32_model`), or an invalid inference form.

    Example:

    >>> with PreparedModel(model) as prepared:
    ...     export_saved_model(model, "out/saved_model", prepared=prepared)
    ...     for fmt in ("float32", "int8"):
    ...         export_tflite(model, f"out/model_{fmt}.tflite", fmt, calibration, held_out,
    ...                       prepared=prepared)
    """

    def __init__(self, model):
        require_tensorflow("Export (PreparedModel)")
        self.model = model
        self.float_model, policies = float32_model(model)
        self.cast_from = ", ".join(policies) or None
        with float32_policy():  # inference forms made float32 even under a global mixed policy
            self.export_model, self.inference_forms = inference_model(self.float_model)
        self.float_allowlist = declared_float_ops(self.export_model)
        self.has_softmax_head = softmax_layer(self.float_model) is not None
        self._logits_models = {}
        self._outputs = {}
        self._cast_differences = {}
        self._saved_models = {}
        self._converters = {}
        self._directory = None

    def check_model(self, model):
        """Raises `ValueError` unless `model` is the model this was prepared for."""
        if model is not self.model:
            raise ValueError(
                f"prepared= holds the exports of model {self.model.name!r}, not of "
                f"{model.name!r}; make a PreparedModel(model) for each model."
            )

    def _model(self, name, logits):
        """`float_model` or `export_model` (`name`), without its softmax head if `logits`."""
        model = getattr(self, name)
        if not logits:
            return model
        if not self.has_softmax_head:
            raise ValueError(f"Model {self.model.name!r} has no softmax head to take off.")
        if name not in self._logits_models:
            self._logits_models[name] = without_softmax(model)
        return self._logits_models[name]

    def reference_for(self, tflite_bytes):
        """`(reference, softmax_head)`: the Keras outputs to compare the `.tflite` with (the
        logits when the model's softmax head is not in the file) and the report's
        `softmax_head` (`None`, `"kept"` or `"left to the app"`)."""
        if not self.has_softmax_head:
            return self.keras_outputs, None
        if ends_in_softmax(tflite_bytes):
            return self.keras_outputs, KEPT
        return (lambda images: self.keras_outputs(images, logits=True)), LEFT_TO_APP

    def keras_outputs(self, images, batch_size=32, logits=False):
        """The float32 model's outputs on `images` in inference mode (as
        `saved_model.keras_outputs`, in batches of `batch_size`), each batch computed once;
        with `logits`, those of the model without its softmax head."""
        model = self._model("float_model", logits)
        chunks = []
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            key = (_batch_key(batch), logits)
            if key not in self._outputs:
                self._outputs[key] = keras_outputs(model, batch, batch_size=len(batch))
            chunks.append(self._outputs[key])
        return [np.concatenate(parts) for parts in zip(*chunks, strict=True)]

    def cast_difference(self, images):
        """`max |model - float32 copy| / max |float32 copy|` over the outputs on `images`:
        what casting a mixed precision model to float32 changed; `None` when nothing was
        cast."""
        if self.cast_from is None:
            return None
        key = _batch_key(images)
        if key not in self._cast_differences:
            want = self.keras_outputs(images)
            got = keras_outputs(self.model, images)
            error = max(float(np.max(np.abs(g - w))) for g, w in zip(got, want, strict=True))
            scale = max(float(np.max(np.abs(w))) for w in want)
            self._cast_differences[key] = error / max(scale, 1e-12)
        return self._cast_differences[key]

    def cast_notes(self, images):
        """The report fields `cast_from` and `cast_relative_difference` (on `images`)."""
        return {
            "cast_from": self.cast_from,
            "cast_relative_difference": self.cast_difference(images),
        }

    def saved_model(self, spec, logits=False):
        """The directory of a batch-1 SavedModel of `export_model` (without its softmax head
        if `logits`) taking `spec` images, written on the first call for `(spec, logits)`."""
        key = (spec, logits)
        if key not in self._saved_models:
            if self._directory is None:
                self._directory = tempfile.mkdtemp(prefix="chanattn-export-")
            directory = os.path.join(self._directory, f"saved_model_{len(self._saved_models)}")
            model = self._model("export_model", logits)
            write_saved_model(model, directory, spec, batch_size=1)
            self._saved_models[key] = directory
        return self._saved_models[key]

    def converter(self, spec):
        """`tf.lite.TFLiteConverter.from_saved_model(self.saved_model(spec))`, made once per
        `spec`; its user sets every option it relies on before each conversion."""
        if spec not in self._converters:
            import tensorflow as tf

            self._converters[spec] = tf.lite.TFLiteConverter.from_saved_model(
                self.saved_model(spec)
            )
        return self._converters[spec]

    def write_saved_model(self, directory, spec, batch_size):
        """`saved_model.write_saved_model(export_model, directory, spec, batch_size)`; a
        batch-1 SavedModel is copied from `saved_model(spec)`, written once."""
        if batch_size == 1:
            shutil.copytree(self.saved_model(spec), directory)
        else:
            write_saved_model(self.export_model, directory, spec, batch_size)

    def close(self):
        """Removes the temporary SavedModels and forgets the kept outputs."""
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
        self._directory = None
        self._saved_models.clear()
        self._converters.clear()
        self._logits_models.clear()
        self._outputs.clear()
        self._cast_differences.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


@contextlib.contextmanager
def prepared_for(model, prepared=None):
    """`prepared` (checked to be of `model`), or a `PreparedModel` of `model` for the block."""
    if prepared is not None:
        prepared.check_model(model)
        yield prepared
        return
    with PreparedModel(model) as prepared:
        yield prepared
