"""Registry-wide layer suite: every registered attention block passes every check here."""

import inspect

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_chanattn
from tests.layer_cases import CASES, case_variants, randomize_weights
from tests.marks import tensorflow_only

NAMES = keras_chanattn.list_attention()
TOLERANCE = 1e-5


def make_layer(name, **overrides):
    kwargs = dict(CASES[name].kwargs)
    kwargs.update(overrides)
    return keras_chanattn.create_attention(name, **kwargs)


def built_layer(name, channels=None, seed=0, **overrides):
    """A layer built on `channels` channels with every weight randomised."""
    layer = make_layer(name, **overrides)
    layer.build((None, None, None, channels or CASES[name].channels))
    randomize_weights(layer, seed)
    return layer


def random_input(shape, seed=1, scale=1.0, offset=0.0):
    rng = np.random.default_rng(seed)
    return (rng.normal(offset, scale, shape)).astype("float32")


def tiny_model(layer, channels, hw=(6, 5)):
    inputs = keras.Input((*hw, channels))
    x = layer(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3)(x)
    return keras.Model(inputs, outputs)


def test_every_registered_block_has_a_test_case():
    assert NAMES, "the registry is empty"
    missing = sorted(set(NAMES) - set(CASES))
    assert not missing, f"no LayerCase (tests/references/) for {missing}"
    stale = sorted(set(CASES) - set(NAMES))
    assert not stale, f"test cases for unregistered names {stale}"


@pytest.mark.parametrize("name", NAMES)
def test_matches_numpy_reference(name):
    """Every variant of the case, in training and inference mode, on three input shapes,
    against the NumPy reference. With `-s` it prints the block's worst error and the
    number of variants (the parity figures of docs/benchmarks.md):

        .venv/bin/python -m pytest tests/test_layers.py -k matches_numpy_reference -s
    """
    case = CASES[name]
    variants = case_variants(case)
    worst = 0.0
    for training in (False, True):
        for shape in [(2, 7, 5), (1, 8, 8), (3, 1, 1)]:
            for i, kwargs in enumerate(variants):
                layer = keras_chanattn.create_attention(name, **kwargs)
                x = random_input((*shape, case.channels), seed=i)
                layer.build(x.shape)
                randomize_weights(layer, seed=i)
                expected = case.reference(layer, x.astype(np.float64), training)
                got = keras.ops.convert_to_numpy(layer(x, training=training))
                err = float(np.max(np.abs(got - expected)))
                assert err <= TOLERANCE, (
                    f"{name} {kwargs} training={training} shape={shape}: max abs error {err:.2e}"
                )
                worst = max(worst, err)
    print(f"\n{name:<18} max abs error {worst:.1e} over {len(variants)} variants")


@pytest.mark.parametrize("name", NAMES)
def test_parameter_counts_at_256_channels(name):
    kwargs, trainable, non_trainable = CASES[name].params_256
    layer = keras_chanattn.create_attention(name, **kwargs)
    layer.build((None, 14, 14, 256))
    count = lambda ws: int(sum(np.prod(w.shape) for w in ws))  # noqa: E731
    assert count(layer.trainable_weights) == trainable
    assert count(layer.non_trainable_weights) == non_trainable


@pytest.mark.parametrize("name", NAMES)
def test_config_round_trip_has_every_constructor_argument(name):
    layer = make_layer(name)
    config = layer.get_config()
    params = inspect.signature(type(layer).__init__).parameters
    args = [p for p in params if p not in ("self", "kwargs")]
    assert set(args) <= set(config), f"missing from config: {set(args) - set(config)}"
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    # The config is plain JSON data.
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is type(layer)
    assert restored.get_config() == config


@pytest.mark.parametrize("name", NAMES)
def test_keras_file_round_trip_without_custom_objects(name, tmp_path):
    channels = CASES[name].channels
    layer = built_layer(name)
    model = tiny_model(layer, channels)
    randomize_weights(layer, seed=3)
    x = random_input((2, 6, 5, channels))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(model(x))
    )
    assert type(loaded.layers[1]) is type(layer)


@tensorflow_only
@pytest.mark.parametrize("name", NAMES)
def test_saved_model_export_reloads(name, tmp_path):
    channels = CASES[name].channels
    layer = built_layer(name)
    model = tiny_model(layer, channels)
    randomize_weights(layer, seed=4)
    x = random_input((2, 6, 5, channels))
    model.export(str(tmp_path / "sm"), format="tf_saved_model", verbose=False)
    reloaded = tf.saved_model.load(str(tmp_path / "sm"))
    np.testing.assert_allclose(
        reloaded.serve(tf.constant(x)).numpy(),
        keras.ops.convert_to_numpy(model(x)),
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("randomized", [False, True])
def test_fit_step_changes_weights_with_finite_loss(name, randomized):
    """From the default initialisation some weights must move (zero-initialised gates
    block the gradient of what lies behind them); from random weights, every one."""
    channels = CASES[name].channels
    layer = make_layer(name)
    model = tiny_model(layer, channels)
    if randomized:
        randomize_weights(layer, seed=6)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    before = [np.array(w) for w in layer.trainable_weights]
    x = random_input((8, 6, 5, channels))
    y = np.arange(8) % 3
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    after = [np.array(w) for w in layer.trainable_weights]
    changed = [not np.array_equal(a, b) for a, b in zip(before, after, strict=True)]
    assert before and (all(changed) if randomized else any(changed)), changed


@tensorflow_only
@pytest.mark.parametrize("name", NAMES)
def test_gradients_are_finite_for_constant_input(name):
    layer = built_layer(name)
    x = tf.constant(np.full((2, 5, 5, CASES[name].channels), 0.7, "float32"))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        loss = tf.reduce_sum(y * y)
    grads = tape.gradient(loss, [x, *layer.trainable_weights])
    for g in grads:
        assert g is not None and np.all(np.isfinite(np.asarray(g))), f"{name}: non-finite grad"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(name, policy):
    channels = CASES[name].channels
    # Large activations: a float16 variance of values near 300 would overflow.
    x = random_input((2, 7, 5, channels), scale=30.0, offset=300.0)
    compute_dtype = policy.split("_")[1]
    # The layer sees x rounded to its compute dtype. The float32 expectation uses the same
    # rounded x, so the check measures the layer's own arithmetic: rounding x alone moves a
    # convolutional gate that sits near its transition (CBAM, Triplet) past any tolerance.
    x_rounded = keras.ops.cast(keras.ops.cast(x, compute_dtype), "float32")
    reference_layer = built_layer(name, seed=5)
    expected = keras.ops.convert_to_numpy(reference_layer(x_rounded))
    layer = make_layer(name, dtype=policy)
    layer.build(x.shape)
    layer.set_weights(reference_layer.get_weights())
    y = layer(x)
    assert keras.backend.standardize_dtype(y.dtype) == compute_dtype
    assert all(keras.backend.standardize_dtype(w.dtype) == "float32" for w in layer.weights)
    y = keras.ops.convert_to_numpy(keras.ops.cast(y, "float32"))
    assert np.all(np.isfinite(y)), f"{name} under {policy}: non-finite outputs"
    np.testing.assert_allclose(y, expected, rtol=0.05, atol=0.05 * np.abs(expected).max())


def integer_values(dtype, channels, seed=2):
    """Small integers (in a gate's sensitive range) of `dtype`, shape (2, 8, 8, channels)."""
    low = 0 if dtype.startswith("uint") else -4
    return np.random.default_rng(seed).integers(low, 9, (2, 8, 8, channels)).astype(dtype)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", ["uint8", "int32", "bool"])
def test_non_float_input_gives_the_float_input_results(name, dtype):
    """Keras autocasts floats only; the blocks cast any other input to their compute dtype
    (an int32 input once gave SGE all zeros, and most blocks refused `int * float`)."""
    layer = built_layer(name)
    values = integer_values("int32" if dtype == "bool" else dtype, CASES[name].channels)
    values = values > 0 if dtype == "bool" else values
    as_float = values.astype("float32")
    for x in (values, tf.constant(values)):
        got = layer(x)
        assert keras.backend.standardize_dtype(got.dtype) == "float32"
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(layer(as_float))
        )
    expected = CASES[name].reference(layer, as_float.astype(np.float64), False)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(got), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_integer_input_under_mixed_float16_gives_the_compute_dtype(name):
    channels = CASES[name].channels
    reference_layer = built_layer(name, seed=5)
    layer = make_layer(name, dtype="mixed_float16")
    layer.build((None, None, None, channels))
    layer.set_weights(reference_layer.get_weights())
    values = integer_values("uint8", channels)
    y = layer(values)
    assert keras.backend.standardize_dtype(y.dtype) == "float16"
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(y), keras.ops.convert_to_numpy(layer(values.astype("float32")))
    )
    expected = keras.ops.convert_to_numpy(reference_layer(values.astype("float32")))
    y32 = keras.ops.convert_to_numpy(keras.ops.cast(y, "float32"))
    np.testing.assert_allclose(y32, expected, rtol=0.02, atol=0.02 * np.abs(expected).max())


@pytest.mark.parametrize("name", NAMES)
def test_model_with_uint8_input_predicts_the_float_results(name):
    """A uint8 `keras.Input` (a decoded image) through `predict`, as the issue's model."""
    channels = CASES[name].channels
    inputs = keras.Input((8, 8, channels), dtype="uint8")
    layer = make_layer(name)
    model = keras.Model(inputs, layer(inputs))
    randomize_weights(layer, seed=7)
    values = integer_values("uint8", channels)
    got = model.predict(values, verbose=0)
    expected = CASES[name].reference(layer, values.astype(np.float64), False)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_symbolic_input_with_unknown_height_and_width(name):
    channels = CASES[name].channels
    inputs = keras.Input((None, None, channels))
    outputs = make_layer(name)(inputs)
    assert tuple(outputs.shape) == (None, None, None, channels)
    model = keras.Model(inputs, outputs)
    for hw in [(3, 9), (8, 8)]:
        assert model(random_input((1, *hw, channels))).shape == (1, *hw, channels)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(None, 8, 16), (None, 4, 4, 4, 16), (None, 8, 8, None)])
def test_bad_input_shape_is_a_clear_error(name, shape):
    with pytest.raises(ValueError, match=r"4-D input|known channel dimension"):
        make_layer(name).build(shape)


@pytest.mark.parametrize("name", NAMES)
def test_invalid_hyper_parameters_are_clear_errors(name):
    case = CASES[name]
    assert case.invalid, f"{name}: no invalid hyper-parameters listed"
    for kwargs, message in case.invalid:
        with pytest.raises(ValueError, match=message):
            layer = keras_chanattn.create_attention(name, **kwargs)
            layer.build((None, 8, 8, case.channels))


@pytest.mark.parametrize("name", NAMES)
def test_inference_layer_matches_inference_mode(name):
    layer = built_layer(name)
    x = random_input((2, 7, 5, CASES[name].channels))
    inference = layer.inference_layer()
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(inference(x)),
        keras.ops.convert_to_numpy(layer(x, training=False)),
        rtol=1e-5,
        atol=1e-6,
    )


def test_create_attention_takes_a_layer_name_and_rejects_unknown_names():
    layer = keras_chanattn.create_attention("SE", name="my_gate", reduction=4)
    assert isinstance(layer, keras_chanattn.SqueezeExcite) and layer.name == "my_gate"
    with pytest.raises(ValueError, match="Valid names are: .*srm"):
        keras_chanattn.create_attention("senet")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("channels", [8, 16, 24])
def test_small_network_kwargs_build_on_small_maps(name, channels):
    kwargs = keras_chanattn.layers.registry.small_network_kwargs(name, channels)
    layer = keras_chanattn.create_attention(name, **kwargs)
    layer.build((None, 8, 8, channels))
    x = random_input((1, 8, 8, channels))
    assert layer(x).shape == x.shape


def test_paper_figures_are_declared_in_one_shape():
    figures = keras_chanattn.layers.registry.paper_figures("resnet50")
    assert figures, "no block declares its paper's ResNet-50 figures"
    for name, paper in figures.items():
        assert set(paper) == {"delta", "gflops", "top1", "base_top1"}, name
        assert isinstance(paper["delta"], int), name
