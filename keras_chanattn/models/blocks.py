"""Layers and helpers shared by the model builders: conv-BN units, the attention placer, heads."""

import keras
from keras import layers, ops

from keras_chanattn.layers.common import check_channels_last
from keras_chanattn.models.placement import (
    AttentionSite,
    apply_attention,
    check_attention,
    check_stage_kwargs,
    check_stages,
    make_attention,
    resolve_site_kwargs,
)

# PyTorch's BatchNorm numerics (docs/blocks.md): the reference implementations the papers used.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def conv_initializer():
    """torchvision's convolution initialiser: He normal over fan_out."""
    return keras.initializers.VarianceScaling(2.0, mode="fan_out", distribution="normal")


def conv_bn(x, filters, kernel_size, strides, name, activation="relu", groups=1, depthwise=False):
    """Convolution (no bias) -> BatchNorm -> activation, PyTorch-style padding.

    Strided convolutions pad `kernel_size // 2` on every side and convolve "valid" (as
    PyTorch does), so feature maps line up with the reference models; Keras' "same" pads
    only bottom and right. Layers are named `{name}_conv`, `{name}_bn`, `{name}_{activation}`.
    """
    padding = "same"
    if strides > 1 and kernel_size > 1:
        x = layers.ZeroPadding2D(kernel_size // 2, name=f"{name}_pad")(x)
        padding = "valid"
    if depthwise:
        x = layers.DepthwiseConv2D(
            kernel_size,
            strides=strides,
            padding=padding,
            use_bias=False,
            depthwise_initializer=conv_initializer(),
            name=f"{name}_conv",
        )(x)
    else:
        x = layers.Conv2D(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            groups=groups,
            use_bias=False,
            kernel_initializer=conv_initializer(),
            name=f"{name}_conv",
        )(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    if activation is not None:
        x = layers.Activation(activation, name=f"{name}_{activation}")(x)
    return x


def classifier_head(x, include_top, num_classes, pooling, classifier_activation):
    """`keras.applications`-style head: pooling and, with `include_top`, a Dense classifier."""
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        return layers.Dense(num_classes, activation=classifier_activation, name="predictions")(x)
    if pooling == "avg":
        return layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if pooling == "max":
        return layers.GlobalMaxPooling2D(name="max_pool")(x)
    if pooling is not None:
        raise ValueError(f"`pooling` must be None, 'avg' or 'max', got {pooling!r}.")
    return x


def check_head(include_top, num_classes, pooling, input_shape, builder="This builder"):
    """Validates the `keras.applications`-style arguments; returns the input shape tuple.

    Also refuses a global `keras.config.image_data_format()` of `"channels_first"` (the
    builders and blocks are NHWC only), before any layer is made; `builder` names the
    builder in that message.
    """
    check_channels_last(builder)
    if include_top and (isinstance(num_classes, bool) or not isinstance(num_classes, int)):
        raise ValueError(f"`num_classes` must be a positive integer, got {num_classes!r}.")
    if include_top and num_classes < 1:
        raise ValueError(f"`num_classes` must be a positive integer, got {num_classes!r}.")
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"`pooling` must be None, 'avg' or 'max', got {pooling!r}.")
    shape = tuple(input_shape)
    if len(shape) != 3 or shape[-1] is None:
        raise ValueError(
            "`input_shape` must be (height, width, channels) with known channels, e.g. "
            f"(224, 224, 3) or (None, None, 3); got {input_shape!r}."
        )
    return shape


class AttentionPlacer:
    """Puts the attention block into a builder's graph at the sites the arguments select.

    Args:
        attention: registered name, layer class, layer instance (template) or None.
        position: the position the builder uses (checked against `positions`).
        positions: the positions this builder supports.
        stages: `"all"` or stage numbers.
        valid_stages: the builder's stage numbers.
        stage_kwargs: None, `{stage: {arg: value}}`, or a callable `site -> dict`.
        attention_kwargs: arguments for every block.
    """

    def __init__(
        self, attention, position, positions, stages, valid_stages, stage_kwargs, attention_kwargs
    ):
        check_attention(attention, attention_kwargs)
        if position not in positions:
            raise ValueError(
                f"`position` must be one of {list(positions)} for this network, got {position!r}."
            )
        self.attention = attention
        self.position = position
        self.stages = check_stages(stages, valid_stages) if attention is not None else ()
        self.stage_kwargs = check_stage_kwargs(stage_kwargs, tuple(valid_stages))
        self.attention_kwargs = dict(attention_kwargs)
        self.sites = []

    def __call__(self, x, position, stage, block, prefix):
        """Returns `x` through a new block if this (position, stage) carries one, else `x`."""
        if self.attention is None or position != self.position or stage not in self.stages:
            return x
        site = AttentionSite(
            name=f"{prefix}attention",
            channels=int(x.shape[-1]),
            stage=stage,
            block=block,
            position=position,
        )
        kwargs = resolve_site_kwargs(self.attention_kwargs, self.stage_kwargs, site)
        layer = make_attention(self.attention, site, kwargs)
        hint = (
            f"Give stage {stage} other block arguments with stage_kwargs={{{stage}: {{...}}}} "
            "(or a callable taking the AttentionSite), or leave it out with `stages=`."
        )
        self.sites.append(site)
        return apply_attention(layer, x, site, hint)


@keras.saving.register_keras_serializable(package="keras_chanattn")
class ZeroPadShortcut(layers.Layer):
    """Parameter-free shortcut of the ResNet paper's CIFAR networks ("option A").

    Subsamples with `strides` (the top-left pixel of each window, aligned with a 3x3
    convolution of padding 1) and pads the channel axis with zeros up to `filters`.

    Args:
        filters: output channels, at least the input's.
        strides: spatial subsampling. Defaults to `1`.
        **kwargs: base `keras.layers.Layer` arguments.

    Input shape:
        `(batch, height, width, channels)`.

    Output shape:
        `(batch, ceil(height / strides), ceil(width / strides), filters)`.
    """

    def __init__(self, filters, strides=1, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.strides = int(strides)

    def build(self, input_shape):
        if input_shape[-1] is None or input_shape[-1] > self.filters:
            raise ValueError(
                f"ZeroPadShortcut pads channels up to {self.filters}; got input shape "
                f"{tuple(input_shape)}."
            )

    def call(self, inputs):
        x = inputs[:, :: self.strides, :: self.strides, :]
        extra = self.filters - inputs.shape[-1]
        if extra:
            x = ops.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra)))
        return x

    def compute_output_shape(self, input_shape):
        def sub(n):
            return None if n is None else -(-n // self.strides)

        return (input_shape[0], sub(input_shape[1]), sub(input_shape[2]), self.filters)

    def get_config(self):
        config = super().get_config()
        config.update({"filters": self.filters, "strides": self.strides})
        return config
