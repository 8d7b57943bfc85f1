"""SavedModel export with a serving signature, checked by reloading it (`tf.saved_model.load`)."""

import dataclasses
import os

import keras
import numpy as np

from keras_chanattn.backend import require_tensorflow
from keras_chanattn.export.errors import CheckReport, ExportVerificationError
from keras_chanattn.export.files import atomic_output, check_output_path
from keras_chanattn.images import as_images, image_input_spec, synthetic_images

# Name of the signature's input argument (and of the TFLite input).
INPUT_NAME = "images"
SIGNATURE_KEY = "serving_default"


def _check_batch_size(batch_size):
    if batch_size is None:
        return None
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(
            f"batch_size must be a positive integer (static) or None (dynamic), got {batch_size!r}."
        )
    return batch_size


def write_saved_model(model, directory, spec, batch_size=1):
    """Writes `model` (in inference mode) as a SavedModel with one serving signature.

    The signature `serving_default` (also `serve`) takes `images` of shape
    `(batch_size, H, W, C)` (`None` entries are dynamic) and returns the model's outputs as
    `output_0`, `output_1`, ... Writes straight into `directory`; callers wanting atomicity
    pass a temporary path.
    """
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve(images):
        return model(images, training=False)

    archive.add_endpoint(
        "serve",
        serve,
        input_signature=[tf.TensorSpec(spec.batch_shape(batch_size), spec.dtype, name=INPUT_NAME)],
    )
    archive.write_out(os.fspath(directory), verbose=False)


def keras_outputs(model, images, batch_size=32):
    """The model's outputs in inference mode, as a list of float32 NumPy arrays."""
    chunks = []
    for start in range(0, len(images), batch_size):
        out = model(images[start : start + batch_size], training=False)
        chunks.append(
            [np.asarray(keras.ops.convert_to_numpy(t), "float32") for t in keras.tree.flatten(out)]
        )
    return [np.concatenate(parts) for parts in zip(*chunks, strict=True)]


def output_order(names):
    """Sorts signature output names as the model's flattened outputs: `output_0`, `output_1`..."""

    def key(name):
        stem, _, index = name.rpartition("_")
        return (stem, int(index)) if index.isdigit() else (name, -1)

    return sorted(names, key=key)


@dataclasses.dataclass
class SavedModelReport(CheckReport):
    """What `export_saved_model` wrote and how its reload compared with the Keras model.

    Attributes:
        path: where the SavedModel is.
        signature: the serving signature key.
        input_shape: the signature's input shape (`None` is dynamic).
        input_dtype: the signature's input dtype.
        inference_forms: the layers replaced by their inference forms.
        check_samples: how many images the reload check ran.
        max_abs_error: max |reloaded - Keras| over the check images.
        relative_error: `max_abs_error / max |Keras output|`.
        tolerance: the relative error allowed.
        failures: the failed checks (empty when it passed).
        cast_from: the mixed precision policy the model was cast from to float32 for
            export (e.g. `"mixed_float16"`), or `None`; the check then compares with the
            float32 copy.
        cast_relative_difference: with `cast_from`, `max |model - float32 copy| / max
            |float32 copy|` on the check images: what the cast changed.
    """

    path: str
    signature: str
    input_shape: list
    input_dtype: str
    inference_forms: list
    check_samples: int
    max_abs_error: float
    relative_error: float
    tolerance: float
    failures: list = dataclasses.field(default_factory=list)
    cast_from: str | None = None
    cast_relative_difference: float | None = None


def check_saved_model(directory, model, spec, batch_size, images, tolerance, reference=None):
    """Reloads the SavedModel at `directory` and compares its signature with `model` on `images`.

    `reference` computes the Keras outputs (`keras_outputs` of `model` when `None`; a
    `PreparedModel.keras_outputs` shares them with other checks).

    Returns:
        `(samples, max_abs_error, relative_error, failures)`.
    """
    import tensorflow as tf

    loaded = tf.saved_model.load(os.fspath(directory))
    if SIGNATURE_KEY not in loaded.signatures:
        return 0, float("nan"), float("nan"), [f"no {SIGNATURE_KEY!r} signature after reload"]
    signature = loaded.signatures[SIGNATURE_KEY]
    step = batch_size or len(images)
    got = []
    for start in range(0, len(images) - step + 1, step):
        result = signature(**{INPUT_NAME: tf.constant(images[start : start + step])})
        got.append([result[name].numpy() for name in output_order(result)])
    got = [np.concatenate(parts) for parts in zip(*got, strict=True)]
    reference = reference or (lambda batch: keras_outputs(model, batch))
    want = reference(images[: len(got[0])])
    if len(got) != len(want):
        return (
            len(images),
            float("nan"),
            float("nan"),
            [f"the reloaded signature has {len(got)} outputs, the Keras model {len(want)}"],
        )
    max_abs = max(float(np.max(np.abs(g - w))) for g, w in zip(got, want, strict=True))
    scale = max(float(np.max(np.abs(w))) for w in want)
    relative = max_abs / max(scale, 1e-12)
    failures = []
    if not np.isfinite(max_abs):
        failures.append("the reloaded SavedModel gives non-finite outputs")
    elif relative > tolerance:
        failures.append(
            f"the reloaded SavedModel differs from the Keras model: relative error "
            f"{relative:.3g} > {tolerance:.3g} (max abs error {max_abs:.3g})"
        )
    return len(got[0]), max_abs, relative, failures


def _check_images(check_data, spec, batch_size):
    """The reload check's images: `check_data` or smooth random images, in whole batches."""
    count = 4 if batch_size is None else 2 * batch_size
    images = as_images(check_data, spec, "check_data", limit=count)
    if images is None:
        images = synthetic_images(spec, count)
    if batch_size is not None and len(images) % batch_size:
        # A static batch needs whole batches: repeat images to fill the last one.
        images = np.resize(images, (-(-len(images) // batch_size) * batch_size, *images.shape[1:]))
    return images


def export_saved_model(
    model,
    path,
    batch_size=1,
    overwrite=False,
    image_size=None,
    check_data=None,
    tolerance=1e-4,
    prepared=None,
):
    """Exports `model` as a SavedModel with a serving signature, and checks it by reloading.

    Layers with an inference form are first replaced by it (see `inference_model`); the
    signature runs the model in inference mode. The SavedModel is written to a temporary
    directory beside `path`, reloaded with `tf.saved_model.load`, its `serving_default`
    signature compared with the ORIGINAL Keras model, and only then renamed to `path`. A
    model computing in a mixed precision policy (`mixed_float16`, `mixed_bfloat16`) is
    exported from a float32 copy (`PreparedModel`), and compared with that copy.

    Args:
        model: a Keras model with one NHWC image input.
        path: the SavedModel directory to create.
        batch_size: static batch size of the signature, or `None` for a dynamic batch.
            Defaults to `1`.
        overwrite: replace an existing SavedModel at `path`. Defaults to `False`.
        image_size: `(height, width)` to fix in the signature where the model's input leaves
            them unknown; without it they stay dynamic. Defaults to `None`.
        check_data: images for the reload check (array, dataset...; see
            `keras_chanattn.images`). Defaults to `None`: smooth random images.
        tolerance: largest relative error (`max |SavedModel - Keras| / max |Keras|`) the
            check accepts. Defaults to `1e-4`.
        prepared: a `PreparedModel` of `model` shared with other exports. Defaults to
            `None`: one for this call.

    Returns:
        A `SavedModelReport`.

    Raises:
        FileExistsError: `path` exists and `overwrite` is false.
        ValueError: the model's input is not an image, or a bad argument.
        ExportVerificationError: the reloaded SavedModel does not match the Keras model;
            nothing is written.

    Example:

    >>> report = export_saved_model(model, "export/se_resnet50_saved_model")
    >>> report.relative_error < 1e-4
    True
    """
    require_tensorflow("SavedModel export (export_saved_model)")
    from keras_chanattn.export.prepared import prepared_for  # it imports this module

    path = check_output_path(path, overwrite, "directory")
    batch_size = _check_batch_size(batch_size)
    spec = image_input_spec(model, image_size, require_static=False)
    check_spec = spec if spec.is_static else image_input_spec(model, (32, 32))
    images = _check_images(check_data, check_spec, batch_size)
    with (
        prepared_for(model, prepared) as prepared,
        atomic_output(path, overwrite, "directory") as tmp,
    ):
        prepared.write_saved_model(tmp, spec, batch_size)
        checked = check_saved_model(
            tmp, model, spec, batch_size, images, tolerance, reference=prepared.keras_outputs
        )
        report = _report(path, spec, batch_size, prepared, images, checked, tolerance)
        if report.failures:
            raise ExportVerificationError(report)
    return report


def _report(path, spec, batch_size, prepared, images, checked, tolerance):
    """The `SavedModelReport` of a reload check's `(samples, max abs, relative, failures)`."""
    samples, max_abs, relative, failures = checked
    return SavedModelReport(
        path=path,
        signature=SIGNATURE_KEY,
        input_shape=list(spec.batch_shape(batch_size)),
        input_dtype=spec.dtype,
        inference_forms=prepared.inference_forms,
        check_samples=samples,
        max_abs_error=max_abs,
        relative_error=relative,
        tolerance=tolerance,
        failures=failures,
        cast_from=prepared.cast_from,
        cast_relative_difference=prepared.cast_difference(images[:samples]),
    )
