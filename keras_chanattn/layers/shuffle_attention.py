"""SA-Net: Shuffle Attention (Zhang & Yang, ICASSP 2021): https://arxiv.org/abs/2102.00240"""

import math

import keras
from keras import ops

from keras_chanattn.layers.common import (
    AttentionLayer,
    channels_first_hint,
    channels_from_shape,
    check_positive_float,
    check_positive_int,
)
from keras_chanattn.layers.registry import register_attention


def channel_shuffle(x, groups):
    """ShuffleNet's channel shuffle on an NHWC tensor: channel `g * C/groups + i` moves to
    `i * groups + g`.

    H and W are merged into one axis, so the transpose is 4-D, `(N, H*W, groups, C/groups)`
    to `(N, H*W, C/groups, groups)`: the TFLite GPU delegate refuses tensors of rank 5."""
    shape = ops.shape(x)
    channels = x.shape[-1]
    x = ops.reshape(x, (-1, shape[1] * shape[2], groups, channels // groups))
    x = ops.transpose(x, (0, 1, 3, 2))
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

    slice_refusal = (
        "its groups and channel shuffle tie channels together: removing one moves the "
        "others between branches (and the groups must divide the channels)"
    )
    paper_figures = {
        "resnet50": {"delta": 708, "gflops": 4.12, "top1": 77.72, "base_top1": 76.38},
    }

    @classmethod
    def small_network_kwargs(cls, channels=16):
        """At most 8 groups, as many as `channels` allows (8 on 16 channels)."""
        return {"groups": _largest_valid_groups(channels, 8)}

    def __init__(self, groups=64, epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.groups = check_positive_int("groups", groups)
        self.epsilon = check_positive_float("epsilon", epsilon)

    def build(self, input_shape):
        channels = channels_from_shape(self, input_shape)
        if channels % 2:
            raise ValueError(
                f"ShuffleAttention splits each group's channels into two halves, so it needs "
                f"an even channel count (divisible by 2 * groups), got {channels} channels. "
                "Apply it after a layer with an even number of channels."
                f"{channels_first_hint(input_shape)}"
            )
        if channels % (2 * self.groups):
            raise ValueError(
                f"ShuffleAttention needs channels divisible by 2 * groups = {2 * self.groups}, "
                f"got {channels} channels. Choose `groups` so that 2 * groups divides "
                f"{channels} (e.g. groups={_largest_valid_groups(channels, self.groups)})."
                f"{channels_first_hint(input_shape)}"
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
        gate = self._gate(*self._statistics(inputs))
        return channel_shuffle(inputs * ops.cast(gate, inputs.dtype), 2)

    def gates(self, inputs, training=False):
        """`{"channel": (N, C / 2), "spatial_branch": (N, H, W, C / 2)}`, before the shuffle.

        `"channel"` gates the channel-branch channels, `"spatial_branch"` the spatial-branch
        ones, each in input order: entry `j` is channel `g * C/G + i` (`"channel"`) or
        `g * C/G + C/(2G) + i` (`"spatial_branch"`), with `g, i = divmod(j, C/(2G))`. The
        output is the gated input, channel-shuffled with 2 groups.
        """
        channels = inputs.shape[-1]
        shape = ops.shape(inputs)
        gate = self._gate(*self._statistics(inputs))
        gate = ops.reshape(
            gate, (-1, shape[1], shape[2], self.groups, 2, channels // (2 * self.groups))
        )
        return {
            "channel": ops.cast(
                ops.reshape(gate[:, 0, 0, :, 0, :], (-1, channels // 2)), self.compute_dtype
            ),
            "spatial_branch": ops.cast(
                ops.reshape(gate[:, :, :, :, 1, :], (-1, shape[1], shape[2], channels // 2)),
                self.compute_dtype,
            ),
        }

    def _statistics(self, inputs):
        """`(centred, mean, inv_std)`: the instance norm's statistics, per channel over H and
        W, in float32 (both halves: the channel half uses only the mean)."""
        x = ops.cast(inputs, "float32")
        mean = ops.mean(x, axis=(1, 2), keepdims=True)  # (N, 1, 1, C)
        centred = x - mean
        var = ops.mean(centred * centred, axis=(1, 2), keepdims=True)
        return centred, mean, ops.rsqrt(var + self.epsilon)

    def _gate(self, centred, mean, inv_std):
        """The gate `(N, H, W, C)` in float32, input channel order, from the statistics.

        Each channel's gate is `sigmoid(centred * slope + mean * mean_weight + bias)`, with
        vectors of length C built from the shared parameters in the group layout
        `[channel half, spatial half] * G`: the channel half has slope 0 (its gate is
        `sigmoid(cw * mean + cb)`), the spatial half mean weight 0 (its gate is
        `sigmoid(sw * (gamma * centred * inv_std + beta) + sb)`). Everything is
        elementwise on (N, H, W, C) or per channel; no tensor has more than 4 dimensions.
        """
        cw, cb, sw, sb, gamma, beta = (ops.cast(v, "float32") for v in self.weights)
        zeros = ops.zeros_like(cw)

        def per_channel(channel_half, spatial_half):
            return ops.tile(ops.concatenate([channel_half, spatial_half], 0), (self.groups,))

        slope = self._scale_channels(inv_std, per_channel(zeros, sw * gamma))
        # The bias enters as the subtraction of a per-channel vector, -(mean * mean_weight +
        # bias): no ADD touches the (H, W, C) map (see ShuffleAttentionInference).
        offset = self._scale_channels(mean, per_channel(-cw, zeros))
        offset = offset - per_channel(cb, sw * beta + sb)
        return ops.sigmoid(centred * slope - offset)

    def _scale_channels(self, vector, weights):
        """`vector * weights` for an (N, 1, 1, C) vector and C constant weights."""
        return vector * weights

    def inference_layer(self):
        """Returns a `ShuffleAttentionInference` with the same weights (same outputs)."""
        if not self.built:
            raise ValueError("Build the layer (call it on an input) before converting it.")
        form = ShuffleAttentionInference(
            groups=self.groups,
            epsilon=self.epsilon,
            dtype=self.dtype_policy,
            name=f"{self.name}_inference",
        )
        form.build((None, None, None, 2 * self.groups * self.channel_weight.shape[0]))
        form.set_weights(self.get_weights())
        return form

    def get_config(self):
        config = super().get_config()
        config.update({"groups": self.groups, "epsilon": self.epsilon})
        return config


@keras.saving.register_keras_serializable(package="keras_chanattn")
class ShuffleAttentionInference(ShuffleAttention):
    """Inference form of `ShuffleAttention`, written for full-int8 TFLite on XNNPACK.

    Same arguments, weights and outputs as `ShuffleAttention` (built by its
    `inference_layer()`); only the graph differs. Before its variance is taken, each
    channel is divided by its spread `max - min` over H and W: the normalised value
    `(x - mean) / sqrt(var + epsilon)` equals `u / sqrt(var_u + epsilon / spread^2)`
    with `u = (x - mean) / spread` for any positive spread, and `u` lies in `[-1, 1]`, so
    in int8 every channel's variance uses the whole 8-bit range (without it, channels
    whose values are small next to another channel's lost their variance to rounding:
    relative error 0.053 and top-1 agreement 0.977 on the test model, against 0.022 and
    0.992). The spread is at least `4 * sqrt(epsilon)`, which leaves a constant channel's
    scale near the others'.

    In full int8 the per-channel path (the spread's floor, `1 / spread`, the epsilon's
    ADD and the reciprocal square root) stays in float (`export_float_ops`): XNNPACK does
    not delegate int8 MAXIMUM, DIV or RSQRT, and rejects an int8 ADD of a constant as small as
    `epsilon`. Every op on the (H, W, C) map is int8.

    The per-channel products by the shared weights (`mean * cw`, `inv_std * sw * gamma`)
    are 1x1 depthwise convolutions, whose int8 weights have one scale per channel and whose
    bias absorbs the gate's constant. As int8 MULs by a constant they broke XNNPACK's limit
    on the product's scale (2^-16 of the output's) once a fine-tune had left `cw` and `sw`
    small (they start at zero): 10 MULs outside XNNPACK on the fine-tuned ResNet-50.

    Args:
        groups: number of channel groups `G`. Defaults to `64`.
        epsilon: epsilon of the instance normalisation. Defaults to `1e-5`.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Input shape:
        4-D tensor `(batch, height, width, channels)`, channels divisible by
        `2 * groups`.

    Output shape:
        Same as the input.
    """

    # TFLite ops full-int8 export keeps in float (see keras_chanattn.export.verify); every
    # one of them in this layer works on (N, 1, 1, C) vectors.
    export_float_ops = ("MAXIMUM", "DIV", "ADD", "RSQRT")

    def _statistics(self, inputs):
        x = ops.cast(inputs, "float32")
        mean = ops.mean(x, axis=(1, 2), keepdims=True)
        centred = x - mean
        spread = ops.max(x, axis=(1, 2), keepdims=True) - ops.min(x, axis=(1, 2), keepdims=True)
        spread = ops.maximum(spread, 4.0 * math.sqrt(self.epsilon))
        u = centred * (1.0 / spread)
        var = ops.mean(u * u, axis=(1, 2), keepdims=True)
        inv_std = ops.rsqrt(var + self.epsilon / spread / spread)
        return u, mean, inv_std

    def _scale_channels(self, vector, weights):
        # A 1x1 depthwise convolution rather than a MUL by a constant (see the docstring).
        return ops.depthwise_conv(vector, ops.reshape(weights, (1, 1, -1, 1)), padding="valid")

    def inference_layer(self):
        return self


def _largest_valid_groups(channels, groups):
    """The largest group count <= `groups` that `ShuffleAttention` accepts for `channels`."""
    for g in range(min(groups, channels // 2), 0, -1):
        if channels % (2 * g) == 0:
            return g
    return 1
