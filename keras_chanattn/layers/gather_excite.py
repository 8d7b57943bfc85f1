"""Gather-Excite: Exploiting Feature Context in CNNs (Hu et al., NeurIPS 2018): https://arxiv.org/abs/1810.12348"""

import keras
import numpy as np
from keras import ops

from keras_chanattn.layers.common import (
    BN_SLICE_AXES,
    GATE_ACTIVATIONS,
    AttentionLayer,
    channels_from_shape,
    check_bn_momentum,
    check_bool,
    check_choice,
    check_keep,
    check_positive_float,
    check_positive_int,
    check_ratio,
    config_activation,
    expand_hw,
    gate,
    kept_hidden_width,
    slice_weights,
    spatial_mean,
)
from keras_chanattn.layers.registry import register_attention
from keras_chanattn.layers.squeeze_excite import reduced_channels


def _static_size(x):
    """`(height, width)` of an NHWC tensor if both are known as the graph is built, else None."""
    h, w = x.shape[1:3]
    return None if h is None or w is None else (int(h), int(w))


def _run_means(t, extent):
    """Means of a `(M, L, K)` tensor over runs of `extent` along axis 1 (L static).

    Runs start at 0; the last one is partial when `extent` does not divide `L`, and is
    averaged over its own length. Returns `(M, ceil(L / extent), K)`. Written with
    reshapes, a slice and MEAN only, which TFLite's XNNPACK delegate runs in int8 too.
    """
    length, depth = t.shape[1:]
    whole, rest = divmod(length, extent)
    parts = []
    if whole:
        body = t if not rest else t[:, : whole * extent]
        parts.append(ops.mean(ops.reshape(body, (-1, whole, extent, depth)), axis=2))
    if rest:
        parts.append(ops.mean(t[:, whole * extent :], axis=1, keepdims=True))
    return parts[0] if len(parts) == 1 else ops.concatenate(parts, axis=1)


def tile_mean(x, extent):
    """Mean of an NHWC tensor over `extent x extent` tiles, in float32.

    Tiles start at the top-left corner: tile `(i, j)` covers rows `[i*E, i*E + E)` and
    columns `[j*E, j*E + E)`, clipped to the map, and is averaged over its in-bounds
    positions only. This is average pooling with kernel `E`, stride `E` and the map padded
    at the bottom and right up to a multiple of `E` (ceil mode), the padding not counted.
    Height and width may be unknown and need not be multiples of `E`.

    When the height and width are known as the graph is built (always so in a TFLite
    export), the tiles are averaged with reshapes and MEAN, over rows first, then over
    columns (every column of a tile has the same rows, so the mean of its column means is
    its mean); otherwise with average pooling over the zero-padded map, divided by each
    tile's in-bounds fraction. The two agree to float32 rounding.

    Returns:
        A float32 tensor of shape `(N, ceil(H / E), ceil(W / E), C)`.
    """
    x32 = ops.cast(x, "float32")
    if extent == 1:
        return x32
    size = _static_size(x32)
    if size is not None:
        (h, w), channels = size, x32.shape[-1]
        rows = _run_means(ops.reshape(x32, (-1, h, w * channels)), extent)
        cols = _run_means(ops.reshape(rows, (-1, w, channels)), extent)
        return ops.reshape(cols, (-1, rows.shape[1], cols.shape[1], channels))
    shape = ops.shape(x32)
    pad = [[0, 0], [0, (extent - shape[1] % extent) % extent]]
    pad += [[0, (extent - shape[2] % extent) % extent], [0, 0]]
    # Zero padding adds nothing to a tile's sum; the pooled ones give each tile's fraction
    # of in-bounds positions, so the ratio is the mean over those positions only.
    sums = ops.average_pool(ops.pad(x32, pad), extent, strides=extent, padding="valid")
    ones = ops.ones_like(x32[:1, :, :, :1])
    inside = ops.average_pool(ops.pad(ones, pad), extent, strides=extent, padding="valid")
    return sums / inside


def upsample_tiles(t, extent, like):
    """Nearest-neighbour upsampling of a tile map by `extent`, cropped to the size of `like`.

    Position `(h, w)` receives tile `(h // extent, w // extent)`: the inverse of
    `tile_mean`'s tiling.
    """
    shape = ops.shape(like)
    t = ops.repeat(ops.repeat(t, extent, axis=1), extent, axis=2)
    return t[:, : shape[1], : shape[2], :]


def gate_tiles(x, g, extent):
    """`x * upsample_tiles(g, extent, x)`: each position scaled by the gate of its tile.

    With the height and width known as the graph is built, the upsampling is a broadcast:
    `x` is viewed as `(N * rows, E, cols, E, C)` and multiplied by `g` viewed as
    `(N * rows, 1, cols, 1, C)`; no tiled copy of `g` is made (TFLite's TILE, which XNNPACK
    does not run). Where `E` does not divide the height (or width) `x` is first zero-padded
    at the bottom (or right) to whole tiles and the product cropped back; a map with one
    row (or column) of tiles needs no padding. Otherwise `g` is repeated and cropped.
    """
    if extent == 1:
        return x * g
    size = _static_size(x)
    if size is None:
        return x * upsample_tiles(g, extent, x)
    (h, w), (rows, cols), channels = size, g.shape[1:3], x.shape[-1]
    tile_h, tile_w = min(extent, h), min(extent, w)  # a single tile may be smaller than E
    padded_h, padded_w = rows * tile_h, cols * tile_w
    if (padded_h, padded_w) != (h, w):
        x = ops.pad(x, [[0, 0], [0, padded_h - h], [0, padded_w - w], [0, 0]])
    y = ops.reshape(x, (-1, tile_h, cols, tile_w, channels))
    y = y * ops.reshape(g, (-1, 1, cols, 1, channels))
    y = ops.reshape(y, (-1, padded_h, padded_w, channels))
    return y if (padded_h, padded_w) == (h, w) else y[:, :h, :w, :]


class _ExciteMixin:
    """The excite half shared by `GatherExcite` and its folded form: optional MLP, gate."""

    def _build_mlp(self, channels):
        if not self.use_mlp:
            return
        hidden = reduced_channels(channels, self.reduction, self.min_channels, self.divisor)
        self.reduce = keras.layers.Dense(
            hidden, activation=self.activation, dtype=self.dtype_policy, name="reduce"
        )
        self.expand = keras.layers.Dense(channels, dtype=self.dtype_policy, name="expand")
        self.reduce.build((None, channels))
        self.expand.build((None, hidden))

    def _excite(self, z):
        if self.use_mlp:
            z = self.expand(self.reduce(z))
        return gate(z, self.gate_activation)

    def _check_spatial_size(self, inputs):
        kh, kw = self.gather_kernel.shape[:2]
        h, w = inputs.shape[1:3]
        if (h is not None and h != kh) or (w is not None and w != kw):
            raise ValueError(
                f"{type(self).__name__} was built for {kh}x{kw} feature maps (its depthwise "
                f"gather covers the whole map), got an input of {h}x{w}. Build a new layer "
                "for this size, or use the parameter-free gather (parametric=False)."
            )

    def _mlp_config(self):
        return {
            "use_mlp": self.use_mlp,
            "reduction": self.reduction,
            "min_channels": self.min_channels,
            "divisor": self.divisor,
            "activation": self.activation,
            "gate_activation": self.gate_activation,
        }

    def _set_mlp_args(self, use_mlp, reduction, min_channels, divisor, activation, gate_act):
        self.use_mlp = check_bool("use_mlp", use_mlp)
        self.reduction = check_ratio("reduction", reduction)
        self.min_channels = check_positive_int("min_channels", min_channels)
        self.divisor = None if divisor is None else check_positive_int("divisor", divisor)
        self.activation = config_activation(activation)
        self.gate_activation = check_choice("gate_activation", gate_act, GATE_ACTIVATIONS)


def _known_spatial_size(layer, input_shape):
    h, w = tuple(input_shape)[1:3]
    if h is None or w is None:
        raise ValueError(
            f"{type(layer).__name__} with a parametric gather learns a depthwise kernel that "
            f"covers the whole feature map, so it needs a known height and width at build "
            f"time; got input shape {tuple(input_shape)}. Give the model input a fixed size "
            "(e.g. keras.Input((56, 56, 64))), or use the parameter-free gather "
            "(parametric=False), which works at any size."
        )
    return int(h), int(w)


def _depthwise_gather(inputs, kernel):
    """Weighted sum over the whole map per channel (a 'valid' depthwise conv), in float32."""
    z = ops.depthwise_conv(
        ops.cast(inputs, "float32"), ops.cast(kernel, "float32"), strides=1, padding="valid"
    )
    return ops.reshape(z, (-1, z.shape[-1]))


def _grouped_gather(inputs, kernel):
    """`_depthwise_gather` as a convolution with one group per channel, for export.

    The same sums, but TFLite gets a (grouped) CONV_2D instead of DEPTHWISE_CONV_2D: with
    dynamic-range quantisation a kernel of 1024 weights or more gets int8 weights and a
    hybrid kernel, which XNNPACK runs for CONV_2D but not for DEPTHWISE_CONV_2D (that
    splits the graph); in the other formats both run. The depthwise kernel `(H, W, C, 1)`
    is the grouped one `(H, W, 1, C)` in the same memory order.
    """
    h, w, channels = kernel.shape[:3]
    kernel = ops.reshape(ops.cast(kernel, "float32"), (h, w, 1, channels))
    z = ops.conv(ops.cast(inputs, "float32"), kernel, strides=1, padding="valid")
    return ops.reshape(z, (-1, channels))


@register_attention("ge")
class GatherExcite(_ExciteMixin, AttentionLayer):
    """Gather-Excite block: gate each position by context gathered over a spatial extent.

    Gather: a context map from `x`; excite: an optional MLP, a gate, nearest-neighbour
    upsampling back to the input size, and `x * g`. The paper's variants are chosen by
    arguments:

    - GE-theta-minus (parameter-free, the default): with global extent, `x * sigmoid(GAP(x))`.
      With a finite `extent` E, position `(h, w)` is gated by the mean of `x` over its tile,
      rows `[E * (h // E), E * (h // E) + E)` and columns likewise, clipped to the map.
      That is average pooling with kernel E and stride E, the map padded at the bottom and
      right up to a multiple of E and border tiles averaged over their in-bounds positions
      only (PyTorch's `count_include_pad=False`), giving a `ceil(H/E) x ceil(W/E)` map,
      then nearest-neighbour upsampling by the factor E, cropped to `H x W`. Works for any
      height and width, unknown or not divisible by E. Where the height and width are
      known as the graph is built (always so in TFLite), the tiles are averaged with
      reshapes and MEAN and the gate is broadcast back without a tiled copy, a graph that
      TFLite's XNNPACK delegate runs whole in every format, full int8 included (it runs
      neither TILE nor int8 AVERAGE_POOL_2D); see `tile_mean` and `gate_tiles`.
    - GE-theta (`parametric=True`): a depthwise convolution whose kernel covers the whole
      `H x W` feature map (no bias), BatchNorm, gate. The kernel starts as the mean
      (`1 / (H * W)`), so the block starts as GE-theta-minus with a BatchNorm. The spatial
      size must be known at build time, and the layer only accepts that size.
    - GE-theta-plus (`parametric=True, use_mlp=True`): GE-theta followed by an SE-style MLP
      `C -> C / reduction -> C` (biases) before the gate. The MLP also works after the
      parameter-free gather (with global extent that is exactly `SqueezeExcite`).

    In inference mode the BatchNorm is an affine map; `inference_layer()` returns a
    `FoldedGatherExcite` with it folded into the depthwise kernel and a bias.

    Paper: Hu, Shen, Albanie, Sun, Vedaldi, "Gather-Excite: Exploiting Feature Context in
    Convolutional Neural Networks", NeurIPS 2018, https://arxiv.org/abs/1810.12348

    Args:
        extent: size `E` of the gather tiles, or `None` for global extent (the whole map).
            Defaults to `None`.
        parametric: gather with a learned depthwise kernel covering the whole map, followed
            by BatchNorm (GE-theta); needs `extent=None` and a known height and width.
            Defaults to `False`.
        use_mlp: excite with an SE-style MLP before the gate (GE-theta-plus). Defaults to
            `False`.
        reduction: reduction ratio `r` of the MLP. Defaults to `16`.
        min_channels: smallest MLP width. Defaults to `8`, as `SqueezeExcite`.
        divisor: if set, round the MLP width to a multiple of this. Defaults to `None`.
        activation: activation of the MLP, by name. Defaults to `"relu"`.
        gate_activation: gate, one of `"sigmoid"`, `"hard_sigmoid"`, `"tanh"`, `"relu"`.
            Defaults to `"sigmoid"`.
        bn_momentum: BatchNorm moving-average momentum of the parametric gather (Keras
            convention; PyTorch's 0.1 is Keras' 0.9). Defaults to `0.9`.
        bn_epsilon: BatchNorm epsilon. Defaults to `1e-5` (the reference's).
        synchronized: synchronise the BatchNorm statistics across replicas under a
            `tf.distribute` strategy. Defaults to `False`.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Input shape:
        4-D tensor `(batch, height, width, channels)`; height and width may be unknown
        unless `parametric=True`.

    Output shape:
        Same as the input.

    Example:

    >>> x = keras.Input((None, None, 64))
    >>> y = GatherExcite(extent=4)(x)  # GE-theta-minus, extent 4
    >>> x = keras.Input((14, 14, 256))
    >>> y = GatherExcite(parametric=True, use_mlp=True)(x)  # GE-theta-plus
    """

    slice_refusal = None

    def __init__(
        self,
        extent=None,
        parametric=False,
        use_mlp=False,
        reduction=16,
        min_channels=8,
        divisor=None,
        activation="relu",
        gate_activation="sigmoid",
        bn_momentum=0.9,
        bn_epsilon=1e-5,
        synchronized=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.extent = None if extent is None else check_positive_int("extent", extent)
        self.parametric = check_bool("parametric", parametric)
        if self.parametric and self.extent is not None:
            raise ValueError(
                f"The parametric gather covers the whole feature map (global extent), got "
                f"extent={extent!r}. Use extent=None with parametric=True, or "
                "parametric=False for a tiled parameter-free gather."
            )
        self._set_mlp_args(use_mlp, reduction, min_channels, divisor, activation, gate_activation)
        self.bn_momentum = check_bn_momentum(bn_momentum)
        self.bn_epsilon = check_positive_float("bn_epsilon", bn_epsilon)
        self.synchronized = check_bool("synchronized", synchronized)

    def build(self, input_shape):
        channels = channels_from_shape(self, input_shape)
        if self.parametric:
            h, w = _known_spatial_size(self, input_shape)
            self.gather_kernel = self.add_weight(
                name="gather_kernel",
                shape=(h, w, channels, 1),
                initializer=keras.initializers.Constant(1.0 / (h * w)),
            )
            self.bn = keras.layers.BatchNormalization(
                momentum=self.bn_momentum,
                epsilon=self.bn_epsilon,
                synchronized=self.synchronized,
                dtype=self.dtype_policy,
                name="bn",
            )
            self.bn.build((None, channels))
        self._build_mlp(channels)

    def _gate(self, inputs, training=None):
        """The gate: `(N, C)`, or `(N, ceil(H / E), ceil(W / E), C)` with an extent `E`."""
        if self.parametric:
            self._check_spatial_size(inputs)
            z = ops.cast(_depthwise_gather(inputs, self.gather_kernel), self.compute_dtype)
            z = self.bn(z, training=training)
        elif self.extent is None:
            z = spatial_mean(inputs, keepdims=False)
        else:
            z = ops.cast(tile_mean(inputs, self.extent), self.compute_dtype)
        return self._excite(z)

    def call(self, inputs, training=None):
        g = self._gate(inputs, training)
        if self.extent is not None:
            return gate_tiles(inputs, g, self.extent)
        return inputs * expand_hw(g)

    def gates(self, inputs, training=False):
        """`{"channel": (N, C)}` with global extent; with an extent `E`, `{"tiles": g}`,
        the per-channel gate of each `E x E` tile, `(N, ceil(H / E), ceil(W / E), C)`
        (position `(h, w)` takes tile `(h // E, w // E)`)."""
        return {"channel" if self.extent is None else "tiles": self._gate(inputs, training)}

    def slice_channels(self, keep):
        """The block on channels `keep`: its gather kernel, BatchNorm and MLP sliced.

        Each channel's context is gathered from that channel alone, and a zero channel adds
        nothing to the MLP's hidden units (all of which stay), so the kept gates are
        unchanged. With the parametric gather and the MLP, a zero channel's context is the
        BatchNorm's constant `beta - mean * gamma / sqrt(var + eps)`: its share of the
        hidden units moves into their bias (exact in inference mode).
        """
        channels = None
        if self.parametric:
            channels = self.gather_kernel.shape[2]
        elif self.use_mlp:
            channels = self.expand.units
        keep = check_keep(self, keep, channels)
        config = self.get_config()
        if self.use_mlp:
            config = kept_hidden_width(config, self.reduce.units, len(keep))
        axes = {"gather_kernel": 2, **BN_SLICE_AXES}
        axes.update({"reduce/kernel": 0, "expand/kernel": 1, "expand/bias": 0})
        weights = slice_weights(self, keep, axes)
        if self.parametric and self.use_mlp:
            self._fold_removed_contexts(keep, weights)
        return config, weights

    def _fold_removed_contexts(self, keep, weights):
        """Adds the removed channels' constant share of the hidden units to their bias."""
        removed = np.setdiff1d(np.arange(self.gather_kernel.shape[2]), keep)
        bn = {name: ops.convert_to_numpy(getattr(self.bn, name)) for name in BN_SLICE_AXES}
        scale = bn["gamma"] / np.sqrt(bn["moving_variance"] + self.bn_epsilon)
        constant = (bn["beta"] - bn["moving_mean"] * scale)[removed]
        kernel = ops.convert_to_numpy(self.reduce.kernel)[removed]
        for index, variable in enumerate(self.weights):
            if variable.path.endswith("reduce/bias"):
                weights[index] = weights[index] + constant @ kernel

    def inference_layer(self):
        """Returns a `FoldedGatherExcite` with the BatchNorm folded into the gather.

        Only the parametric gather carries a BatchNorm; the other variants return the layer
        itself.
        """
        if not self.parametric:
            return self
        if not self.built:
            raise ValueError("Build the layer (call it on an input) before folding it.")
        kernel = ops.convert_to_numpy(self.gather_kernel)
        gamma = ops.convert_to_numpy(self.bn.gamma)
        beta = ops.convert_to_numpy(self.bn.beta)
        mean = ops.convert_to_numpy(self.bn.moving_mean)
        var = ops.convert_to_numpy(self.bn.moving_variance)
        scale = gamma / (var + self.bn_epsilon) ** 0.5
        folded = FoldedGatherExcite(
            **self._mlp_config(), dtype=self.dtype_policy, name=f"{self.name}_folded"
        )
        h, w, channels = kernel.shape[:3]
        folded.build((None, h, w, channels))
        folded.gather_kernel.assign(kernel * scale[:, None])
        folded.gather_bias.assign(beta - mean * scale)
        if self.use_mlp:
            folded.reduce.set_weights(self.reduce.get_weights())
            folded.expand.set_weights(self.expand.get_weights())
        return folded

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "extent": self.extent,
                "parametric": self.parametric,
                **self._mlp_config(),
                "bn_momentum": self.bn_momentum,
                "bn_epsilon": self.bn_epsilon,
                "synchronized": self.synchronized,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_chanattn")
class FoldedGatherExcite(_ExciteMixin, AttentionLayer):
    """Inference form of the parametric `GatherExcite`: BatchNorm folded into the gather.

    `z = sum_{h,w} k[h, w, c] * x[h, w, c] + b_c` (a depthwise convolution covering the
    whole map, with bias), then the optional MLP, the gate and `x * g`. Built by
    `GatherExcite.inference_layer()`; it computes the same outputs as the original in
    inference mode, with no BatchNorm op. The gather runs as a convolution with one group
    per channel, which TFLite's XNNPACK delegate runs in every format, dynamic-range
    quantisation included (it does not run a hybrid DEPTHWISE_CONV_2D).

    Args:
        use_mlp: excite with an SE-style MLP before the gate. Defaults to `False`.
        reduction: reduction ratio `r` of the MLP. Defaults to `16`.
        min_channels: smallest MLP width. Defaults to `8`, as `SqueezeExcite`.
        divisor: if set, round the MLP width to a multiple of this. Defaults to `None`.
        activation: activation of the MLP, by name. Defaults to `"relu"`.
        gate_activation: gate, one of `"sigmoid"`, `"hard_sigmoid"`, `"tanh"`, `"relu"`.
            Defaults to `"sigmoid"`.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Input shape:
        4-D tensor `(batch, height, width, channels)` with the height and width it was
        built for.

    Output shape:
        Same as the input.
    """

    def __init__(
        self,
        use_mlp=False,
        reduction=16,
        min_channels=8,
        divisor=None,
        activation="relu",
        gate_activation="sigmoid",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._set_mlp_args(use_mlp, reduction, min_channels, divisor, activation, gate_activation)

    def build(self, input_shape):
        channels = channels_from_shape(self, input_shape)
        h, w = _known_spatial_size(self, input_shape)
        self.gather_kernel = self.add_weight(
            name="gather_kernel",
            shape=(h, w, channels, 1),
            initializer=keras.initializers.Constant(1.0 / (h * w)),
        )
        self.gather_bias = self.add_weight(
            name="gather_bias", shape=(channels,), initializer="zeros"
        )
        self._build_mlp(channels)

    def _gate(self, inputs):
        self._check_spatial_size(inputs)
        z = _grouped_gather(inputs, self.gather_kernel) + ops.cast(self.gather_bias, "float32")
        return self._excite(ops.cast(z, self.compute_dtype))

    def call(self, inputs):
        return inputs * expand_hw(self._gate(inputs))

    def gates(self, inputs, training=False):
        """`{"channel": g}`, the per-channel weights `(N, C)`."""
        return {"channel": self._gate(inputs)}

    def get_config(self):
        config = super().get_config()
        config.update(self._mlp_config())
        return config
