"""SRM: A Style-based Recalibration Module (Lee et al., ICCV 2019): https://arxiv.org/abs/1903.10829"""

import keras
from keras import ops

from keras_chanattn.layers.common import (
    BN_SLICE_AXES,
    AttentionLayer,
    channels_from_shape,
    check_bn_momentum,
    check_bool,
    check_keep,
    check_positive_float,
    expand_hw,
    slice_weights,
    spatial_size,
    style_moments,
)
from keras_chanattn.layers.registry import register_attention


@register_attention("srm")
class StyleRecalibration(AttentionLayer):
    """Style-based Recalibration Module: a gate from each channel's mean and std.

    Style pooling `t_c = [mean_c, sqrt(var_c + eps)]` over height and width (one
    `moments` pass, unbiased variance as in the reference), channel-wise fully connected
    integration `z_c = w_c0 * mean_c + w_c1 * std_c` (zero-initialised, no bias),
    BatchNorm over the batch, sigmoid, output `x * g`.

    In inference mode the BatchNorm is an affine map; `inference_layer()` returns a
    `FoldedStyleRecalibration` with it folded into the CFC weights (same outputs).

    Paper: Lee, Kim, Nam, "SRM: A Style-based Recalibration Module for Convolutional
    Neural Networks", ICCV 2019, https://arxiv.org/abs/1903.10829

    Args:
        epsilon: added to the variance before the square root. Defaults to `1e-5`.
        unbiased: divide the variance by `H * W - 1` (the reference) rather than `H * W`.
            Defaults to `True`.
        bn_momentum: BatchNorm moving-average momentum (Keras convention; PyTorch's 0.1
            is Keras' 0.9). Defaults to `0.9`.
        bn_epsilon: BatchNorm epsilon. Defaults to `1e-5` (the reference's).
        synchronized: synchronise the BatchNorm statistics across replicas under a
            `tf.distribute` strategy. Defaults to `False`.
        scale_statistics: export only (no effect on this layer's outputs): whether the
            inference form scales each channel by its CFC weights' norm before pooling, one
            more int8 pass over the map that keeps full int8 faithful where channels' spreads
            differ widely (see `FoldedStyleRecalibration`). Defaults to `False`.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Input shape:
        4-D tensor `(batch, height, width, channels)`; height and width may be unknown.

    Output shape:
        Same as the input.

    Example:

    >>> x = keras.Input((None, None, 64))
    >>> y = StyleRecalibration()(x)
    """

    slice_refusal = None
    paper_figures = {
        "resnet50": {"delta": 60_416, "gflops": 3.88, "top1": 77.13, "base_top1": 75.89},
    }

    def __init__(
        self,
        epsilon=1e-5,
        unbiased=True,
        bn_momentum=0.9,
        bn_epsilon=1e-5,
        synchronized=False,
        scale_statistics=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.epsilon = check_positive_float("epsilon", epsilon)
        self.unbiased = check_bool("unbiased", unbiased)
        self.scale_statistics = check_bool("scale_statistics", scale_statistics)
        self.bn_momentum = check_bn_momentum(bn_momentum)
        self.bn_epsilon = check_positive_float("bn_epsilon", bn_epsilon)
        self.synchronized = check_bool("synchronized", synchronized)

    def build(self, input_shape):
        channels = channels_from_shape(self, input_shape)
        self.cfc = self.add_weight(
            name="cfc", shape=(channels, 2), initializer="zeros", trainable=True
        )
        self.bn = keras.layers.BatchNormalization(
            momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
            synchronized=self.synchronized,
            dtype=self.dtype_policy,
            name="bn",
        )
        self.bn.build((None, channels))

    def _channel_gate(self, inputs, training=None):
        mean, std = style_moments(inputs, self.epsilon, self.unbiased, keepdims=False)
        cfc = ops.cast(self.cfc, "float32")
        z = mean * cfc[:, 0] + std * cfc[:, 1]
        z = self.bn(ops.cast(z, self.compute_dtype), training=training)
        return ops.sigmoid(z)

    def call(self, inputs, training=None):
        return inputs * expand_hw(self._channel_gate(inputs, training))

    def gates(self, inputs, training=False):
        """`{"channel": g}`, the per-channel weights `(N, C)`."""
        return {"channel": self._channel_gate(inputs, training)}

    def slice_channels(self, keep):
        """The block on channels `keep`: their CFC rows and BatchNorm parameters.

        Each channel's gate reads its own statistics only, so the kept gates are unchanged.
        """
        keep = check_keep(self, keep, self.cfc.shape[0])
        return self.get_config(), slice_weights(self, keep, {"cfc": 0, **BN_SLICE_AXES})

    def inference_layer(self):
        """Returns a `FoldedStyleRecalibration` with the BatchNorm folded into the CFC."""
        if not self.built:
            raise ValueError("Build the layer (call it on an input) before folding it.")
        cfc = ops.convert_to_numpy(self.cfc)
        gamma = ops.convert_to_numpy(self.bn.gamma)
        beta = ops.convert_to_numpy(self.bn.beta)
        mean = ops.convert_to_numpy(self.bn.moving_mean)
        var = ops.convert_to_numpy(self.bn.moving_variance)
        scale = gamma / (var + self.bn_epsilon) ** 0.5
        folded = FoldedStyleRecalibration(
            epsilon=self.epsilon,
            unbiased=self.unbiased,
            scale_statistics=self.scale_statistics,
            dtype=self.dtype_policy,
            name=f"{self.name}_folded",
        )
        folded.build((None, None, None, cfc.shape[0]))
        folded.set_weights([cfc * scale[:, None], beta - mean * scale])
        return folded

    def export_hint(self, quantization):
        """What to try when an export of a model holding this layer fails verification."""
        if quantization != "int8" or self.scale_statistics:
            return None
        return (
            f"{self.name} (SRM) exports without channel scaling by default; if full int8 lost "
            "its gate's fidelity, build it with StyleRecalibration(scale_statistics=True) "
            "(one more int8 pass over each map)"
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "epsilon": self.epsilon,
                "unbiased": self.unbiased,
                "bn_momentum": self.bn_momentum,
                "bn_epsilon": self.bn_epsilon,
                "synchronized": self.synchronized,
                "scale_statistics": self.scale_statistics,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_chanattn")
class FoldedStyleRecalibration(AttentionLayer):
    """Inference form of `StyleRecalibration`: the BatchNorm folded into the CFC.

    `g_c = sigmoid(a_c * mean_c + b_c * std_c + d_c)`, output `x * g`. Built by
    `StyleRecalibration.inference_layer()`; it computes the same outputs as the original
    in inference mode, with no BatchNorm op.

    The graph is written for full-int8 TFLite on XNNPACK. The variance is the mean of
    `(x - mean) * (x - mean)` (SUB, MUL, MEAN, which XNNPACK runs in int8; it does not
    delegate int8 SQUARED_DIFFERENCE), and the per-channel tail, `sqrt(var + epsilon)` and
    the CFC's sums, stays in float (`export_float_ops`): XNNPACK does not delegate int8
    SQRT, and rejects an int8 ADD of a constant as small as `epsilon` next to the variance.
    Every op on the full `(H, W, C)` map is int8; the float ops touch `(N, 1, 1, C)`
    vectors only.

    With `scale_statistics`, each channel is first multiplied by the norm `|(a_c, b_c)|` of
    its CFC weights (undone in the weights after pooling), so that int8's per-tensor scales
    resolve best the statistics the gate depends on most, at one more int8 pass over the
    map. Without it (the default), a low-variance channel with a large weight can lose its
    standard deviation to int8 rounding; after a ReLU that can fail full int8's
    verification, whose report then names this option (`export_hint`). Float formats
    compute the same outputs either way. Costs and measurements: `docs/benchmarks.md`.

    Args:
        epsilon: added to the variance before the square root. Defaults to `1e-5`.
        unbiased: divide the variance by `H * W - 1`. Defaults to `True`.
        scale_statistics: scale each channel by its CFC weights' norm before pooling (see
            above). Defaults to `False`.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Input shape:
        4-D tensor `(batch, height, width, channels)`.

    Output shape:
        Same as the input.

    Example:

    >>> layer = StyleRecalibration()
    >>> y = layer(keras.Input((None, None, 64)))
    >>> folded = layer.inference_layer()  # a FoldedStyleRecalibration, same outputs
    """

    # TFLite ops full-int8 export keeps in float (see keras_chanattn.export.verify); every
    # ADD of this layer is on per-channel vectors.
    export_float_ops = ("ADD", "SQRT")

    def __init__(self, epsilon=1e-5, unbiased=True, scale_statistics=False, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = check_positive_float("epsilon", epsilon)
        self.unbiased = check_bool("unbiased", unbiased)
        self.scale_statistics = check_bool("scale_statistics", scale_statistics)

    def build(self, input_shape):
        channels = channels_from_shape(self, input_shape)
        self.kernel = self.add_weight(name="kernel", shape=(channels, 2), initializer="zeros")
        self.bias = self.add_weight(name="bias", shape=(channels,), initializer="zeros")

    def _channel_gate(self, inputs):
        """The gate `(N, 1, 1, C)`, in the compute dtype."""
        kernel = ops.cast(self.kernel, "float32")
        x = ops.cast(inputs, "float32")
        norm = 1.0
        if self.scale_statistics:
            norm = ops.sqrt(ops.sum(kernel * kernel, axis=1))
            norm = ops.where(norm > 0.0, norm, 1.0)
            x = x * norm
        mean = ops.mean(x, axis=(1, 2), keepdims=True)
        centred = x - mean
        var = ops.mean(centred * centred, axis=(1, 2), keepdims=True)
        correction = 1.0
        if self.unbiased:
            n = spatial_size(x)
            correction = n / ops.maximum(n - 1.0, 1.0)
        # norm * sqrt(correction * var / norm^2 + epsilon), the correction moved outside.
        std = ops.sqrt(var + self.epsilon * norm * norm / correction)
        z = (
            mean * (kernel[:, 0] / norm)
            + std * (kernel[:, 1] * ops.sqrt(correction) / norm)
            + ops.cast(self.bias, "float32")
        )
        return ops.cast(ops.sigmoid(z), self.compute_dtype)

    def call(self, inputs):
        return inputs * self._channel_gate(inputs)

    def gates(self, inputs, training=False):
        """`{"channel": g}`, the per-channel weights `(N, C)`."""
        return {"channel": ops.reshape(self._channel_gate(inputs), (-1, inputs.shape[-1]))}

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "epsilon": self.epsilon,
                "unbiased": self.unbiased,
                "scale_statistics": self.scale_statistics,
            }
        )
        return config
