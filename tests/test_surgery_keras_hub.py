"""`add_attention` on keras-hub backbones (optional dependency: skipped without keras-hub)."""

import keras
import numpy as np
import pytest

import keras_chanattn
from keras_chanattn import models
from keras_chanattn._compat import keras_graph

keras_hub = pytest.importorskip("keras_hub")


def trainable_count(model):
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def predict(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def images(seed=0):
    return np.random.default_rng(seed).normal(size=(2, 32, 32, 3)).astype("float32")


def small_mobilenet_v2_backbone():
    """A MobileNetV2-style keras-hub MobileNetBackbone (ReLU6, no SE), 32x32 input."""
    return keras_hub.models.MobileNetBackbone(
        stackwise_expansion=[[96, 144], [144, 192]],
        stackwise_num_blocks=[2, 2],
        stackwise_num_filters=[[24, 24], [32, 32]],
        stackwise_kernel_size=[[3, 3], [3, 3]],
        stackwise_num_strides=[[2, 1], [2, 1]],
        stackwise_se_ratio=[[None, None], [None, None]],
        stackwise_activation=[["relu6", "relu6"], ["relu6", "relu6"]],
        stackwise_padding=[[1, 1], [1, 1]],
        output_num_filters=64,
        depthwise_filters=16,
        depthwise_stride=1,
        depthwise_residual=True,
        last_layer_filter=64,
        input_activation="relu6",
        output_activation="relu6",
        input_num_filters=16,
        image_shape=(32, 32, 3),
    )


def test_keras_hub_resnet50_backbone():
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 128, 256, 512],
        stackwise_num_blocks=[3, 4, 6, 3],
        stackwise_num_strides=[1, 2, 2, 2],
        block_type="bottleneck_block",
        image_shape=(32, 32, 3),
    )
    model = keras_chanattn.add_attention(backbone, "se")
    assert trainable_count(model) - trainable_count(backbone) == 2_530_992
    preserved = keras_chanattn.add_attention(backbone, "srm", preserve_output=True)
    np.testing.assert_array_equal(predict(preserved, images()), predict(backbone, images()))


def test_keras_hub_mobilenet_blocks_are_unrolled(tmp_path):
    backbone = small_mobilenet_v2_backbone()
    sites = models.find_residual_adds(backbone)
    # The depthwise block's residual and the second block of each stack.
    assert [(s.anchor, s.channels) for s in sites] == [
        ("block_0_0", 16),
        ("block_1_1", 24),
        ("block_2_1", 32),
    ]
    model = keras_chanattn.add_attention(backbone, "eca", preserve_output=True)
    x = images()
    np.testing.assert_array_equal(predict(model, x), predict(backbone, x))
    attention = model.get_layer("block_1_1_attention")
    node = keras_graph.inbound_node(attention)
    assert keras_graph.producer(node.input_tensors[0]).name == "block_1_1_bn3"

    plain = keras_chanattn.add_attention(backbone, "se", reduction=4, min_channels=1)
    # SE on 16, 24, 32 channels with r = 4: 2 * C * C/4 + C/4 + C each.
    assert trainable_count(plain) - trainable_count(backbone) == sum(
        2 * c * (c // 4) + c // 4 + c for c in (16, 24, 32)
    )
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(predict(loaded, x), predict(model, x), rtol=1e-6, atol=1e-6)
