"""Checks that only mean something on the JAX backend.

tests/test_backend_jax.py runs this module (with the registry-wide layer suite) in a
`KERAS_BACKEND=jax` subprocess; in the TensorFlow suite it is skipped. Gradients go through
`jax.grad` (the TensorFlow suite's `tf.GradientTape` check cannot watch JAX variables), and
the TensorFlow-only entry points are called for real to see them refuse.
"""

import inspect

import keras
import numpy as np
import pytest

import keras_chanattn
from keras_chanattn.backend import BackendError
from tests.layer_cases import CASES, randomize_weights

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="JAX-only checks: tests/test_backend_jax.py runs them under KERAS_BACKEND=jax",
)

NAMES = keras_chanattn.list_attention()
MESSAGE = "needs KERAS_BACKEND=tensorflow, but Keras runs on 'jax'"


def built_layer(name, seed=0):
    layer = keras_chanattn.create_attention(name, **CASES[name].kwargs)
    layer.build((None, None, None, CASES[name].channels))
    randomize_weights(layer, seed)
    return layer


def tiny_model(attention="srm"):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    x = keras_chanattn.create_attention(attention, name="attention")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x))


@pytest.mark.parametrize("name", NAMES)
def test_jax_gradients_are_finite_for_constant_input(name):
    """`jax.grad` through the block's stateless call in training mode, for the input and
    every trainable weight, on a constant input (zero variance: the division-by-std case)."""
    import jax
    import jax.numpy as jnp

    layer = built_layer(name)
    trainable = [v.value for v in layer.trainable_variables]
    frozen = [v.value for v in layer.non_trainable_variables]

    takes_training = "training" in inspect.signature(layer.call).parameters
    kwargs = {"training": True} if takes_training else {}

    def loss(trainable, x):
        y, _ = layer.stateless_call(trainable, frozen, x, **kwargs)
        return jnp.sum(y * y)

    x = jnp.full((2, 5, 5, CASES[name].channels), 0.7, "float32")
    weight_grads, input_grad = jax.grad(loss, argnums=(0, 1))(trainable, x)
    assert len(weight_grads) == len(trainable) > 0
    for grad in [input_grad, *weight_grads]:
        assert np.all(np.isfinite(np.asarray(grad))), f"{name}: non-finite gradient"
    assert np.any(np.asarray(input_grad) != 0)


def test_jax_gradient_matches_finite_differences():
    """One block's input gradient against central differences in float64 NumPy terms."""
    import jax
    import jax.numpy as jnp

    layer = built_layer("se")
    trainable = [v.value for v in layer.trainable_variables]
    frozen = [v.value for v in layer.non_trainable_variables]

    def loss(x):
        y, _ = layer.stateless_call(trainable, frozen, x)
        return jnp.sum(jnp.sin(y))

    x = np.random.default_rng(3).normal(size=(1, 3, 3, CASES["se"].channels)).astype("float32")
    grad = np.asarray(jax.grad(loss)(x))
    step = 1e-2
    for index in [(0, 0, 0, 0), (0, 1, 2, 3), (0, 2, 1, 1)]:
        plus, minus = x.copy(), x.copy()
        plus[index] += step
        minus[index] -= step
        numeric = (float(loss(plus)) - float(loss(minus))) / (2 * step)
        assert abs(grad[index] - numeric) <= 1e-2 * max(1.0, abs(numeric)), index


def test_export_entry_points_refuse_on_jax(tmp_path):
    from keras_chanattn.export import export_saved_model, export_tflite
    from keras_chanattn.models.params import count_flops

    model = tiny_model()
    with pytest.raises(BackendError, match=MESSAGE):
        export_tflite(model, tmp_path / "m.tflite", "float32")
    with pytest.raises(BackendError, match=MESSAGE):
        export_saved_model(model, tmp_path / "sm")
    with pytest.raises(BackendError, match=MESSAGE):
        count_flops(model)
    assert list(tmp_path.iterdir()) == []


def test_cli_export_stops_with_one_line_on_jax(tmp_path, capsys):
    from keras_chanattn import cli

    path = tmp_path / "m.keras"
    tiny_model().save(path)
    assert cli.main(["export", str(path), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "`chanattn export` " + MESSAGE in err
    assert not (tmp_path / "out").exists()


def test_fit_classifier_trains_on_jax_without_a_strategy(tmp_path):
    """The documented subset: `fit_classifier` with the default strategy (one device),
    its tf.data pipelines feeding JAX arrays; it learns digits and writes its run folder
    (test_train's run of the same model, on TensorFlow)."""
    from keras_chanattn.data import digits_data
    from keras_chanattn.train import TrainConfig, fit_classifier
    from tests.test_train import tiny_classifier

    data = digits_data(image_size=8, test_fraction=0.5)
    data.train, data.validation = data.train.take(256), data.validation.take(128)
    config = TrainConfig(epochs=3, batch_size=32, learning_rate=0.1, warmup_epochs=0)
    model, summary = fit_classifier(tiny_classifier, data, config, out_dir=tmp_path, verbose=0)
    assert summary["epochs_run"] == 3 and summary["steps"] == 3 * 8
    assert summary["replicas"] == 1
    assert summary["val_accuracy"] > 0.5  # 10 classes: chance is 0.1; as in test_train
    loaded = keras.saving.load_model(tmp_path / "last.keras")
    images = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0))
