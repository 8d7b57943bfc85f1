"""Squeeze-and-Excitation Networks (Hu et al., CVPR 2018): https://arxiv.org/abs/1709.01507"""

import keras

from keras_chanattn.layers.common import (
    GATE_ACTIVATIONS,
    AttentionLayer,
    channels_from_shape,
    check_choice,
    check_keep,
    check_positive_int,
    check_ratio,
    config_activation,
    expand_hw,
    gate,
    kept_hidden_width,
    make_divisible,
    slice_weights,
    spatial_max,
    spatial_mean,
)
from keras_chanattn.layers.registry import register_attention


def reduced_channels(channels, reduction, min_channels=1, divisor=None):
    """Width of a bottleneck MLP: `channels / reduction`, floored at `min_channels`.

    With a `divisor`, the width is rounded to a multiple of it (MobileNetV3 uses 8).
    """
    if divisor is None:
        return max(min_channels, int(channels / reduction))
    return make_divisible(channels / reduction, divisor, min_value=max(min_channels, divisor))


@register_attention("se")
class SqueezeExcite(AttentionLayer):
    """Squeeze-and-Excitation block: a gated MLP over globally pooled channels.

    `s = gate(FC(act(FC(pool(x)))))`, output `x * s`, with FC layers `C -> C/r -> C`
    carrying biases.

    Paper: Hu, Shen, Albanie, Sun, Wu, "Squeeze-and-Excitation Networks", CVPR 2018,
    https://arxiv.org/abs/1709.01507

    Args:
        reduction: reduction ratio `r` of the bottleneck. Defaults to `16`.
        min_channels: smallest bottleneck width. Defaults to `8`: narrower bottlenecks
            (`C / r` below 8, e.g. 1 unit on a 16-channel layer) carry little and, when
            their few ReLU units stay inactive, give full-int8 TFLite a zero-range tensor
            that XNNPACK refuses. Sites with `C / r >= 8` (all of ResNet-50's) are exactly
            the paper's `C / r`; pass `min_channels=1` for `C / r` everywhere.
        divisor: if set, round the bottleneck width to a multiple of this (MobileNetV3
            uses 8). Defaults to `None` (no rounding, as in the paper).
        pooling: squeeze operator, `"avg"` or `"max"`. Defaults to `"avg"`.
        activation: activation of the bottleneck, by name. Defaults to `"relu"`.
        gate_activation: gate, one of `"sigmoid"`, `"hard_sigmoid"`, `"tanh"`, `"relu"`.
            Defaults to `"sigmoid"`.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Input shape:
        4-D tensor `(batch, height, width, channels)`; height and width may be unknown.

    Output shape:
        Same as the input.

    Example:

    >>> x = keras.Input((None, None, 64))
    >>> y = SqueezeExcite(reduction=16)(x)
    """

    slice_refusal = None
    paper_figures = {
        "resnet50": {"delta": 2_530_992, "gflops": 3.87, "top1": 76.80, "base_top1": 75.89},
    }

    def __init__(
        self,
        reduction=16,
        min_channels=8,
        divisor=None,
        pooling="avg",
        activation="relu",
        gate_activation="sigmoid",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.reduction = check_ratio("reduction", reduction)
        self.min_channels = check_positive_int("min_channels", min_channels)
        self.divisor = None if divisor is None else check_positive_int("divisor", divisor)
        self.pooling = check_choice("pooling", pooling, ("avg", "max"))
        self.activation = config_activation(activation)
        self.gate_activation = check_choice("gate_activation", gate_activation, GATE_ACTIVATIONS)

    def build(self, input_shape):
        channels = channels_from_shape(self, input_shape)
        hidden = reduced_channels(channels, self.reduction, self.min_channels, self.divisor)
        self.reduce = keras.layers.Dense(
            hidden, activation=self.activation, dtype=self.dtype_policy, name="reduce"
        )
        self.expand = keras.layers.Dense(channels, dtype=self.dtype_policy, name="expand")
        self.reduce.build((None, channels))
        self.expand.build((None, hidden))

    def _channel_gate(self, inputs):
        pool = spatial_mean if self.pooling == "avg" else spatial_max
        s = pool(inputs, keepdims=False)
        return gate(self.expand(self.reduce(s)), self.gate_activation)

    def call(self, inputs):
        return inputs * expand_hw(self._channel_gate(inputs))

    def gates(self, inputs, training=False):
        """`{"channel": s}`, the per-channel weights `(N, C)`."""
        return {"channel": self._channel_gate(inputs)}

    def slice_channels(self, keep):
        """The block on channels `keep`: the MLP's input rows and output columns of them.

        Every hidden unit stays (the config fixes the width: `min_channels` = the width);
        a zero channel pools to zero and adds nothing to the hidden units, so the kept
        channels' gates are unchanged.
        """
        keep = check_keep(self, keep, self.expand.units)
        config = kept_hidden_width(self.get_config(), self.reduce.units, len(keep))
        axes = {"reduce/kernel": 0, "expand/kernel": 1, "expand/bias": 0}
        return config, slice_weights(self, keep, axes)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "reduction": self.reduction,
                "min_channels": self.min_channels,
                "divisor": self.divisor,
                "pooling": self.pooling,
                "activation": self.activation,
                "gate_activation": self.gate_activation,
            }
        )
        return config
