"""A model built under a mixed precision policy exports from a float32 copy: the SavedModel
and every TFLite format come from a float32 graph, checked against that copy."""

import keras
import numpy as np
import pytest

from keras_chanattn.export import PreparedModel
from keras_chanattn.export.artifacts import export_artifacts
from keras_chanattn.export.litert import make_interpreter, run_tflite
from keras_chanattn.export.precision import float32_model, precision_policies

SIZE = 16


def mixed_model(policy):
    """A tiny classifier built under `policy` (the global policy restored after)."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        inputs = keras.Input((SIZE, SIZE, 3))
        x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
        x = keras.layers.GlobalAveragePooling2D()(x)
        model = keras.Model(inputs, keras.layers.Dense(3, name="dense")(x), name="mixed")
    finally:
        keras.config.set_dtype_policy(previous)
    return model


def numpy_forward(model, images):
    """The model's function in float64 NumPy, from its (float32) weights."""
    kernel, bias = (np.asarray(w, "float64") for w in model.get_layer("conv").get_weights())
    dense_kernel, dense_bias = (
        np.asarray(w, "float64") for w in model.get_layer("dense").get_weights()
    )
    windows = np.lib.stride_tricks.sliding_window_view(
        images.astype("float64"), (3, 3), axis=(1, 2)
    )
    maps = np.maximum(np.einsum("nhwcij,ijco->nhwo", windows, kernel) + bias, 0.0)
    return maps.mean(axis=(1, 2)) @ dense_kernel + dense_bias


def _images(seed, count):
    return np.random.default_rng(seed).uniform(size=(count, SIZE, SIZE, 3)).astype("float32")


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_a_mixed_precision_model_exports_from_a_float32_copy(policy, tmp_path):
    model = mixed_model(policy)
    assert precision_policies(model) == [policy]
    held_out = _images(1, 16)
    reports = export_artifacts(
        model, tmp_path, ["savedmodel", "float32", "int8"], _images(0, 32), held_out,
        log=lambda text: None,
    )  # fmt: skip
    assert keras.config.dtype_policy().name == "float32"
    assert {fmt: r.passed for fmt, r in reports.items()} == dict.fromkeys(reports, True)
    assert {r.cast_from for r in reports.values()} == {policy}

    # The float32 file computes the float32 function of the weights...
    want = numpy_forward(model, held_out)
    interpreter, _ = make_interpreter((tmp_path / "mixed_float32.tflite").read_bytes(), 1)
    (got,) = run_tflite(interpreter, held_out)
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-5
    # ...and the report says how far the mixed model itself lies from it.
    mixed = keras.ops.convert_to_numpy(model(held_out)).astype("float64")
    difference = np.abs(mixed - want).max() / np.abs(want).max()
    assert difference > 1e-5  # half precision: the cast is not a no-op
    assert reports["float32"].cast_relative_difference == pytest.approx(difference, rel=0.05)
    assert f"float32 copy of the {policy} model" in reports["int8"].summary()


def test_a_float32_model_is_exported_as_it_is():
    model = mixed_model("float32")
    assert precision_policies(model) == []
    assert float32_model(model) == (model, [])
    with PreparedModel(model) as prepared:
        assert prepared.float_model is model and prepared.cast_from is None
        assert prepared.cast_difference(_images(0, 2)) is None


@pytest.mark.parametrize("policy", ["mixed_float16", "float16"])
def test_the_float32_copy_has_the_weights_cast_and_every_layer_in_float32(policy):
    model = mixed_model(policy)
    copy, policies = float32_model(model)
    assert policies == [policy] and copy is not model
    assert {layer.dtype_policy.name for layer in copy.layers} == {"float32"}
    for a, b in zip(model.weights, copy.weights, strict=True):
        assert b.dtype == "float32"
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    images = _images(2, 4)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(copy(images)), numpy_forward(model, images), rtol=1e-5, atol=1e-6
    )
