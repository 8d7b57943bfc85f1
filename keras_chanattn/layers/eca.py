"""ECA-Net: Efficient Channel Attention (Wang et al., CVPR 2020): https://arxiv.org/abs/1910.03151"""

import math

import keras
from keras import ops

from keras_chanattn.layers.common import (
    GATE_ACTIVATIONS,
    AttentionLayer,
    channels_from_shape,
    check_choice,
    check_number,
    check_positive_float,
    check_positive_int,
    expand_hw,
    gate,
    spatial_mean,
)
from keras_chanattn.layers.registry import register_attention


def adaptive_kernel_size(channels, gamma=2.0, b=1.0):
    """ECA's kernel size for `channels`: `|log2(C) + b| / gamma`, truncated, made odd upwards."""
    k = int(abs(math.log2(channels) + b) / gamma)
    return k if k % 2 else k + 1


@register_attention("eca")
class EfficientChannelAttention(AttentionLayer):
    """Efficient Channel Attention: a 1-D convolution across the pooled channels.

    `s = GAP(x)`, then a 1-D convolution of kernel `k` along the channel axis (zero
    padding, no bias), a sigmoid, and `x * s`. The kernel size is adaptive to the channel
    count, `k = odd(int(|log2(C) + b| / gamma))`, unless given.

    Paper: Wang, Wu, Zhu, Li, Zuo, Hu, "ECA-Net: Efficient Channel Attention for Deep
    Convolutional Neural Networks", CVPR 2020, https://arxiv.org/abs/1910.03151

    Args:
        kernel_size: odd kernel size of the channel convolution, or `None` to derive it
            from the channel count. Defaults to `None`.
        gamma: `gamma` of the adaptive kernel size. Defaults to `2`.
        b: `b` of the adaptive kernel size. Defaults to `1`.
        gate_activation: gate, one of `"sigmoid"`, `"hard_sigmoid"`, `"tanh"`, `"relu"`.
            Defaults to `"sigmoid"`.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Input shape:
        4-D tensor `(batch, height, width, channels)`; height and width may be unknown.

    Output shape:
        Same as the input.

    Example:

    >>> x = keras.Input((None, None, 256))
    >>> y = EfficientChannelAttention()(x)  # kernel size 5 for 256 channels
    """

    slice_refusal = (
        "its 1-D convolution runs across neighbouring channels, so removing a channel would "
        "change the gates of the channels beside it"
    )
    paper_figures = {
        "resnet50": {"delta": 80, "gflops": 3.86, "top1": 77.48, "base_top1": 75.20},
    }

    def __init__(self, kernel_size=None, gamma=2.0, b=1.0, gate_activation="sigmoid", **kwargs):
        super().__init__(**kwargs)
        if kernel_size is not None:
            kernel_size = check_positive_int("kernel_size", kernel_size)
            if kernel_size % 2 == 0:
                raise ValueError(
                    f"`kernel_size` must be odd so the channel convolution is centred, got "
                    f"{kernel_size}. Use {kernel_size + 1}, or None for the adaptive size."
                )
        self.kernel_size = kernel_size
        self.gamma = check_positive_float("gamma", gamma)
        self.b = check_number("b", b)
        self.gate_activation = check_choice("gate_activation", gate_activation, GATE_ACTIVATIONS)

    def build(self, input_shape):
        channels = channels_from_shape(self, input_shape)
        k = self.kernel_size or adaptive_kernel_size(channels, self.gamma, self.b)
        # PyTorch's Conv1d default: uniform in +-1/sqrt(fan_in), fan_in = k.
        init = keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")
        self.kernel = self.add_weight(name="kernel", shape=(k, 1, 1), initializer=init)

    @property
    def effective_kernel_size(self):
        """The kernel size in use (known once the layer is built)."""
        return int(self.kernel.shape[0])

    def _channel_gate(self, inputs):
        s = ops.expand_dims(spatial_mean(inputs, keepdims=False), -1)  # (N, C, 1)
        # The cast: `gates` reads the kernel outside the layer call's autocast.
        kernel = ops.cast(self.kernel, s.dtype)
        s = ops.conv(s, kernel, strides=1, padding="same", data_format="channels_last")
        return gate(ops.squeeze(s, -1), self.gate_activation)

    def call(self, inputs):
        return inputs * expand_hw(self._channel_gate(inputs))

    def gates(self, inputs, training=False):
        """`{"channel": s}`, the per-channel weights `(N, C)`."""
        return {"channel": self._channel_gate(inputs)}

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "kernel_size": self.kernel_size,
                "gamma": self.gamma,
                "b": self.b,
                "gate_activation": self.gate_activation,
            }
        )
        return config
