"""Spatial Group-wise Enhance (Li, Hu, Yang, 2019): https://arxiv.org/abs/1905.09646"""

import keras
from keras import ops

from keras_chanattn.layers.common import (
    AttentionLayer,
    channels_first_hint,
    channels_from_shape,
    check_bool,
    check_positive_float,
    check_positive_int,
    spatial_size,
)
from keras_chanattn.layers.registry import register_attention

# Floor of the variance under the square root. sqrt has an infinite derivative at 0, so a
# constant map (variance exactly 0) would give NaN gradients; below this floor the standard
# deviation is 1e-15, ten orders of magnitude under `epsilon`, so outputs do not move.
_VARIANCE_FLOOR = 1e-30


@register_attention("sge")
class SpatialGroupEnhance(AttentionLayer):
    """Spatial Group-wise Enhance: each channel group gates its positions by their
    similarity to the group's global feature.

    The channels are split into `groups` groups; group `g` is channels
    `[g * C/G, (g + 1) * C/G)`. Per group, the similarity map
    `t = sum_c(x_c * GAP(x_c))` over the group's channels (an `H x W` map) is normalised
    over the positions, `t = (t - mean(t)) / (std(t) + epsilon)` with the unbiased
    standard deviation, scaled and shifted by the group's `w` (initialised to 0) and `b`
    (initialised to 1), and gates the group, `x * sigmoid(t * w + b)`. The statistics are
    computed in float32. A 1x1 map has standard deviation 0 (the reference's unbiased std
    is undefined there), so its gate is `sigmoid(b)`.

    Paper: Li, Hu, Yang, "Spatial Group-wise Enhance: Improving Semantic Feature Learning
    in Convolutional Networks", 2019, https://arxiv.org/abs/1905.09646

    Args:
        groups: number of channel groups `G`; the channel count must be divisible by it.
            Defaults to `64`.
        epsilon: added to the standard deviation. Defaults to `1e-5` (the reference's).
        unbiased: divide the variance by `H * W - 1` (the reference) rather than `H * W`.
            Defaults to `True`.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Input shape:
        4-D tensor `(batch, height, width, channels)`, channels divisible by `groups`;
        height and width may be unknown.

    Output shape:
        Same as the input.

    Example:

    >>> x = keras.Input((None, None, 256))
    >>> y = SpatialGroupEnhance(groups=64)(x)  # 128 parameters
    """

    slice_refusal = (
        "its groups are equal runs of consecutive channels, which removing channels "
        "unevenly across groups breaks (the slice would not be a smaller SGE block)"
    )
    paper_figures = {
        "resnet50": {"delta": 2_048, "gflops": 4.13, "top1": 77.58, "base_top1": 76.38},
    }

    @classmethod
    def small_network_kwargs(cls, channels=16):
        """At most 8 groups, the largest count that divides `channels` (8 on 16 channels)."""
        return {"groups": next(g for g in range(min(8, channels), 0, -1) if channels % g == 0)}

    def __init__(self, groups=64, epsilon=1e-5, unbiased=True, **kwargs):
        super().__init__(**kwargs)
        self.groups = check_positive_int("groups", groups)
        self.epsilon = check_positive_float("epsilon", epsilon)
        self.unbiased = check_bool("unbiased", unbiased)

    def build(self, input_shape):
        channels = channels_from_shape(self, input_shape)
        if channels % self.groups:
            valid = max(g for g in range(1, min(self.groups, channels) + 1) if channels % g == 0)
            raise ValueError(
                f"SpatialGroupEnhance needs channels divisible by groups = {self.groups}, got "
                f"{channels} channels. Choose `groups` dividing {channels} "
                f"(e.g. groups={valid}).{channels_first_hint(input_shape)}"
            )
        self._channels = channels
        self.weight = self.add_weight(name="weight", shape=(self.groups,), initializer="zeros")
        self.bias = self.add_weight(name="bias", shape=(self.groups,), initializer="ones")

    def call(self, inputs):
        x, g = self._group_gates(inputs)
        return _scale_groups(inputs, x, g)

    def gates(self, inputs, training=False):
        """`{"spatial": g}`, one map per group, `(N, H, W, G)`: map `g` gates channels
        `[g * C/G, (g + 1) * C/G)`."""
        return {"spatial": ops.cast(self._group_gates(inputs)[1], self.compute_dtype)}

    def _group_gates(self, inputs):
        """`(x, g)`: the grouped input `(N, H*W, G, C/G)` and the gates `(N, H, W, G)`,
        float32."""
        x, t = _group_similarity(inputs, self.groups)
        # Two passes (centre, then square) on every backend: t can be large (x^2 summed).
        t = t - ops.mean(t, axis=(1, 2), keepdims=True)
        n = spatial_size(t)
        dof = ops.maximum(n - 1.0, 1.0) if self.unbiased else n
        var = ops.sum(ops.square(t), axis=(1, 2), keepdims=True) / dof
        t = t / (ops.sqrt(ops.maximum(var, _VARIANCE_FLOOR)) + self.epsilon)
        return x, ops.sigmoid(t * ops.cast(self.weight, "float32") + ops.cast(self.bias, "float32"))

    def inference_layer(self):
        """Returns a `SpatialGroupEnhanceInference` with the same weights (same outputs)."""
        if not self.built:
            raise ValueError("Build the layer (call it on an input) before converting it.")
        form = SpatialGroupEnhanceInference(
            groups=self.groups,
            epsilon=self.epsilon,
            unbiased=self.unbiased,
            dtype=self.dtype_policy,
            name=f"{self.name}_inference",
        )
        form.build((None, None, None, self._channels))
        form.set_weights(self.get_weights())
        return form

    def get_config(self):
        config = super().get_config()
        config.update({"groups": self.groups, "epsilon": self.epsilon, "unbiased": self.unbiased})
        return config


@keras.saving.register_keras_serializable(package="keras_chanattn")
class SpatialGroupEnhanceInference(SpatialGroupEnhance):
    """Inference form of `SpatialGroupEnhance`, written for full-int8 TFLite on XNNPACK.

    Same arguments, weights and outputs as `SpatialGroupEnhance` (built by its
    `inference_layer()`); only the graph differs. The similarity map is a global pooling,
    a product and a grouped 1x1 convolution with a kernel of ones, ops that XNNPACK runs
    faster than the grouped mean and sum (`_grouped_similarity_by_convolution`). Each
    group's similarity map `t` is first
    rescaled to `u = (t - min t) / (max t - min t)`, in `[0, 1]`: the normalisation
    `(t - mean) / (std + epsilon)` equals `(u - mean u) / (std u + epsilon / spread)` for
    any positive spread, and in int8 every group's statistics then use the whole 8-bit
    range (without it, the variance of a group whose `t` is small next to another group's
    rounded to zero). The logits are `u * scale - (mean u * scale - bias)`, with no ADD
    on an `(H, W)` map.

    In full int8 the `(N, 1, 1, G)` path (the spread's floor, the square root, the
    epsilon's ADD and the divisions) stays in float (`export_float_ops`): XNNPACK does not
    delegate int8 SQRT, DIV or MAXIMUM, and rejects an int8 ADD of a constant as small as
    `epsilon`. Every op on an `(H, W)` map is int8.

    Args:
        groups: number of channel groups `G`. Defaults to `64`.
        epsilon: added to the standard deviation. Defaults to `1e-5`.
        unbiased: divide the variance by `H * W - 1`. Defaults to `True`.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Input shape:
        4-D tensor `(batch, height, width, channels)`, channels divisible by `groups`.

    Output shape:
        Same as the input.
    """

    # TFLite ops full-int8 export keeps in float (see keras_chanattn.export.verify); every
    # one of them in this layer works on (N, 1, 1, G) vectors.
    export_float_ops = ("MAXIMUM", "SQRT", "ADD", "DIV")

    def _group_gates(self, inputs):
        x, t = _grouped_similarity_by_convolution(inputs, self.groups)
        low = ops.min(t, axis=(1, 2), keepdims=True)
        # Any positive spread gives the same outputs; the floor only avoids 0 / 0.
        spread = ops.maximum(ops.max(t, axis=(1, 2), keepdims=True) - low, self.epsilon)
        u = (t - low) * (1.0 / spread)
        u_mean = ops.mean(u, axis=(1, 2), keepdims=True)
        centred = u - u_mean
        var = ops.mean(centred * centred, axis=(1, 2), keepdims=True)
        if self.unbiased:
            n = spatial_size(t)
            var = var * (n / ops.maximum(n - 1.0, 1.0))
        std = ops.sqrt(var)
        scale = ops.cast(self.weight, "float32") / (std + self.epsilon / spread)
        logits = u * scale - (u_mean * scale - ops.cast(self.bias, "float32"))
        return x, ops.sigmoid(logits)

    def inference_layer(self):
        return self


def _grouped(inputs, groups):
    """The NHWC input split into groups with H and W merged, `(N, H*W, G, C/G)`: group g is
    channels `[g * C/G, (g + 1) * C/G)`. 4-D, as the TFLite GPU delegate takes ranks 1 to 4
    only (a `(N, H, W, G, C/G)` view made SGE's file refused there)."""
    shape = ops.shape(inputs)
    return ops.reshape(inputs, (-1, shape[1] * shape[2], groups, inputs.shape[-1] // groups))


def _group_similarity(inputs, groups):
    """`(x, t)`: the grouped input (`_grouped`) and each position's similarity to its
    group's mean vector, `t = sum_c x * mean_HW(x)`, `(N, H, W, G)` in float32."""
    shape = ops.shape(inputs)
    x = _grouped(inputs, groups)
    x32 = ops.cast(x, "float32")
    t = ops.sum(x32 * ops.mean(x32, axis=1, keepdims=True), axis=-1)
    return x, ops.reshape(t, (-1, shape[1], shape[2], groups))


def _grouped_similarity_by_convolution(inputs, groups):
    """`_group_similarity` from a global pooling of the (N, H, W, C) map (where the grouped
    form's MEAN is a generic reduction) and the sums over each group's channels as a
    grouped 1x1 convolution with a kernel of ones (`groups` groups of `C / groups` inputs,
    one output each), where the grouped SUM is an XNNPACK reduction over the innermost few
    channels, several times slower in int8."""
    channels = inputs.shape[-1]
    x32 = ops.cast(inputs, "float32")
    product = x32 * ops.mean(x32, axis=(1, 2), keepdims=True)
    ones = ops.ones((1, 1, channels // groups, groups), "float32")
    return _grouped(inputs, groups), ops.conv(product, ones, padding="valid")


def _scale_groups(inputs, x, g):
    """Scales the grouped `x`, `(N, H*W, G, C/G)`, by the per-position, per-group gate `g`,
    `(N, H, W, G)`, viewed as `(N, H*W, G, 1)`; back to NHWC."""
    shape = ops.shape(inputs)
    g = ops.reshape(ops.cast(g, x.dtype), (-1, shape[1] * shape[2], g.shape[-1], 1))
    return ops.reshape(x * g, (-1, shape[1], shape[2], inputs.shape[-1]))
