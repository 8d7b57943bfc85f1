"""Gather-Excite checks the registry-wide suite cannot make: the parametric gather (GE-theta,
GE-theta-plus) needs a known spatial size, and the tiled gather's border rules."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_chanattn import FoldedGatherExcite, GatherExcite
from tests.layer_cases import randomize_weights
from tests.marks import tensorflow_only
from tests.references.gather_excite import gather_excite as reference

TOLERANCE = 1e-5
VARIANTS = [
    {"parametric": True},  # GE-theta
    {"parametric": True, "use_mlp": True, "reduction": 4},  # GE-theta-plus
    {"parametric": True, "use_mlp": True, "reduction": 3, "divisor": 8},
    {"parametric": True, "gate_activation": "hard_sigmoid"},
]


def random_input(shape, seed=1, scale=1.0, offset=0.0):
    return np.random.default_rng(seed).normal(offset, scale, shape).astype("float32")


def parametric_layer(shape, seed=0, **kwargs):
    layer = GatherExcite(**kwargs)
    layer.build(shape)
    randomize_weights(layer, seed)
    return layer


@pytest.mark.parametrize("kwargs", VARIANTS)
@pytest.mark.parametrize(
    "shape, training",
    [((2, 7, 5), True), ((2, 7, 5), False), ((1, 8, 8), False), ((3, 1, 1), True)],
)
def test_parametric_matches_numpy_reference(kwargs, shape, training):
    # A batch of 1 in training mode is left out: BatchNorm over (N, C) is undefined there.
    x = random_input((*shape, 8))
    layer = parametric_layer(x.shape, **kwargs)
    expected = reference(layer, x.astype(np.float64), training)
    got = keras.ops.convert_to_numpy(layer(x, training=training))
    assert np.max(np.abs(got - expected)) <= TOLERANCE


@pytest.mark.parametrize("kwargs", VARIANTS)
def test_folded_layer_matches_inference_mode(kwargs, tmp_path):
    layer = parametric_layer((None, 7, 5, 8), **kwargs)
    folded = layer.inference_layer()
    assert isinstance(folded, FoldedGatherExcite)
    assert not any("bn" in w.path for w in folded.weights)
    x = random_input((3, 7, 5, 8))
    expected = keras.ops.convert_to_numpy(layer(x, training=False))
    got = keras.ops.convert_to_numpy(folded(x))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # The folded form saves and loads like any layer.
    inputs = keras.Input((7, 5, 8))
    model = keras.Model(inputs, folded(inputs))
    model.save(tmp_path / "folded.keras")
    loaded = keras.saving.load_model(tmp_path / "folded.keras")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(x)), got)
    clone = FoldedGatherExcite.from_config(folded.get_config())
    assert clone.get_config() == folded.get_config()


def test_parameter_free_variants_fold_to_themselves():
    layer = GatherExcite(extent=2)
    layer.build((None, None, None, 8))
    assert layer.inference_layer() is layer


def test_parametric_gather_needs_known_height_and_width():
    with pytest.raises(ValueError, match=r"known height and width.*keras.Input\(\(56, 56"):
        GatherExcite(parametric=True).build((None, None, None, 8))
    with pytest.raises(ValueError, match="known height and width"):
        GatherExcite(parametric=True)(keras.Input((7, None, 8)))


def test_parametric_gather_rejects_another_spatial_size():
    layer = GatherExcite(parametric=True)
    layer(keras.Input((7, 5, 8)))
    with pytest.raises(ValueError, match=r"built for 7x5 .* got an input of 8x8"):
        layer(random_input((1, 8, 8, 8)))


def test_parametric_defaults_start_as_mean_with_reference_batchnorm():
    layer = GatherExcite(parametric=True)
    layer.build((None, 4, 2, 8))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.gather_kernel), 1 / 8)
    assert layer.bn.momentum == 0.9 and layer.bn.epsilon == 1e-5
    # With the initial BatchNorm statistics (mean 0, variance 1) the gate is sigmoid(~GAP).
    x = random_input((2, 4, 2, 8))
    gate = 1 / (1 + np.exp(-x.mean(axis=(1, 2), keepdims=True) / np.sqrt(1 + 1e-5)))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), x * gate, atol=1e-6)


def test_parameter_counts_of_the_variants_at_256_channels():
    def count(**kwargs):
        layer = GatherExcite(**kwargs)
        layer.build((None, 14, 14, 256))
        n = lambda ws: int(sum(np.prod(w.shape) for w in ws))  # noqa: E731
        return n(layer.trainable_weights), n(layer.non_trainable_weights)

    mlp = 2 * 256 * 16 + 16 + 256
    assert count() == (0, 0)
    assert count(extent=4) == (0, 0)
    assert count(use_mlp=True) == (mlp, 0)
    assert count(parametric=True) == (14 * 14 * 256 + 2 * 256, 2 * 256)
    assert count(parametric=True, use_mlp=True) == (14 * 14 * 256 + 2 * 256 + mlp, 2 * 256)


def test_tiles_start_top_left_and_border_tiles_average_their_own_positions():
    """A 3x5 map with extent 2: tiles rows {0,1},{2} x columns {0,1},{2,3},{4}."""
    x = np.arange(1, 16, dtype="float32").reshape(1, 3, 5, 1)
    layer = GatherExcite(extent=2, gate_activation="relu")  # relu: the gate is the mean
    gate = keras.ops.convert_to_numpy(layer(x))[0, :, :, 0] / x[0, :, :, 0]
    means = [[4.0, 6.0, 7.5], [11.5, 13.5, 15.0]]  # e.g. tile (0, 0): mean(1, 2, 6, 7)
    expected = np.repeat(np.repeat(np.array(means), 2, axis=0), 2, axis=1)[:3, :5]
    np.testing.assert_allclose(gate, expected, rtol=1e-6)


@tensorflow_only
def test_tiled_gather_serves_any_size_after_export(tmp_path):
    """A SavedModel with unknown H, W: the padding and crop are computed at run time."""
    layer = GatherExcite(extent=3, use_mlp=True, reduction=2)
    inputs = keras.Input((None, None, 4))
    model = keras.Model(inputs, layer(inputs))
    randomize_weights(layer, seed=2)
    model.export(str(tmp_path / "sm"), format="tf_saved_model", verbose=False)
    reloaded = tf.saved_model.load(str(tmp_path / "sm"))
    for hw in [(1, 1), (7, 5), (6, 9)]:
        x = random_input((2, *hw, 4), seed=hw[0])
        expected = reference(layer, x.astype(np.float64))
        assert np.max(np.abs(reloaded.serve(tf.constant(x)).numpy() - expected)) <= TOLERANCE


def _op_types(function):
    return {op.type for op in function.get_concrete_function().graph.get_operations()}


@tensorflow_only
@pytest.mark.parametrize(
    "extent, h, w",
    [(2, 8, 6), (3, 7, 5), (4, 4, 9), (8, 7, 5), (4, 1, 1)],
    ids=["divisible", "partial-both", "partial-width", "one-tile-smaller-than-extent", "1x1"],
)
def test_static_and_dynamic_tilings_agree_with_the_reference(extent, h, w):
    """A size known as the graph is built takes reshapes, MEAN and a broadcast multiply
    (what TFLite's XNNPACK runs); an unknown one pads, pools and repeats (TILE). Both give
    the reference's outputs and the same gradients."""
    layer = GatherExcite(extent=extent, use_mlp=True, reduction=2)
    layer.build((None, None, None, 4))
    randomize_weights(layer, seed=3)
    x = tf.constant(random_input((2, h, w, 4), seed=h + w))
    static = tf.function(layer, input_signature=[tf.TensorSpec((2, h, w, 4))])
    dynamic = tf.function(layer, input_signature=[tf.TensorSpec((None, None, None, 4))])
    assert not {"Tile", "AvgPool", "AvgPool3D"} & _op_types(static)
    assert {"Tile", "AvgPool"} <= _op_types(dynamic)

    expected = reference(layer, x.numpy().astype(np.float64))
    weights = [x, *layer.trainable_weights]
    cotangent = random_input(x.shape, seed=7)
    gradients = []
    for function in (static, dynamic):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = function(x)
            loss = tf.reduce_sum(y * cotangent)
        assert np.max(np.abs(y.numpy() - expected)) <= TOLERANCE
        gradients.append([g.numpy() for g in tape.gradient(loss, weights)])
    for from_static, from_dynamic in zip(*gradients, strict=True):
        np.testing.assert_allclose(from_static, from_dynamic, rtol=1e-5, atol=1e-5)


@tensorflow_only
def test_parametric_training_step_and_constant_input_gradients():
    layer = GatherExcite(parametric=True, use_mlp=True, reduction=4)
    inputs = keras.Input((6, 5, 8))
    x = keras.layers.GlobalAveragePooling2D()(layer(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3)(x))
    randomize_weights(layer, seed=6)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    before = [np.array(w) for w in layer.weights]
    history = model.fit(random_input((8, 6, 5, 8)), np.arange(8) % 3, batch_size=8, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    # Every weight moves: the trainable ones by SGD, the BN moving statistics by momentum.
    assert all(
        not np.array_equal(b, np.array(w)) for b, w in zip(before, layer.weights, strict=True)
    )

    c = tf.constant(np.full((2, 6, 5, 8), 0.7, "float32"))
    with tf.GradientTape() as tape:
        tape.watch(c)
        loss = tf.reduce_sum(layer(c, training=True) ** 2)
    for g in tape.gradient(loss, [c, *layer.trainable_weights]):
        assert g is not None and np.all(np.isfinite(np.asarray(g)))


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_parametric_mixed_precision(policy):
    x = random_input((2, 7, 5, 8), scale=30.0, offset=300.0)
    compute_dtype = policy.split("_")[1]
    x_rounded = keras.ops.cast(keras.ops.cast(x, compute_dtype), "float32")
    reference_layer = parametric_layer(x.shape, seed=5, parametric=True)
    expected = keras.ops.convert_to_numpy(reference_layer(x_rounded))
    layer = GatherExcite(parametric=True, dtype=policy)
    layer.build(x.shape)
    layer.set_weights(reference_layer.get_weights())
    y = layer(x)
    assert keras.backend.standardize_dtype(y.dtype) == compute_dtype
    assert all(keras.backend.standardize_dtype(w.dtype) == "float32" for w in layer.weights)
    y = keras.ops.convert_to_numpy(keras.ops.cast(y, "float32"))
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y, expected, rtol=0.05, atol=0.05 * np.abs(expected).max())
