"""collect_gates, attention_layers, channel_weights: every block's gates read out of a model.

Each collection is compared with `layer.gates` on the block's input computed independently
(a Keras sub-model up to the block, or the layers before it applied one by one), and the
model must come out of it unchanged.
"""

import keras
import numpy as np
import pytest

import keras_chanattn
from keras_chanattn.analysis import attention_layers, channel_weights, collect_gates
from keras_chanattn.testing import randomize_weights


def images(count=7, shape=(8, 8, 3), seed=0):
    return np.random.default_rng(seed).normal(size=(count, *shape)).astype("float32")


def block(name, layer_name, **kwargs):
    return keras_chanattn.create_attention(name, name=layer_name, **kwargs)


def randomized(model, seed=0):
    """`model`, every weight random (moving variances positive), as a trained one would be."""
    randomize_weights(model, seed=seed)
    return model


def two_block_model():
    """Conv, BatchNorm, SE, conv, CBAM, head: a functional model with two blocks."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = block("se", "se", reduction=2)(keras.layers.ReLU()(x))
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv2")(x)
    x = block("cbam", "cbam", reduction=2)(x)
    outputs = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x))
    return randomized(keras.Model(inputs, outputs, name="two_blocks"))


def gates_at(model, layer, x, block_input):
    """`layer.gates` on the input `block_input(model)` gives the block, as NumPy."""
    inputs = keras.Model(model.inputs[0], block_input)(x)
    return {k: keras.ops.convert_to_numpy(g) for k, g in layer.gates(inputs).items()}


def assert_gates_equal(got, expected):
    assert got.keys() == expected.keys()
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-6)


def snapshot(model):
    return [layer.name for layer in model.layers], [np.array(w) for w in model.weights]


def assert_unchanged(model, before):
    names, weights = snapshot(model)
    assert names == before[0]
    assert len(weights) == len(before[1])
    for a, b in zip(weights, before[1], strict=True):
        np.testing.assert_array_equal(a, b)


def test_functional_model_gates_equal_the_blocks_gates_on_their_inputs():
    model = two_block_model()
    x = images()
    before = snapshot(model)
    collected = collect_gates(model, x, batch_size=3)
    assert list(collected) == ["se", "cbam"]
    for name in ("se", "cbam"):
        layer = model.get_layer(name)
        assert_gates_equal(collected[name], gates_at(model, layer, x, layer.input))
    assert collected["cbam"]["spatial"].shape == (7, 8, 8, 1)
    assert_unchanged(model, before)


def test_batches_give_the_gates_of_one_batch():
    model = two_block_model()
    x = images()
    one = collect_gates(model, x, batch_size=32)
    for batch_size in (1, 3):
        many = collect_gates(model, x, batch_size=batch_size)
        for key in one:
            assert_gates_equal(many[key], one[key])


def test_sequential_model():
    layers = [
        keras.layers.Conv2D(8, 3, padding="same"),
        block("eca", "eca"),
        keras.layers.Conv2D(8, 3, padding="same"),
        block("sge", "sge", groups=2),
        keras.layers.GlobalAveragePooling2D(),
    ]
    model = randomized(keras.Sequential([keras.Input((8, 8, 3)), *layers]))
    x = images(5)
    before = snapshot(model)
    collected = collect_gates(model, x)
    assert list(collected) == ["eca", "sge"]
    h = x
    for layer in layers[:4]:
        if layer.name in collected:
            expected = {k: keras.ops.convert_to_numpy(g) for k, g in layer.gates(h).items()}
            assert_gates_equal(collected[layer.name], expected)
        h = layer(h)
    assert collected["sge"]["spatial"].shape == (5, 8, 8, 2)
    assert_unchanged(model, before)


def nested_model():
    """A backbone model (SRM, then a block named "gate") inside an outer model whose own
    block is also named "gate": the paths tell them apart."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    x = block("srm", "srm")(x)
    x = block("triplet", "gate", kernel_size=3)(keras.layers.Conv2D(8, 3, padding="same")(x))
    backbone = keras.Model(inputs, x, name="backbone")
    outer_inputs = keras.Input((8, 8, 3))
    y = block("sa", "gate", groups=2)(backbone(outer_inputs))
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(y))
    return randomized(keras.Model(outer_inputs, outputs, name="outer")), backbone


def test_nested_model_paths_and_gates():
    model, backbone = nested_model()
    assert list(attention_layers(model)) == ["backbone/srm", "backbone/gate", "gate"]
    x = images(4)
    before = snapshot(model)
    collected = collect_gates(model, x, batch_size=3)
    assert list(collected) == ["backbone/srm", "backbone/gate", "gate"]
    for name in ("srm", "gate"):
        layer = backbone.get_layer(name)
        expected = gates_at(backbone, layer, x, layer.input)
        assert_gates_equal(collected[f"backbone/{name}"], expected)
    outer = model.get_layer("gate")
    features = keras.ops.convert_to_numpy(backbone(x))
    expected = {k: keras.ops.convert_to_numpy(g) for k, g in outer.gates(features).items()}
    assert_gates_equal(collected["gate"], expected)
    assert collected["gate"]["channel"].shape == (4, 4)  # SA: the channel branch, C / 2
    assert set(collected["backbone/gate"]) == {"cw", "hc", "hw"}
    assert_unchanged(model, before)


def test_model_from_add_attention_and_from_a_keras_file(tmp_path):
    inputs = keras.Input((8, 8, 4))
    y = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    y = keras.layers.BatchNormalization(name="bn")(y)
    plain = keras.Model(inputs, keras.layers.Add(name="res_add")([inputs, y]))
    model = keras_chanattn.add_attention(plain, "gc", reduction=2, fusion="mul")
    randomized(model, seed=1)
    x = images(5, (8, 8, 4))
    before = snapshot(model)
    collected = collect_gates(model, x, batch_size=2)
    assert list(collected) == ["res_attention"]
    layer = model.get_layer("res_attention")
    assert_gates_equal(collected["res_attention"], gates_at(model, layer, x, layer.input))
    assert set(collected["res_attention"]) == {"attention", "channel"}
    np.testing.assert_allclose(
        collected["res_attention"]["attention"].sum(axis=(1, 2, 3)), 1.0, rtol=1e-5
    )
    assert_unchanged(model, before)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert_gates_equal(collect_gates(loaded, x)["res_attention"], collected["res_attention"])


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__(name="subclassed")
        self.conv = keras.layers.Conv2D(8, 3, padding="same")
        self.attention = block("spatial_attention", "spatial")
        self.head = keras.layers.GlobalAveragePooling2D()

    def call(self, x, training=None):
        return self.head(self.attention(self.conv(x), training=training))


def test_subclassed_model():
    model = Subclassed()
    x = images(3)
    model(x)
    randomized(model, seed=2)
    before = [np.array(w) for w in model.weights]
    collected = collect_gates(model, x)
    expected = {
        k: keras.ops.convert_to_numpy(g) for k, g in model.attention.gates(model.conv(x)).items()
    }
    assert_gates_equal(collected["spatial"], expected)
    assert channel_weights(collected["spatial"]) is None
    for a, b in zip(model.weights, before, strict=True):
        np.testing.assert_array_equal(np.array(a), b)


def test_a_block_called_twice_gets_an_entry_per_call():
    shared = block("se", "shared", reduction=2)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv")(inputs)
    model = randomized(keras.Model(inputs, shared(shared(x))))
    collected = collect_gates(model, images(2))
    assert list(collected) == ["shared", "shared@2"]
    first = keras.ops.convert_to_numpy(shared(keras.Model(inputs, x)(images(2))))
    expected = keras.ops.convert_to_numpy(shared.gates(first)["channel"])
    np.testing.assert_allclose(collected["shared@2"]["channel"], expected, rtol=1e-5, atol=1e-6)


def test_mixed_precision_gates_come_as_float32():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", dtype="mixed_float16")(inputs)
    x = block("cbam", "cbam", reduction=2, dtype="mixed_float16")(x)
    model = randomized(keras.Model(inputs, x))
    collected = collect_gates(model, images(2))
    assert {g.dtype for g in collected["cbam"].values()} == {np.dtype("float32")}


def test_channel_weights():
    gates = {"channel": np.ones((2, 8)), "spatial": np.ones((2, 4, 4, 1))}
    assert channel_weights(gates).shape == (2, 8)
    assert channel_weights({"hw": np.ones((2, 4, 4, 1))}) is None
    with pytest.raises(TypeError, match=r"one entry, e.g. channel_weights\(gates\['se'\]\)"):
        channel_weights({"se": gates})
    with pytest.raises(TypeError, match="one block's gates"):
        channel_weights(np.ones((2, 8)))


def test_errors_name_the_problem_and_the_fix():
    plain = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3)])
    with pytest.raises(ValueError, match="no attention block.*add_attention"):
        collect_gates(plain, images())
    model = two_block_model()
    with pytest.raises(ValueError, match=r"\(N, H, W, C\), got shape \(8, 8, 3\).*image\[None\]"):
        collect_gates(model, images()[0])
    with pytest.raises(ValueError, match=r"takes inputs of shape \(N, 8, 8, 3\).*\(7, 9, 8, 3\)"):
        collect_gates(model, images(shape=(9, 8, 3)))
    with pytest.raises(ValueError, match="real numbers"):
        collect_gates(model, images().astype(bool))
    with pytest.raises(ValueError, match="no image"):
        collect_gates(model, images()[:0])
    with pytest.raises(ValueError, match="batch_size"):
        collect_gates(model, images(), batch_size=0)
    with pytest.raises(ValueError, match="not built"):
        collect_gates(Subclassed(), images())
    with pytest.raises(TypeError, match="keras.Model.*layer.gates"):
        collect_gates(model.get_layer("se"), images())
