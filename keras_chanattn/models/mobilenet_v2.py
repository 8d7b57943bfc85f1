"""MobileNetV2 with any attention block inside its inverted residuals.

MobileNetV2: Inverted Residuals and Linear Bottlenecks (Sandler et al., CVPR 2018):
https://arxiv.org/abs/1801.04381. The block goes where MobileNetV3 and EfficientNet put
SE: after the 3x3 depthwise convolution (and its BN and ReLU6), before the linear
projection (`position="3x3"`); or after the projection's BN, before the residual add
where the block has one (`position="standard"`).

Stages are the rows of the paper's Table 2 that hold inverted residuals, numbered 1 to 7
(expansion t, channels c, repeats n, stride s):
1: (1, 16, 1, 1), 2: (6, 24, 2, 2), 3: (6, 32, 3, 2), 4: (6, 64, 4, 2),
5: (6, 96, 3, 1), 6: (6, 160, 3, 2), 7: (6, 320, 1, 1).
Layers are named `stage{s}_block{b}_expand_conv`, `..._depthwise_conv`, `..._attention`,
`..._project_conv`, `..._add`.

Widths follow `keras.applications.MobileNetV2`: every width times `alpha`, rounded to a
multiple of 8; the last 1x1 conv has 1280 channels (times `alpha` when `alpha > 1`).
BatchNorm uses PyTorch's numerics (epsilon 1e-5, Keras momentum 0.9) like the ResNets.
"""

import keras
from keras import layers

from keras_chanattn.layers.common import check_positive_float, make_divisible
from keras_chanattn.models.blocks import (
    AttentionPlacer,
    check_head,
    classifier_head,
    conv_bn,
)
from keras_chanattn.models.placement import attention_label

MOBILENET_V2_POSITIONS = ("3x3", "standard")
# (expansion t, channels c, repeats n, stride s) per stage, the paper's Table 2.
MOBILENET_V2_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
MOBILENET_V2_STAGES = tuple(range(1, len(MOBILENET_V2_SETTINGS) + 1))


def _inverted_residual(x, expansion, filters, strides, prefix, stage, block, attend):
    in_channels = x.shape[-1]
    y = x
    if expansion != 1:
        y = conv_bn(y, in_channels * expansion, 1, 1, f"{prefix}expand", activation="relu6")
    y = conv_bn(y, None, 3, strides, f"{prefix}depthwise", activation="relu6", depthwise=True)
    y = attend(y, "3x3", stage, block, prefix)
    y = conv_bn(y, filters, 1, 1, f"{prefix}project", activation=None)
    y = attend(y, "standard", stage, block, prefix)
    if strides == 1 and in_channels == filters:
        y = layers.Add(name=f"{prefix}add")([x, y])
    return y


def mobilenet_v2(
    attention=None,
    *,
    alpha=1.0,
    position="3x3",
    stages="all",
    stage_kwargs=None,
    include_top=True,
    num_classes=1000,
    input_shape=(224, 224, 3),
    pooling=None,
    classifier_activation="softmax",
    name=None,
    **attention_kwargs,
):
    """Builds MobileNetV2 with an attention block in its inverted residuals.

    Args:
        attention: registered block name, layer class, layer instance (template) or
            `None` for the plain network. Defaults to `None`.
        alpha: width multiplier (0.35, 0.5, 0.75, 1.0, 1.3, 1.4 are the usual ones).
            Defaults to `1.0`.
        position: `"3x3"` (after the depthwise conv, the paper-style place) or
            `"standard"` (after the projection, before the add). Defaults to `"3x3"`.
        stages: `"all"` or stage numbers 1 to 7 (see the module docstring).
            Defaults to `"all"`.
        stage_kwargs: per-stage block arguments, `{stage: {arg: value}}`, or a callable
            taking the `AttentionSite`. Defaults to `None`.
        include_top: end with pooling and a Dense classifier. Defaults to `True`.
        num_classes: classes. Defaults to `1000`.
        input_shape: `(height, width, channels)`. Defaults to `(224, 224, 3)`.
        pooling: without the top, `None`, `"avg"` or `"max"`. Defaults to `None`.
        classifier_activation: activation of the classifier. Defaults to `"softmax"`.
        name: model name. Defaults to e.g. `"se_mobilenet_v2"`.
        **attention_kwargs: constructor arguments of every block, e.g. SE's
            `reduction=4, divisor=8` (the MobileNetV3 setting).

    Returns:
        A functional `keras.Model`. Blocks with channel constraints (ShuffleAttention
        needs channels divisible by `2 * groups`) get no silent adjustment: a site they
        cannot take raises a `ValueError` naming it; choose `groups` per stage with
        `stage_kwargs`.

    Example:

    >>> model = mobilenet_v2("srm", alpha=0.35, input_shape=(96, 96, 3), num_classes=10)
    """
    alpha = check_positive_float("alpha", alpha)
    shape = check_head(include_top, num_classes, pooling, input_shape, "mobilenet_v2()")
    attend = AttentionPlacer(
        attention,
        position,
        MOBILENET_V2_POSITIONS,
        stages,
        MOBILENET_V2_STAGES,
        stage_kwargs,
        attention_kwargs,
    )

    inputs = keras.Input(shape, name="image")
    x = conv_bn(inputs, make_divisible(32 * alpha, 8), 3, 2, "stem", activation="relu6")
    for stage, (t, c, n, s) in zip(MOBILENET_V2_STAGES, MOBILENET_V2_SETTINGS, strict=True):
        filters = make_divisible(c * alpha, 8)
        for block in range(1, n + 1):
            strides = s if block == 1 else 1
            prefix = f"stage{stage}_block{block}_"
            x = _inverted_residual(x, t, filters, strides, prefix, stage, block, attend)
    last = make_divisible(1280 * alpha, 8) if alpha > 1.0 else 1280
    x = conv_bn(x, last, 1, 1, "head", activation="relu6")
    outputs = classifier_head(x, include_top, num_classes, pooling, classifier_activation)
    if name is None:
        label = attention_label(attention)
        name = f"{label}_mobilenet_v2" if label else "mobilenet_v2"
    return keras.Model(inputs, outputs, name=name)


def se_mobilenet_v2(**kwargs):
    """SE-MobileNetV2: `mobilenet_v2("se", **kwargs)`; takes every keyword argument of it."""
    return mobilenet_v2("se", **kwargs)


def srm_mobilenet_v2(**kwargs):
    """SRM-MobileNetV2: `mobilenet_v2("srm", **kwargs)`; takes every keyword argument of it."""
    return mobilenet_v2("srm", **kwargs)


def eca_mobilenet_v2(**kwargs):
    """ECA-MobileNetV2: `mobilenet_v2("eca", **kwargs)`; takes every keyword argument of it."""
    return mobilenet_v2("eca", **kwargs)
