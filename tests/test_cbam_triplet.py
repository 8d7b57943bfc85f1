"""CBAM and Triplet Attention specifics the registry-wide suite does not cover."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_chanattn
from keras_chanattn.layers.cbam import ConvGate, blocked_conv, column_block, z_pool
from tests.layer_cases import randomize_weights
from tests.marks import tensorflow_only


def count(weights):
    return int(sum(np.prod(w.shape) for w in weights))


def random_input(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def test_triplet_without_spatial_branch_has_two_gates():
    layer = keras_chanattn.TripletAttention(no_spatial=True)
    layer.build((None, 14, 14, 256))
    assert layer.hw is None
    assert count(layer.trainable_weights) == 2 * (2 * 7 * 7 + 2) == 200
    assert count(layer.non_trainable_weights) == 4


def test_cbam_starts_as_channel_attention_times_one_half():
    """The reference zero-initialises the spatial BatchNorm scale: the gate is 0.5."""
    x = random_input((2, 6, 5, 32))
    layer = keras_chanattn.CBAM(reduction=4)
    y = keras.ops.convert_to_numpy(layer(x, training=False))
    channel = keras.ops.convert_to_numpy(layer.channel_attention(x))
    np.testing.assert_allclose(y, 0.5 * channel, rtol=1e-6, atol=1e-7)
    triplet = keras_chanattn.TripletAttention()
    triplet.build(x.shape)
    assert np.all(keras.ops.convert_to_numpy(triplet.cw.bn.gamma) == 1.0)


@pytest.mark.parametrize(
    "name, folded_class",
    [
        ("spatial_attention", keras_chanattn.FoldedSpatialAttention),
        ("cbam", keras_chanattn.FoldedCBAM),
        ("triplet", keras_chanattn.FoldedTripletAttention),
    ],
)
def test_inference_layer_is_a_saveable_sibling_without_batch_norm(name, folded_class, tmp_path):
    layer = keras_chanattn.create_attention(name, kernel_size=3)
    layer.build((None, None, None, 8))
    randomize_weights(layer, seed=2)
    folded = layer.inference_layer()
    assert type(folded) is folded_class
    assert folded_class not in map(
        keras_chanattn.layers.get_attention_class, keras_chanattn.list_attention()
    )
    assert not folded.non_trainable_weights  # no moving statistics left
    assert not any("bn" in w.path for w in folded.weights)
    assert folded.inference_layer() is folded

    inputs = keras.Input((None, None, 8))
    model = keras.Model(inputs, folded(inputs))
    path = tmp_path / "folded.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = random_input((2, 5, 7, 8), seed=3)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(model(x))
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model(x)),
        keras.ops.convert_to_numpy(layer(x, training=False)),
        rtol=1e-5,
        atol=1e-6,
    )


def test_inference_layer_needs_a_built_layer():
    for name in ("spatial_attention", "cbam", "triplet"):
        with pytest.raises(ValueError, match="Build the layer"):
            keras_chanattn.create_attention(name).inference_layer()


def test_conv_gate_rejects_a_map_that_is_not_z_pooled():
    with pytest.raises(ValueError, match=r"\(batch, rows, cols, 2\)"):
        ConvGate().build((None, 8, 8, 3))


def test_spatial_kernel_keeps_the_pytorch_orientation():
    """A kernel with one tap reads the pooled map at a known offset: Keras rows and cols
    are PyTorch's (kh, kw), so ported weights need no flip."""
    layer = keras_chanattn.SpatialAttention(kernel_size=3, bn_zero_gamma=False)
    x = random_input((1, 5, 6, 4), seed=4)
    layer.build(x.shape)
    w = np.zeros((1, 2, 3, 3), "float32")  # PyTorch layout (out, in, kh, kw)
    w[0, 1, 0, 2] = 1.0  # the mean channel, one row up and one column right
    layer.gate.conv.kernel.assign(w.transpose(2, 3, 1, 0))
    got = keras.ops.convert_to_numpy(layer(x, training=False))
    mean = np.pad(x.mean(axis=-1), ((0, 0), (1, 1), (1, 1)))
    shifted = mean[:, 0:5, 2:8]  # position (i, j) reads (i - 1, j + 1)
    gate = 1.0 / (1.0 + np.exp(-shifted / np.sqrt(1.0 + 1e-5)))
    np.testing.assert_allclose(got, x * gate[..., None], rtol=1e-5, atol=1e-6)


@tensorflow_only
@pytest.mark.parametrize("axis", [1, 2, 3])
def test_z_pool_concatenates_max_and_mean_without_a_stack(axis):
    """TFLite turns a stack into PACK, which XNNPACK does not run: the maps are joined by a
    CONCATENATION instead, with the same values."""
    x = random_input((2, 5, 6, 7), seed=axis)
    expected = np.stack([x.max(axis=axis), x.mean(axis=axis)], axis=-1)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(z_pool(x, axis)), expected, atol=1e-6)
    function = tf.function(lambda t: z_pool(t, axis), input_signature=[tf.TensorSpec(x.shape)])
    types = {op.type for op in function.get_concrete_function().graph.get_operations()}
    assert "Pack" not in types and "ConcatV2" in types


def same_correlation(x, kernel):
    """NumPy reference: zero-padded 'same' 2-D correlation of (N, R, L) maps by a (k, k) kernel."""
    half = kernel.shape[0] // 2
    padded = np.pad(x, ((0, 0), (half, half), (half, half)))
    rows, cols = x.shape[1:]
    out = np.zeros_like(x)
    for dr in range(kernel.shape[0]):
        for dc in range(kernel.shape[1]):
            out += kernel[dr, dc] * padded[:, dr : dr + rows, dc : dc + cols]
    return out


@pytest.mark.parametrize(
    "columns, kernel_size", [(16, 7), (14, 7), (7, 7), (12, 3), (13, 7), (40, 11), (5, 7)]
)
def test_blocked_conv_matches_a_same_correlation(columns, kernel_size):
    """Blocks of 4 to 8 columns where the length has such a divisor (13: plain convolution;
    an 11x11 kernel spans two blocks on each side)."""
    rng = np.random.default_rng(columns)
    x = rng.normal(size=(2, 9, columns)).astype("float32")
    kernel = rng.normal(size=(kernel_size, kernel_size)).astype("float32")
    got = blocked_conv(x[..., None], kernel[:, :, None, None])
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(got)[..., 0], same_correlation(x, kernel), atol=1e-4
    )
    assert column_block(columns) == {16: 8, 14: 7, 7: 7, 12: 6, 13: None, 40: 8, 5: 5}[columns]


def test_conv_gate_blocked_needs_the_folded_gate():
    gate = ConvGate(7)
    gate.build((None, None, None, 2))
    maps = [np.zeros((1, 8, 8, 1), "float32")] * 2
    with pytest.raises(ValueError, match="batch_norm=False"):
        gate.blocked(maps)
