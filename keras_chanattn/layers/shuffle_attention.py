"""SA-Net: Shuffle Attention (Zhang & Yang, ICASSP 2021): https://arxiv.org/abs/2102.00240"""

from keras import ops

from keras_chanattn.layers.common import (
    AttentionLayer,
    channels_from_shape,
    check_positive_float,
    check_positive_int,
)
from keras_chanattn.layers.registry import register_attention


def channel_shuffle(x, groups):
    """ShuffleNet's channel shuffle on an NHWC tensor: channel `g * C/groups + i` moves to
    `i * groups + g`."""
    shape = ops.shape(x)
    channels = x.shape[-1]
    x = ops.reshape(x, (-1, shape[1], shape[2], groups, channels // groups))
    x = ops.transpose(x, (0, 1, 2, 4, 3))
    return ops.reshape(x, (-1, shape[1], shape[2], channels))


@register_attention("sa")
class ShuffleAttention(AttentionLayer):
    """Shuffle Attention: grouped channel and spatial gates, then a channel shuffle.

    The channels are split into `groups` groups, and each group into two halves of
    `C / (2 * groups)` channels. The first half is gated by its pooled mean,
    `x1 * sigmoid(cw * GAP(x1) + cb)`; the second by its instance-normalised self,
    `x2 * sigmoid(sw * IN(x2) + sb)` (one GroupNorm group per channel, with affine
    weights). The parameters are shared across groups. The halves are concatenated and the
    channels shuffled with 2 groups. Group `g` is channels `[g * C/G, (g + 1) * C/G)`.

    Paper: Zhang, Yang, "SA-Net: Shuffle Attention for Deep Convolutional Neural
    Networks", ICASSP 2021, https://arxiv.org/abs/2102.00240

    Args:
        groups: number of channel groups `G`; the channel count must be divisible by
            `2 * groups`. Defaults to `64`.
        epsilon: epsilon of the instance normalisation. Defaults to `1e-5` (the
            reference's GroupNorm).
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Input shape:
        4-D tensor `(batch, height, width, channels)`, channels divisible by
        `2 * groups`; height and width may be unknown.

    Output shape:
        Same as the input.

    Example:

    >>> x = keras.Input((None, None, 256))
    >>> y = ShuffleAttention(groups=64)(x)
    """

    def __init__(self, groups=64, epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.groups = check_positive_int("groups", groups)
        self.epsilon = check_positive_float("epsilon", epsilon)

    def build(self, input_shape):
        channels = channels_from_shape(self, input_shape)
        if channels % (2 * self.groups):
            raise ValueError(
                f"ShuffleAttention needs channels divisible by 2 * groups = {2 * self.groups}, "
                f"got {channels} channels. Choose `groups` so that 2 * groups divides "
                f"{channels} (e.g. groups={_largest_valid_groups(channels, self.groups)})."
            )
        half = channels // (2 * self.groups)

        def weight(name, init):
            return self.add_weight(name=name, shape=(half,), initializer=init)

        self.channel_weight = weight("channel_weight", "zeros")
        self.channel_bias = weight("channel_bias", "ones")
        self.spatial_weight = weight("spatial_weight", "zeros")
        self.spatial_bias = weight("spatial_bias", "ones")
        self.norm_gamma = weight("norm_gamma", "ones")
        self.norm_beta = weight("norm_beta", "zeros")

    def call(self, inputs):
        shape = ops.shape(inputs)
        channels = inputs.shape[-1]
        half = channels // (2 * self.groups)
        # (N, H, W, G, 2, C/2G): axis 4 picks the channel (0) or spatial (1) half.
        x = ops.reshape(inputs, (-1, shape[1], shape[2], self.groups, 2, half))
        x32 = ops.cast(x, "float32")
        mean, var = ops.moments(x32, axes=(1, 2), keepdims=True)
        cw, cb, sw, sb, gamma, beta = (ops.cast(v, "float32") for v in self.weights)

        channel_gate = ops.sigmoid(cw * mean[..., 0, :] + cb)
        normed = (x32[..., 1, :] - mean[..., 1, :]) / ops.sqrt(var[..., 1, :] + self.epsilon)
        spatial_gate = ops.sigmoid(sw * (normed * gamma + beta) + sb)

        dtype = inputs.dtype
        out = ops.stack(
            [
                x[..., 0, :] * ops.cast(channel_gate, dtype),
                x[..., 1, :] * ops.cast(spatial_gate, dtype),
            ],
            axis=4,
        )
        out = ops.reshape(out, (-1, shape[1], shape[2], channels))
        return channel_shuffle(out, 2)

    def get_config(self):
        config = super().get_config()
        config.update({"groups": self.groups, "epsilon": self.epsilon})
        return config


def _largest_valid_groups(channels, groups):
    """The largest group count <= `groups` that `ShuffleAttention` accepts for `channels`."""
    for g in range(min(groups, channels // 2), 0, -1):
        if channels % (2 * g) == 0:
            return g
    return 1
