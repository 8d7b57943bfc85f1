"""Export for phones: SavedModel and verified, quantised TFLite, for any Keras image model.

- `export_saved_model(model, path)`: a SavedModel with a serving signature (static batch 1
  by default), checked by reloading it.
- `export_tflite(model, path, quantization, representative_data, validation_data)`:
  float32, float16, dynamic-range int8 or full int8 TFLite with builtin ops only, verified
  against the Keras model in the LiteRT interpreter (`verify_tflite`) before it is written.
- `inference_model(model)`: the clone export converts, each layer with an
  `inference_layer()` replaced by what it returns.
- `PreparedModel(model)`: what several exports of one model share (its inference form,
  one batch-1 SavedModel every format converts, the Keras outputs); pass it as `prepared=`.

Every write is atomic and refuses to replace an existing artefact unless `overwrite=True`.
"""

from keras_chanattn.export.checks import (
    DEFAULT_THRESHOLDS,
    QUANTIZATIONS,
    VerificationThresholds,
    default_thresholds,
)
from keras_chanattn.export.errors import ConversionError, ExportVerificationError
from keras_chanattn.export.inference import declared_float_ops, export_hints, inference_model
from keras_chanattn.export.metrics import ComparisonMetrics
from keras_chanattn.export.prepared import PreparedModel
from keras_chanattn.export.report import VerificationReport
from keras_chanattn.export.saved_model import SavedModelReport, export_saved_model
from keras_chanattn.export.tflite import convert_tflite, export_tflite
from keras_chanattn.export.verify import verify_tflite
from keras_chanattn.images import ImageSpec, image_input_spec, probe_images

__all__ = [
    "DEFAULT_THRESHOLDS",
    "QUANTIZATIONS",
    "ComparisonMetrics",
    "ConversionError",
    "ExportVerificationError",
    "ImageSpec",
    "PreparedModel",
    "SavedModelReport",
    "VerificationReport",
    "VerificationThresholds",
    "convert_tflite",
    "declared_float_ops",
    "default_thresholds",
    "export_hints",
    "export_saved_model",
    "export_tflite",
    "image_input_spec",
    "inference_model",
    "probe_images",
    "verify_tflite",
]
