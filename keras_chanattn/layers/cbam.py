"""CBAM: Convolutional Block Attention Module (Woo et al., ECCV 2018): https://arxiv.org/abs/1807.06521

Also holds the pieces of a pooled-map spatial gate (`z_pool`, `ConvGate`) that Triplet
Attention reuses for its three branches.
"""

import keras
import numpy as np
from keras import ops

from keras_chanattn.layers.common import (
    GATE_ACTIVATIONS,
    AttentionLayer,
    channels_from_shape,
    check_bn_momentum,
    check_bool,
    check_channels_last,
    check_choice,
    check_keep,
    check_positive_float,
    check_positive_int,
    check_ratio,
    expand_hw,
    gate,
    kept_hidden_width,
    slice_weights,
    spatial_max,
    spatial_mean,
)
from keras_chanattn.layers.registry import register_attention
from keras_chanattn.layers.squeeze_excite import reduced_channels

# The reference (`BasicConv` of the official CBAM and Triplet Attention code) uses
# `BatchNorm2d(eps=1e-5, momentum=0.01)`; PyTorch's momentum m is Keras' 1 - m.
REFERENCE_BN_MOMENTUM = 0.99
REFERENCE_BN_EPSILON = 1e-5


def check_odd_kernel_size(value):
    """Raises `ValueError` unless `value` is a positive odd integer (a centred kernel)."""
    check_positive_int("kernel_size", value)
    if value % 2 == 0:
        raise ValueError(
            f"`kernel_size` must be odd so that the convolution is centred (the reference pads "
            f"by (k - 1) // 2 on each side), got {value}. Use {value + 1} or {value - 1}."
        )
    return value


def z_pool_maps(x, axis=-1):
    """Max and mean of `x` over `axis`, as two separate maps with a new unit last axis.

    `(maximum, mean)`, the two channels of `z_pool` kept apart: an NHWC tensor pooled over
    axis 1 gives two `(N, W, C, 1)` maps, over axis 2 `(N, H, C, 1)`, over axis 3
    `(N, H, W, 1)`. The mean is computed in float32 (a float16 sum over many channels
    overflows) and cast back.

    The blocks feed these to `ConvGate` as a pair rather than joined: full-int8 TFLite
    gives a CONCATENATION one scale for all its inputs, and the maximum of a post-ReLU
    tensor is several times its mean, so a joined map loses most of the mean's precision.
    """
    maximum = ops.expand_dims(ops.max(x, axis=axis), -1)
    mean = ops.cast(ops.mean(ops.cast(x, "float32"), axis=axis), x.dtype)
    return maximum, ops.expand_dims(mean, -1)


def z_pool(x, axis=-1):
    """Max and mean of `x` over `axis`, stacked as two channels on a new last axis.

    The order is `[max, mean]`, as the reference's `ChannelPool` / `ZPool`. `axis` is
    removed: an NHWC tensor pooled over axis 1 gives `(N, W, C, 2)`, over axis 2
    `(N, H, C, 2)`, over axis 3 `(N, H, W, 2)`. The mean is computed in float32 (a
    float16 sum over many channels overflows) and cast back.

    The two maps are joined by a concatenation on a new unit axis, not a stack: TFLite
    turns a stack into PACK, which its XNNPACK delegate does not run (splitting the graph
    in two), while it runs the CONCATENATION (and the RESHAPE of `expand_dims`), in int8
    too. The values are the same. The blocks themselves use `z_pool_maps` (the two maps
    apart), which full int8 quantises far more accurately.
    """
    return ops.concatenate(list(z_pool_maps(x, axis)), axis=-1)


@keras.saving.register_keras_serializable(package="keras_chanattn")
class ConvGate(keras.layers.Layer):
    """Gate map from a Z-pooled map: `k x k` convolution (2 -> 1), BatchNorm, sigmoid.

    The spatial gate of CBAM and of each Triplet Attention branch (the reference's
    `BasicConv(2, 1, k, padding=(k - 1) // 2, relu=False)` then a sigmoid). The input is
    the output of `z_pool`, `(batch, rows, cols, 2)`, or the pair `(maximum, mean)` of
    `z_pool_maps`, two `(batch, rows, cols, 1)` maps; the output is the gate,
    `(batch, rows, cols, 1)`, in `(0, 1)`.

    Given the pair, the convolution runs as two one-channel convolutions with the two
    input slices of the same kernel, summed: the same values, but in full-int8 TFLite
    each map keeps its own scale (a joined map shares one, set by the maximum, and the
    mean loses its precision).

    With `batch_norm=False` the convolution carries a bias instead of the BatchNorm: the
    inference form, whose weights `folded_weights()` of a BatchNorm gate gives.

    Porting PyTorch weights: `conv.kernel = w.transpose(2, 3, 1, 0)` for the reference's
    conv weight `w` of shape `(1, 2, k, k)`; `bn.gamma`, `bn.beta`, `bn.moving_mean`,
    `bn.moving_variance` from the BatchNorm's `weight`, `bias`, `running_mean`,
    `running_var`.

    Args:
        kernel_size: odd size of the square convolution kernel. Defaults to `7`.
        batch_norm: follow the convolution (no bias) with BatchNorm; if `False`, the
            convolution has a bias and no BatchNorm follows. Defaults to `True`.
        bn_momentum: BatchNorm moving-average momentum, Keras convention. Defaults to
            `0.99` (the reference's PyTorch 0.01).
        bn_epsilon: BatchNorm epsilon. Defaults to `1e-5` (the reference's).
        bn_zero_gamma: initialise the BatchNorm scale at 0, so that the gate starts at
            `sigmoid(beta) = 0.5` everywhere. Defaults to `False`.
        synchronized: synchronise the BatchNorm statistics across replicas under a
            `tf.distribute` strategy. Defaults to `False`.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Input shape:
        4-D tensor `(batch, rows, cols, 2)`, or a pair of 4-D tensors
        `(batch, rows, cols, 1)`; rows and cols may be unknown.

    Output shape:
        `(batch, rows, cols, 1)`.

    Example:

    >>> x = keras.Input((None, None, 64))
    >>> g = ConvGate(kernel_size=7)(z_pool_maps(x))  # (batch, H, W, 1), in (0, 1)
    """

    def __init__(
        self,
        kernel_size=7,
        batch_norm=True,
        bn_momentum=REFERENCE_BN_MOMENTUM,
        bn_epsilon=REFERENCE_BN_EPSILON,
        bn_zero_gamma=False,
        synchronized=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.kernel_size = check_odd_kernel_size(kernel_size)
        self.batch_norm = check_bool("batch_norm", batch_norm)
        self.bn_momentum = check_bn_momentum(bn_momentum)
        self.bn_epsilon = check_positive_float("bn_epsilon", bn_epsilon)
        self.bn_zero_gamma = check_bool("bn_zero_gamma", bn_zero_gamma)
        self.synchronized = check_bool("synchronized", synchronized)

    def build(self, input_shape):
        check_channels_last("ConvGate")
        shape = tuple(input_shape)
        if len(shape) == 2 and all(isinstance(s, (list, tuple)) for s in shape):
            valid = all(len(s) == 4 and s[-1] == 1 for s in shape)
        else:
            valid = len(shape) == 4 and shape[-1] == 2
        if not valid:
            raise ValueError(
                f"ConvGate expects a Z-pooled map (batch, rows, cols, 2) or a pair of "
                f"(batch, rows, cols, 1) maps, got shape {shape}. Feed it the output of "
                "`z_pool` or `z_pool_maps`."
            )
        self.conv = keras.layers.Conv2D(
            1,
            self.kernel_size,
            padding="same",
            use_bias=not self.batch_norm,
            # PyTorch's Conv2d default: uniform in +-1/sqrt(fan_in), fan_in = 2 * k * k.
            kernel_initializer=keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform"),
            dtype=self.dtype_policy,
            name="conv",
        )
        self.conv.build((None, None, None, 2))
        self.bn = None
        if self.batch_norm:
            self.bn = keras.layers.BatchNormalization(
                momentum=self.bn_momentum,
                epsilon=self.bn_epsilon,
                gamma_initializer="zeros" if self.bn_zero_gamma else "ones",
                synchronized=self.synchronized,
                dtype=self.dtype_policy,
                name="bn",
            )
            self.bn.build((None, None, None, 1))

    def call(self, inputs, training=None):
        if isinstance(inputs, (list, tuple)):
            maximum, mean = inputs
            kernel = ops.cast(self.conv.kernel, maximum.dtype)
            y = ops.conv(mean, kernel[:, :, 1:], padding="same")
            if self.conv.use_bias:
                y = y + ops.cast(self.conv.bias, y.dtype)  # fused into that CONV_2D by TFLite
            y = ops.conv(maximum, kernel[:, :, :1], padding="same") + y
        else:
            y = self.conv(inputs)
        if self.bn is not None:
            y = self.bn(y, training=training)
        return ops.sigmoid(y)

    def blocked(self, maps, transposed=False):
        """The gate of this `ConvGate(batch_norm=False)` on the pair `maps`, computed on blocks.

        Same values as `self(maps)` (with the kernel's rows and columns swapped when
        `transposed`), but where the columns' length allows (`column_block`) each map
        `(N, R, L, 1)` is read as `(N, R, L / b, b)`: `b` neighbouring columns as channels,
        and the convolution as `b -> b` channels with a banded kernel (`banded_kernel`). A
        one-channel convolution runs in XNNPACK at a small fraction of its arithmetic's
        speed (about 1 ms for a 7x7 kernel on a 28x256 int8 map, which ends every Triplet
        branch); the blocked one runs as a small dense convolution, over 10 times faster.
        """
        if self.bn is not None:
            raise ValueError("ConvGate.blocked runs the inference form (batch_norm=False).")
        maximum, mean = maps
        kernel = ops.cast(self.conv.kernel, maximum.dtype)
        if transposed:
            kernel = ops.transpose(kernel, (1, 0, 2, 3))
        y = blocked_conv(mean, kernel[:, :, 1:], ops.cast(self.conv.bias, mean.dtype))
        return ops.sigmoid(blocked_conv(maximum, kernel[:, :, :1]) + y)

    def compute_output_shape(self, input_shape):
        shape = tuple(input_shape)
        if len(shape) == 2 and all(isinstance(s, (list, tuple)) for s in shape):
            shape = tuple(shape[0])
        return (*shape[:-1], 1)

    def folded_weights(self):
        """`[kernel, bias]` of a `ConvGate(batch_norm=False)` giving the same gate as this
        one in inference mode: the BatchNorm's affine map folded into the convolution."""
        if not self.built:
            raise ValueError("Build the layer (call it on an input) before folding it.")
        if self.bn is None:
            return [ops.convert_to_numpy(w) for w in self.conv.weights]

        def numpy64(variable):
            return np.asarray(ops.convert_to_numpy(variable), np.float64)

        scale = numpy64(self.bn.gamma) / np.sqrt(numpy64(self.bn.moving_variance) + self.bn_epsilon)
        kernel = numpy64(self.conv.kernel) * scale
        bias = numpy64(self.bn.beta) - numpy64(self.bn.moving_mean) * scale
        return [kernel.astype(np.float32), bias.astype(np.float32)]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "kernel_size": self.kernel_size,
                "batch_norm": self.batch_norm,
                "bn_momentum": self.bn_momentum,
                "bn_epsilon": self.bn_epsilon,
                "bn_zero_gamma": self.bn_zero_gamma,
                "synchronized": self.synchronized,
            }
        )
        return config


def column_block(length, smallest=4, largest=8):
    """The block size `blocked_conv` reads `length` columns in: their largest divisor in
    `[smallest, largest]`, or `None` (unknown length, or no such divisor: plain convolution)."""
    if length is None:
        return None
    return next((b for b in range(largest, smallest - 1, -1) if length % b == 0), None)


def banded_kernel(kernel, block):
    """A `(k, k, 1, 1)` kernel as the `(k, w, block, block)` kernel of `blocked_conv`.

    Output column `o` of block `j` reads input column `i` of block `j + s` through the
    kernel's column `s * block + i - o + (k - 1) // 2`, zero where that is outside the
    kernel; `w = 2 * ceil(((k - 1) // 2) / block) + 1` blocks cover the kernel's width.
    """
    size = kernel.shape[0]
    half = (size - 1) // 2
    span = -(-half // block)
    select = np.zeros((2 * span + 1, block, block, size), "float32")
    for s in range(2 * span + 1):
        for i in range(block):
            for o in range(block):
                column = (s - span) * block + i - o + half
                if 0 <= column < size:
                    select[s, i, o, column] = 1.0
    return ops.einsum("sioc,rc->rsio", ops.cast(select, kernel.dtype), kernel[:, :, 0, 0])


def blocked_conv(x, kernel, bias=None):
    """`conv(x, kernel, padding="same") + bias` of a one-channel map `(N, R, L, 1)`, computed
    on blocks of `column_block(L)` columns (see `ConvGate.blocked`); a plain convolution
    where `L` has no such block. Zero padding of the blocks is the convolution's own
    padding. The bias `(1,)` is added before the reshape back, so that TFLite fuses it into
    the CONV_2D: a separate int8 ADD of a bias much larger than the convolution's output
    breaks XNNPACK's limit on the ratio of their scales (2^-10) and leaves the graph."""
    block = column_block(x.shape[2])
    if block is None:
        y = ops.conv(x, kernel, padding="same")
        return y if bias is None else y + bias
    shape = ops.shape(x)
    blocks = ops.reshape(x, (-1, shape[1], x.shape[2] // block, block))
    y = ops.conv(blocks, banded_kernel(kernel, block), padding="same")
    if bias is not None:
        y = y + ops.tile(bias, (block,))
    return ops.reshape(y, (-1, shape[1], x.shape[2], 1))


def spatial_gate(conv_gate, inputs, training=None):
    """CBAM's spatial gate `(N, H, W, 1)`: `conv_gate` on the channel-pooled maps."""
    return conv_gate(z_pool_maps(inputs, axis=-1), training=training)


def _require_built(layer):
    if not layer.built:
        raise ValueError("Build the layer (call it on an input) before folding it.")


def channel_arguments(reduction=16, min_channels=8, divisor=None, gate_activation="sigmoid"):
    """Validated constructor arguments of `ChannelAttention`, as a config dict."""
    return {
        "reduction": check_ratio("reduction", reduction),
        "min_channels": check_positive_int("min_channels", min_channels),
        "divisor": None if divisor is None else check_positive_int("divisor", divisor),
        "gate_activation": check_choice("gate_activation", gate_activation, GATE_ACTIVATIONS),
    }


def spatial_arguments(
    kernel_size=7,
    bn_momentum=REFERENCE_BN_MOMENTUM,
    bn_epsilon=REFERENCE_BN_EPSILON,
    bn_zero_gamma=True,
    synchronized=False,
):
    """Validated constructor arguments of `SpatialAttention`, as a config dict."""
    return {
        "kernel_size": check_odd_kernel_size(kernel_size),
        "bn_momentum": check_bn_momentum(bn_momentum),
        "bn_epsilon": check_positive_float("bn_epsilon", bn_epsilon),
        "bn_zero_gamma": check_bool("bn_zero_gamma", bn_zero_gamma),
        "synchronized": check_bool("synchronized", synchronized),
    }


CHANNEL_ARGUMENTS = ("reduction", "min_channels", "divisor", "gate_activation")
SPATIAL_ARGUMENTS = ("kernel_size", "bn_momentum", "bn_epsilon", "bn_zero_gamma", "synchronized")


def _set_arguments(layer, arguments):
    for key, value in arguments.items():
        setattr(layer, key, value)


def _arguments(layer, names):
    return {key: getattr(layer, key) for key in names}


def _merged_weights(layer, parts):
    """`layer.weights`' values in order, from `(sub_layer, values)` pairs of its parts."""
    values = {}
    for part, part_values in parts:
        values.update(zip((id(v) for v in part.weights), part_values, strict=True))
    return [values[id(variable)] for variable in layer.weights]


@register_attention("channel_attention")
class ChannelAttention(AttentionLayer):
    """CBAM's channel attention: a shared MLP over average- and max-pooled channels.

    `s = gate(MLP(GAP(x)) + MLP(GMP(x)))`, output `x * s`, where the MLP
    `C -> C/r -> C` (biases, ReLU) is shared by the two pooled vectors.

    Paper: Woo, Park, Lee, Kweon, "CBAM: Convolutional Block Attention Module",
    ECCV 2018, https://arxiv.org/abs/1807.06521

    Args:
        reduction: reduction ratio `r` of the bottleneck. Defaults to `16`.
        min_channels: smallest bottleneck width. Defaults to `8`, as `SqueezeExcite`
            (a narrower MLP can leave int8 TFLite a zero-range tensor XNNPACK refuses).
        divisor: if set, round the bottleneck width to a multiple of this. Defaults to
            `None` (no rounding, as in the paper).
        gate_activation: gate, one of `"sigmoid"`, `"hard_sigmoid"`, `"tanh"`, `"relu"`.
            Defaults to `"sigmoid"`.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Input shape:
        4-D tensor `(batch, height, width, channels)`; height and width may be unknown.

    Output shape:
        Same as the input.

    Example:

    >>> x = keras.Input((None, None, 64))
    >>> y = ChannelAttention(reduction=16)(x)
    """

    slice_refusal = None

    def __init__(
        self, reduction=16, min_channels=8, divisor=None, gate_activation="sigmoid", **kwargs
    ):
        super().__init__(**kwargs)
        _set_arguments(self, channel_arguments(reduction, min_channels, divisor, gate_activation))

    def build(self, input_shape):
        channels = channels_from_shape(self, input_shape)
        hidden = reduced_channels(channels, self.reduction, self.min_channels, self.divisor)
        self.reduce = keras.layers.Dense(
            hidden, activation="relu", dtype=self.dtype_policy, name="reduce"
        )
        self.expand = keras.layers.Dense(channels, dtype=self.dtype_policy, name="expand")
        self.reduce.build((None, channels))
        self.expand.build((None, hidden))

    def _channel_gate(self, inputs):
        # The shared MLP runs on each pooled vector apart, as the reference does: stacked
        # into one (2N, C) batch, full-int8 TFLite would give the averages the scale of the
        # much larger maxima and lose their precision.
        s = self.expand(self.reduce(spatial_mean(inputs, keepdims=False)))
        s = s + self.expand(self.reduce(spatial_max(inputs, keepdims=False)))
        return gate(s, self.gate_activation)

    def call(self, inputs):
        return inputs * expand_hw(self._channel_gate(inputs))

    def gates(self, inputs, training=False):
        """`{"channel": s}`, the per-channel weights `(N, C)`."""
        return {"channel": self._channel_gate(inputs)}

    def slice_channels(self, keep):
        """The block on channels `keep`: the shared MLP's input rows and output columns.

        As `SqueezeExcite.slice_channels`: every hidden unit stays, and a zero channel
        (pooled to zero by both the mean and, after a ReLU, the max) adds nothing to them.
        """
        keep = check_keep(self, keep, self.expand.units)
        config = kept_hidden_width(self.get_config(), self.reduce.units, len(keep))
        axes = {"reduce/kernel": 0, "expand/kernel": 1, "expand/bias": 0}
        return config, slice_weights(self, keep, axes)

    def get_config(self):
        config = super().get_config()
        config.update(_arguments(self, CHANNEL_ARGUMENTS))
        return config


@register_attention("spatial_attention")
class SpatialAttention(AttentionLayer):
    """CBAM's spatial attention: a convolutional gate over the channel-pooled map.

    `z = [max_C(x), mean_C(x)]` (two channels, in that order), then a `k x k`
    convolution `2 -> 1` without bias, BatchNorm, sigmoid, and `x * g`.

    In inference mode the BatchNorm is an affine map; `inference_layer()` returns a
    `FoldedSpatialAttention` with it folded into the convolution (same outputs).

    Porting the reference's (`SpatialGate`) weights: `gate.conv.kernel =
    w.transpose(2, 3, 1, 0)` for `spatial.conv.weight` `w`, of shape `(1, 2, k, k)`;
    `gate.bn` from `spatial.bn` (see `ConvGate`).

    Paper: Woo, Park, Lee, Kweon, "CBAM: Convolutional Block Attention Module",
    ECCV 2018, https://arxiv.org/abs/1807.06521

    Args:
        kernel_size: odd size of the square convolution kernel. Defaults to `7`.
        bn_momentum: BatchNorm moving-average momentum, Keras convention (PyTorch's 0.01
            is Keras' 0.99). Defaults to `0.99` (the reference's).
        bn_epsilon: BatchNorm epsilon. Defaults to `1e-5` (the reference's).
        bn_zero_gamma: initialise the BatchNorm scale at 0, so that the block starts as
            `x * 0.5`, as the reference ResNet does. Defaults to `True`.
        synchronized: synchronise the BatchNorm statistics across replicas under a
            `tf.distribute` strategy. Defaults to `False`.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Input shape:
        4-D tensor `(batch, height, width, channels)`; height and width may be unknown.

    Output shape:
        Same as the input.

    Example:

    >>> x = keras.Input((None, None, 64))
    >>> y = SpatialAttention(kernel_size=7)(x)
    """

    slice_refusal = None

    def __init__(
        self,
        kernel_size=7,
        bn_momentum=REFERENCE_BN_MOMENTUM,
        bn_epsilon=REFERENCE_BN_EPSILON,
        bn_zero_gamma=True,
        synchronized=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _set_arguments(
            self,
            spatial_arguments(kernel_size, bn_momentum, bn_epsilon, bn_zero_gamma, synchronized),
        )

    def build(self, input_shape):
        self.channels = channels_from_shape(self, input_shape)
        self.gate = ConvGate(
            self.kernel_size,
            bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
            bn_zero_gamma=self.bn_zero_gamma,
            synchronized=self.synchronized,
            dtype=self.dtype_policy,
            name="gate",
        )
        self.gate.build((None, None, None, 2))

    def call(self, inputs, training=None):
        return inputs * spatial_gate(self.gate, inputs, training)

    def gates(self, inputs, training=False):
        """`{"spatial": g}`, the map `(N, H, W, 1)` gating every channel."""
        return {"spatial": spatial_gate(self.gate, inputs, training)}

    def slice_channels(self, keep):
        """The block on channels `keep`: its convolution's mean input scaled by `C / C'`.

        The mean over the `C'` kept channels is `C / C'` times the mean over all `C` with
        the others zero; the kernel slice that reads the mean takes the factor back. The
        maximum over the kept channels equals the maximum over all of them wherever it is
        >= 0, so on inputs after a ReLU (every prunable site of the builders) the gate is
        unchanged; on negative maps the slice approximates it.
        """
        keep = check_keep(self, keep, self.channels)
        weights = slice_weights(self, keep, {})
        for index, variable in enumerate(self.weights):
            if variable.path.endswith("gate/conv/kernel"):
                weights[index][:, :, 1:] *= len(keep) / self.channels
        return self.get_config(), weights

    def inference_layer(self):
        """Returns a `FoldedSpatialAttention` with the BatchNorm folded into the convolution."""
        _require_built(self)
        folded = FoldedSpatialAttention(
            self.kernel_size, dtype=self.dtype_policy, name=f"{self.name}_folded"
        )
        folded.build((None, None, None, self.channels))
        folded.gate.set_weights(self.gate.folded_weights())
        return folded

    def get_config(self):
        config = super().get_config()
        config.update(_arguments(self, SPATIAL_ARGUMENTS))
        return config


@keras.saving.register_keras_serializable(package="keras_chanattn")
class FoldedSpatialAttention(AttentionLayer):
    """Inference form of `SpatialAttention`: the BatchNorm folded into the convolution.

    `g = sigmoid(conv([max_C(x), mean_C(x)]) + b)`, output `x * g`. Built by
    `SpatialAttention.inference_layer()`; it computes the same outputs as the original in
    inference mode, with no BatchNorm op and the convolution on blocks of columns
    (`ConvGate.blocked`: XNNPACK runs a one-channel convolution slowly).

    Args:
        kernel_size: odd size of the square convolution kernel. Defaults to `7`.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Input shape:
        4-D tensor `(batch, height, width, channels)`.

    Output shape:
        Same as the input.

    Example:

    >>> layer = SpatialAttention()
    >>> y = layer(keras.Input((None, None, 64)))
    >>> folded = layer.inference_layer()  # a FoldedSpatialAttention, same outputs
    """

    def __init__(self, kernel_size=7, **kwargs):
        super().__init__(**kwargs)
        self.kernel_size = check_odd_kernel_size(kernel_size)

    def build(self, input_shape):
        channels_from_shape(self, input_shape)
        self.gate = ConvGate(
            self.kernel_size, batch_norm=False, dtype=self.dtype_policy, name="gate"
        )
        self.gate.build((None, None, None, 2))

    def call(self, inputs):
        return inputs * self.gate.blocked(z_pool_maps(inputs, axis=-1))

    def gates(self, inputs, training=False):
        """`{"spatial": g}`, the map `(N, H, W, 1)` gating every channel."""
        return {"spatial": self.gate.blocked(z_pool_maps(inputs, axis=-1))}

    def get_config(self):
        config = super().get_config()
        config.update({"kernel_size": self.kernel_size})
        return config


@register_attention("cbam")
class CBAM(AttentionLayer):
    """Convolutional Block Attention Module: channel attention, then spatial attention.

    `y = SpatialAttention(ChannelAttention(x))`: a shared MLP over the average- and
    max-pooled channels gates the channels, then a `k x k` convolution over the
    `[max, mean]` channel-pooled map (BatchNorm, sigmoid) gates the positions.

    `inference_layer()` returns a `FoldedCBAM` with the spatial BatchNorm folded into its
    convolution (same outputs in inference mode).

    Porting the reference's weights: `channel_attention.reduce` / `.expand` take the
    transposed `ChannelGate.mlp` Linear weights (`kernel = weight.T`); the spatial part
    maps as in `SpatialAttention`.

    Paper: Woo, Park, Lee, Kweon, "CBAM: Convolutional Block Attention Module",
    ECCV 2018, https://arxiv.org/abs/1807.06521

    Args:
        reduction: reduction ratio `r` of the channel MLP. Defaults to `16`.
        min_channels: smallest bottleneck width. Defaults to `8`, as `SqueezeExcite`
            (a narrower MLP can leave int8 TFLite a zero-range tensor XNNPACK refuses).
        divisor: if set, round the bottleneck width to a multiple of this. Defaults to
            `None`.
        gate_activation: channel gate, one of `"sigmoid"`, `"hard_sigmoid"`, `"tanh"`,
            `"relu"`. Defaults to `"sigmoid"`.
        kernel_size: odd size of the spatial convolution kernel. Defaults to `7`.
        bn_momentum: spatial BatchNorm momentum, Keras convention. Defaults to `0.99`
            (the reference's PyTorch 0.01).
        bn_epsilon: spatial BatchNorm epsilon. Defaults to `1e-5` (the reference's).
        bn_zero_gamma: initialise the spatial BatchNorm scale at 0, as the reference
            ResNet does. Defaults to `True`.
        synchronized: synchronise the BatchNorm statistics across replicas. Defaults to
            `False`.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Input shape:
        4-D tensor `(batch, height, width, channels)`; height and width may be unknown.

    Output shape:
        Same as the input.

    Example:

    >>> x = keras.Input((None, None, 256))
    >>> y = CBAM(reduction=16, kernel_size=7)(x)
    """

    slice_refusal = None

    paper_figures = {
        "resnet50": {"delta": 2_532_592, "gflops": 4.14, "top1": 77.63, "base_top1": 76.38},
    }

    def __init__(
        self,
        reduction=16,
        min_channels=8,
        divisor=None,
        gate_activation="sigmoid",
        kernel_size=7,
        bn_momentum=REFERENCE_BN_MOMENTUM,
        bn_epsilon=REFERENCE_BN_EPSILON,
        bn_zero_gamma=True,
        synchronized=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _set_arguments(self, channel_arguments(reduction, min_channels, divisor, gate_activation))
        _set_arguments(
            self,
            spatial_arguments(kernel_size, bn_momentum, bn_epsilon, bn_zero_gamma, synchronized),
        )

    def build(self, input_shape):
        self.channels = channels_from_shape(self, input_shape)
        self.channel_attention = ChannelAttention(
            **_arguments(self, CHANNEL_ARGUMENTS), dtype=self.dtype_policy, name="channel_attention"
        )
        self.spatial_attention = SpatialAttention(
            **_arguments(self, SPATIAL_ARGUMENTS), dtype=self.dtype_policy, name="spatial_attention"
        )
        self.channel_attention.build(input_shape)
        self.spatial_attention.build(input_shape)

    def call(self, inputs, training=None):
        return self.spatial_attention(self.channel_attention(inputs), training=training)

    def gates(self, inputs, training=False):
        """`{"channel": (N, C), "spatial": (N, H, W, 1)}`; see `cbam_gates`."""
        return cbam_gates(self, inputs, training)

    def slice_channels(self, keep):
        """The block on channels `keep`: each half sliced (see their `slice_channels`)."""
        channel_config, channel_weights = self.channel_attention.slice_channels(keep)
        _, spatial_weights = self.spatial_attention.slice_channels(keep)
        config = self.get_config()
        config.update({key: channel_config[key] for key in CHANNEL_ARGUMENTS})
        weights = _merged_weights(
            self,
            [
                (self.channel_attention, channel_weights),
                (self.spatial_attention, spatial_weights),
            ],
        )
        return config, weights

    def inference_layer(self):
        """Returns a `FoldedCBAM` with the spatial BatchNorm folded into its convolution."""
        _require_built(self)
        folded = FoldedCBAM(
            **_arguments(self, CHANNEL_ARGUMENTS),
            kernel_size=self.kernel_size,
            dtype=self.dtype_policy,
            name=f"{self.name}_folded",
        )
        folded.build((None, None, None, self.channels))
        folded.channel_attention.set_weights(self.channel_attention.get_weights())
        folded.spatial_attention.gate.set_weights(self.spatial_attention.gate.folded_weights())
        return folded

    def get_config(self):
        config = super().get_config()
        config.update(_arguments(self, CHANNEL_ARGUMENTS))
        config.update(_arguments(self, SPATIAL_ARGUMENTS))
        return config


@keras.saving.register_keras_serializable(package="keras_chanattn")
class FoldedCBAM(AttentionLayer):
    """Inference form of `CBAM`: `FoldedSpatialAttention(ChannelAttention(x))`.

    Built by `CBAM.inference_layer()`; it computes the same outputs as the original in
    inference mode, with no BatchNorm op.

    Args:
        reduction: reduction ratio `r` of the channel MLP. Defaults to `16`.
        min_channels: smallest bottleneck width. Defaults to `8`, as `SqueezeExcite`
            (a narrower MLP can leave int8 TFLite a zero-range tensor XNNPACK refuses).
        divisor: if set, round the bottleneck width to a multiple of this. Defaults to
            `None`.
        gate_activation: channel gate, one of `"sigmoid"`, `"hard_sigmoid"`, `"tanh"`,
            `"relu"`. Defaults to `"sigmoid"`.
        kernel_size: odd size of the spatial convolution kernel. Defaults to `7`.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Input shape:
        4-D tensor `(batch, height, width, channels)`.

    Output shape:
        Same as the input.

    Example:

    >>> layer = CBAM()
    >>> y = layer(keras.Input((None, None, 64)))
    >>> folded = layer.inference_layer()  # a FoldedCBAM, same outputs
    """

    def __init__(
        self,
        reduction=16,
        min_channels=8,
        divisor=None,
        gate_activation="sigmoid",
        kernel_size=7,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _set_arguments(self, channel_arguments(reduction, min_channels, divisor, gate_activation))
        self.kernel_size = check_odd_kernel_size(kernel_size)

    def build(self, input_shape):
        channels_from_shape(self, input_shape)
        self.channel_attention = ChannelAttention(
            **_arguments(self, CHANNEL_ARGUMENTS), dtype=self.dtype_policy, name="channel_attention"
        )
        self.spatial_attention = FoldedSpatialAttention(
            self.kernel_size, dtype=self.dtype_policy, name="spatial_attention"
        )
        self.channel_attention.build(input_shape)
        self.spatial_attention.build(input_shape)

    def call(self, inputs):
        return self.spatial_attention(self.channel_attention(inputs))

    def gates(self, inputs, training=False):
        """`{"channel": (N, C), "spatial": (N, H, W, 1)}`; see `cbam_gates`."""
        return cbam_gates(self, inputs, training)

    def get_config(self):
        config = super().get_config()
        config.update(_arguments(self, CHANNEL_ARGUMENTS))
        config.update({"kernel_size": self.kernel_size})
        return config


def cbam_gates(layer, inputs, training=False):
    """The gates of a `CBAM` or `FoldedCBAM`: its halves' gates, in the order they apply.

    `"channel"` `(N, C)` from the input; `"spatial"` `(N, H, W, 1)` from the channel-gated
    map, which the spatial half sees: the output is `x * channel * spatial`.
    """
    channel = layer.channel_attention.gates(inputs)["channel"]
    gated = inputs * expand_hw(channel)
    spatial = layer.spatial_attention.gates(gated, training=training)["spatial"]
    return {"channel": channel, "spatial": spatial}
