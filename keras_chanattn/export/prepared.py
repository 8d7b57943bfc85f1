"""One model prepared once for several exports: its inference form, SavedModel and Keras outputs.

Every TFLite format converts the same batch-1 SavedModel of the same inference form, and is
verified against the same Keras outputs; `PreparedModel` computes each of them once and lends
them to `export_saved_model`, `export_tflite` and `export_artifacts` (pass `prepared=`).
"""

import hashlib
import os
import shutil
import tempfile

import numpy as np

from keras_chanattn.export.inference import declared_float_ops, inference_model
from keras_chanattn.export.saved_model import keras_outputs, write_saved_model


def _batch_key(batch):
    """The content of `batch` (shape, dtype and bytes), as a dictionary key."""
    data = np.ascontiguousarray(batch)
    return data.shape, data.dtype.str, hashlib.sha256(data.tobytes()).digest()


class PreparedModel:
    """The work every export of `model` shares, done on first use and kept.

    - `export_model`, `inference_forms`: `inference_model(model)`, cloned once, so every
      artefact comes from the same clone (the same layer names for op attribution).
    - `float_allowlist`: `declared_float_ops(export_model)`.
    - `saved_model(spec)`: a batch-1 SavedModel of `export_model` in a temporary directory,
      written once per image spec; every TFLite format converts it.
    - `keras_outputs(images)`: `saved_model.keras_outputs(model, images)`, each batch
      computed once (looked up by its content), so the formats' verifications and the
      SavedModel's reload check share the Keras reference outputs.

    Use it as a context manager (or call `close()`): the temporary directory goes with it.
    The model must not change (weights included) while it is in use.

    Args:
        model: the Keras model every export is of.

    Example:

    >>> with PreparedModel(model) as prepared:
    ...     export_saved_model(model, "out/saved_model", prepared=prepared)
    ...     for fmt in ("float32", "int8"):
    ...         export_tflite(model, f"out/model_{fmt}.tflite", fmt, calibration, held_out,
    ...                       prepared=prepared)
    """

    def __init__(self, model):
        self.model = model
        self.export_model, self.inference_forms = inference_model(model)
        self.float_allowlist = declared_float_ops(self.export_model)
        self._outputs = {}
        self._saved_models = {}
        self._directory = None

    def check_model(self, model):
        """Raises `ValueError` unless `model` is the model this was prepared for."""
        if model is not self.model:
            raise ValueError(
                f"prepared= holds the exports of model {self.model.name!r}, not of "
                f"{model.name!r}; make a PreparedModel(model) for each model."
            )

    def keras_outputs(self, images, batch_size=32):
        """The model's outputs on `images` in inference mode (as `saved_model.keras_outputs`,
        in batches of `batch_size`), each batch computed once."""
        chunks = []
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            key = _batch_key(batch)
            if key not in self._outputs:
                self._outputs[key] = keras_outputs(self.model, batch, batch_size=len(batch))
            chunks.append(self._outputs[key])
        return [np.concatenate(parts) for parts in zip(*chunks, strict=True)]

    def saved_model(self, spec):
        """The directory of a batch-1 SavedModel of `export_model` taking `spec` images,
        written on the first call for `spec`."""
        if spec not in self._saved_models:
            if self._directory is None:
                self._directory = tempfile.mkdtemp(prefix="chanattn-export-")
            directory = os.path.join(self._directory, f"saved_model_{len(self._saved_models)}")
            write_saved_model(self.export_model, directory, spec, batch_size=1)
            self._saved_models[spec] = directory
        return self._saved_models[spec]

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
        self._outputs.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
