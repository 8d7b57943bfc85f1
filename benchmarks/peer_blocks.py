"""Peer blocks: each attention block as a user would write it in Keras 3 without this package.

The straightforward translation of each paper's module (the formulas in docs/blocks.md), for
`phone_forms.py` to export and time beside the package's blocks: SRM with `keras.ops.moments`
and `sqrt`, ECA with `Conv1D` over the channel axis, SA with a reshape to groups,
`GroupNormalization` and a 5-D transpose shuffle, CBAM with `Concatenate` and `Conv2D`,
Triplet with transposes of the full map, SGE with its division by the standard deviation,
GC with a softmax and `matmul`, GE as pooling and a sigmoid, SE with 1x1 convolutions. They
have no inference form: they convert as written.

Each peer takes the package block's constructor arguments that change its function (widths,
kernel sizes, groups, gates) and `weights_from(block)` maps the package block's weights onto
its own, so that a peer network can carry the same weights as the package's network and
compute the same function. Not part of the package: a benchmark's yardstick only.
"""

import math

import keras
from keras import ops


def hidden_width(channels, reduction, min_channels=8, divisor=None):
    """A bottleneck's width: `channels / reduction`, at least `min_channels`; with a `divisor`
    rounded to a multiple of it as MobileNetV3 does (never more than 10% down)."""
    value = channels / reduction
    if divisor is None:
        return max(min_channels, int(value))
    lowest = max(min_channels, divisor)
    rounded = max(lowest, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def scale_channels(x, gate):
    """`x * gate` for a per-channel gate `(N, C)`."""
    return x * ops.reshape(gate, (-1, 1, 1, gate.shape[-1]))


class PeerLayer(keras.layers.Layer):
    """A peer block: keeps its constructor arguments for `get_config` (the model builders
    copy blocks through their config) and copies a package block's weights in order."""

    def __init__(self, **kwargs):
        base = {k: kwargs.pop(k) for k in ("name", "dtype", "trainable") if k in kwargs}
        super().__init__(**base)
        self.arguments = kwargs

    def get_config(self):
        return {**super().get_config(), **self.arguments}

    def weights_from(self, block):
        """The package block's weights for `set_weights`, reshaped to this layer's."""
        ours = block.get_weights()
        if len(ours) != len(self.weights):
            raise ValueError(f"{self.name}: {len(ours)} weights to copy, {len(self.weights)} here.")
        return [w.reshape(tuple(v.shape)) for w, v in zip(ours, self.weights, strict=True)]


class PeerSE(PeerLayer):
    """SE: global average pool, 1x1 conv `C -> C/r` with ReLU, 1x1 conv back, gate, scale."""

    def __init__(self, reduction=16, min_channels=8, divisor=None, gate_activation="sigmoid", **kw):
        super().__init__(
            reduction=reduction, min_channels=min_channels, divisor=divisor,
            gate_activation=gate_activation, **kw,
        )  # fmt: skip

    def build(self, input_shape):
        a = self.arguments
        channels = input_shape[-1]
        hidden = hidden_width(channels, a["reduction"], a["min_channels"], a["divisor"])
        self.squeeze = keras.layers.Conv2D(hidden, 1, activation="relu", name="reduce")
        self.excite = keras.layers.Conv2D(channels, 1, name="expand")
        self.squeeze.build((None, 1, 1, channels))
        self.excite.build((None, 1, 1, hidden))

    def call(self, x):
        s = self.excite(self.squeeze(ops.mean(x, axis=(1, 2), keepdims=True)))
        gate = getattr(keras.activations, self.arguments["gate_activation"])
        return x * gate(s)


class PeerSRM(PeerLayer):
    """SRM: mean and standard deviation per channel (`ops.moments`, unbiased, `sqrt`), the
    channel-wise fully connected layer, BatchNorm, sigmoid, scale."""

    def __init__(self, epsilon=1e-5, bn_momentum=0.9, bn_epsilon=1e-5, **kw):
        super().__init__(epsilon=epsilon, bn_momentum=bn_momentum, bn_epsilon=bn_epsilon, **kw)

    def build(self, input_shape):
        channels = input_shape[-1]
        self.cfc = self.add_weight(name="cfc", shape=(channels, 2), initializer="zeros")
        self.bn = keras.layers.BatchNormalization(
            momentum=self.arguments["bn_momentum"], epsilon=self.arguments["bn_epsilon"]
        )
        self.bn.build((None, channels))

    def call(self, x, training=None):
        mean, var = ops.moments(x, axes=[1, 2])
        count = x.shape[1] * x.shape[2]
        std = ops.sqrt(var * (count / (count - 1)) + self.arguments["epsilon"])
        z = mean * self.cfc[:, 0] + std * self.cfc[:, 1]
        return scale_channels(x, ops.sigmoid(self.bn(z, training=training)))


class PeerECA(PeerLayer):
    """ECA: global average pool, `Conv1D` of kernel k over the channel axis, sigmoid, scale;
    k adaptive to the channels (`|log2(C) + 1| / 2`, made odd) unless given."""

    def __init__(self, kernel_size=None, **kw):
        super().__init__(kernel_size=kernel_size, **kw)

    def build(self, input_shape):
        size = self.arguments["kernel_size"]
        if size is None:
            size = int(abs(math.log2(input_shape[-1]) + 1) / 2)
            size = size if size % 2 else size + 1
        self.conv = keras.layers.Conv1D(1, size, padding="same", use_bias=False)
        self.conv.build((None, input_shape[-1], 1))

    def call(self, x):
        s = ops.expand_dims(ops.mean(x, axis=(1, 2)), -1)  # (N, C, 1)
        return scale_channels(x, ops.sigmoid(ops.squeeze(self.conv(s), -1)))


class PeerGE(PeerLayer):
    """GE-theta-minus: `x * sigmoid(GAP(x))`."""

    def call(self, x):
        return x * ops.sigmoid(ops.mean(x, axis=(1, 2), keepdims=True))


class PeerSA(PeerLayer):
    """SA: groups moved into the batch, half the channels gated by their pooled mean, half by
    `GroupNormalization` (one group per channel), concatenated, back, shuffled (2 groups)."""

    def __init__(self, groups=64, epsilon=1e-5, **kw):
        super().__init__(groups=groups, epsilon=epsilon, **kw)

    def build(self, input_shape):
        half = input_shape[-1] // (2 * self.arguments["groups"])
        for name, init in (("cweight", "zeros"), ("cbias", "ones"), ("sweight", "zeros"),
                           ("sbias", "ones")):  # fmt: skip
            setattr(self, name, self.add_weight(name=name, shape=(half,), initializer=init))
        self.norm = keras.layers.GroupNormalization(half, epsilon=self.arguments["epsilon"])
        self.norm.build((None, None, None, half))

    def call(self, x):
        _, h, w, c = x.shape
        groups = self.arguments["groups"]
        y = ops.reshape(x, (-1, h, w, groups, c // groups))
        y = ops.reshape(ops.transpose(y, (0, 3, 1, 2, 4)), (-1, h, w, c // groups))
        x0, x1 = ops.split(y, 2, axis=-1)
        s = ops.mean(x0, axis=(1, 2), keepdims=True)
        x0 = x0 * ops.sigmoid(self.cweight * s + self.cbias)
        x1 = x1 * ops.sigmoid(self.sweight * self.norm(x1) + self.sbias)
        y = ops.reshape(ops.concatenate([x0, x1], -1), (-1, groups, h, w, c // groups))
        y = ops.reshape(ops.transpose(y, (0, 2, 3, 1, 4)), (-1, h, w, 2, c // 2))
        return ops.reshape(ops.transpose(y, (0, 1, 2, 4, 3)), (-1, h, w, c))


def _conv_gate(kernel_size, momentum, name):
    """A `k x k` conv `2 -> 1` without bias and its BatchNorm, built."""
    conv = keras.layers.Conv2D(1, kernel_size, padding="same", use_bias=False, name=name)
    bn = keras.layers.BatchNormalization(momentum=momentum, epsilon=1e-5, name=f"{name}_bn")
    conv.build((None, None, None, 2))
    bn.build((None, None, None, 1))
    return conv, bn


def _z_pool(x):
    """`[max, mean]` over the last axis, joined with `Concatenate` as the references do."""
    maps = [ops.max(x, axis=-1, keepdims=True), ops.mean(x, axis=-1, keepdims=True)]
    return keras.layers.Concatenate()(maps)


class PeerCBAM(PeerLayer):
    """CBAM: a shared MLP on the average and max pools, summed, sigmoid, scale; then a 7x7
    `Conv2D` on `Concatenate([max, mean])` over the channels, BatchNorm, sigmoid, scale."""

    def __init__(self, reduction=16, min_channels=8, kernel_size=7, **kw):
        super().__init__(
            reduction=reduction, min_channels=min_channels, kernel_size=kernel_size, **kw
        )

    def build(self, input_shape):
        a, channels = self.arguments, input_shape[-1]
        hidden = hidden_width(channels, a["reduction"], a["min_channels"])
        self.reduce = keras.layers.Dense(hidden, activation="relu")
        self.expand = keras.layers.Dense(channels)
        self.reduce.build((None, channels))
        self.expand.build((None, hidden))
        self.conv, self.bn = _conv_gate(a["kernel_size"], 0.99, "spatial")

    def call(self, x, training=None):
        avg, top = ops.mean(x, axis=(1, 2)), ops.max(x, axis=(1, 2))
        x = scale_channels(
            x, ops.sigmoid(self.expand(self.reduce(avg)) + self.expand(self.reduce(top)))
        )
        return x * ops.sigmoid(self.bn(self.conv(_z_pool(x)), training=training))


class PeerTriplet(PeerLayer):
    """Triplet Attention: the full map transposed so that each branch's pooled axis is last,
    Z-pool, 7x7 conv, BatchNorm, sigmoid, scale, transposed back; the mean of the three."""

    # (the transpose that brings a branch's plane to (rows, cols) with its pooled axis last)
    PERMUTATIONS = {"cw": (0, 3, 2, 1), "hc": (0, 1, 3, 2), "hw": (0, 1, 2, 3)}

    def __init__(self, kernel_size=7, **kw):
        super().__init__(kernel_size=kernel_size, **kw)

    def build(self, input_shape):
        self.gates = [_conv_gate(self.arguments["kernel_size"], 0.99, b) for b in self.PERMUTATIONS]
        for name, (conv, bn) in zip(self.PERMUTATIONS, self.gates, strict=True):
            setattr(self, f"{name}_conv", conv)
            setattr(self, f"{name}_bn", bn)

    def call(self, x, training=None):
        out = 0.0
        for perm, (conv, bn) in zip(self.PERMUTATIONS.values(), self.gates, strict=True):
            y = ops.transpose(x, perm) if perm != (0, 1, 2, 3) else x
            y = y * ops.sigmoid(bn(conv(_z_pool(y)), training=training))
            out = out + (ops.transpose(y, perm) if perm != (0, 1, 2, 3) else y)
        return out * (1.0 / 3.0)


class PeerGC(PeerLayer):
    """GC: a 1x1 conv `C -> 1`, softmax over the positions, `matmul` with the map: a context
    vector; 1x1 conv `C -> C/r`, LayerNorm, ReLU, 1x1 conv back; added to every position."""

    def __init__(self, reduction=16, min_channels=8, **kw):
        super().__init__(reduction=reduction, min_channels=min_channels, **kw)

    def build(self, input_shape):
        channels = input_shape[-1]
        hidden = hidden_width(channels, self.arguments["reduction"], self.arguments["min_channels"])
        self.logits = keras.layers.Conv2D(1, 1)
        self.reduce = keras.layers.Conv2D(hidden, 1)
        self.norm = keras.layers.LayerNormalization(epsilon=1e-5)
        self.expand = keras.layers.Conv2D(channels, 1)
        self.logits.build((None, None, None, channels))
        self.reduce.build((None, 1, 1, channels))
        self.norm.build((None, 1, 1, hidden))
        self.expand.build((None, 1, 1, hidden))

    def call(self, x):
        _, h, w, c = x.shape
        weights = ops.softmax(ops.reshape(self.logits(x), (-1, 1, h * w)), axis=-1)
        context = ops.matmul(weights, ops.reshape(x, (-1, h * w, c)))  # (N, 1, C)
        t = self.reduce(ops.reshape(context, (-1, 1, 1, c)))
        return x + self.expand(ops.relu(self.norm(t)))

    def weights_from(self, block):
        """The package's GC keeps the logits' bias apart, before the logits' kernel."""
        named = {v.path.split("/", 1)[1]: v.numpy() for v in block.weights}
        ours = [named.pop("context_logits/kernel"), named.pop("context_bias"), *named.values()]
        return [w.reshape(tuple(v.shape)) for w, v in zip(ours, self.weights, strict=True)]


class PeerSGE(PeerLayer):
    """SGE: per group, the positions' dot product with the group's mean vector, normalised
    (minus the mean, divided by the unbiased std + eps), `w * t + b`, sigmoid, scale."""

    def __init__(self, groups=64, epsilon=1e-5, **kw):
        super().__init__(groups=groups, epsilon=epsilon, **kw)

    def build(self, input_shape):
        groups = self.arguments["groups"]
        self.weight = self.add_weight(name="weight", shape=(groups,), initializer="zeros")
        self.bias = self.add_weight(name="bias", shape=(groups,), initializer="ones")

    def call(self, x):
        _, h, w, c = x.shape
        groups = self.arguments["groups"]
        y = ops.reshape(x, (-1, h, w, groups, c // groups))
        t = ops.sum(y * ops.mean(y, axis=(1, 2), keepdims=True), axis=-1)  # (N, H, W, G)
        t = t - ops.mean(t, axis=(1, 2), keepdims=True)
        std = ops.sqrt(ops.sum(t * t, axis=(1, 2), keepdims=True) / (h * w - 1))
        t = t / (std + self.arguments["epsilon"])
        gate = ops.sigmoid(t * self.weight + self.bias)
        return ops.reshape(y * ops.expand_dims(gate, -1), (-1, h, w, c))


PEERS = {
    "se": PeerSE,
    "srm": PeerSRM,
    "eca": PeerECA,
    "ge": PeerGE,
    "sa": PeerSA,
    "cbam": PeerCBAM,
    "triplet": PeerTriplet,
    "gc": PeerGC,
    "sge": PeerSGE,
}


def keras_hub_se():
    """A block class wrapping keras-hub's own SE layer (the one its MobileNet backbone uses),
    or `(None, why)` when keras-hub (an optional extra) is not installed."""
    try:
        # keras-hub exports no public name for it; its MobileNet blocks import it from here.
        from keras_hub.src.models.mobilenet.squeeze_and_excite_2d import SqueezeAndExcite2D
    except ImportError as error:
        return None, f"keras-hub not importable ({error}); pip install keras-chanattn[hub]"

    class KerasHubSE(PeerSE):
        """keras-hub's `SqueezeAndExcite2D` at this site, with PeerSE's width and gate."""

        def build(self, input_shape):
            a, channels = self.arguments, input_shape[-1]
            hidden = hidden_width(channels, a["reduction"], a["min_channels"], a["divisor"])
            self.inner = SqueezeAndExcite2D(
                filters=channels, bottleneck_filters=hidden, squeeze_activation="relu",
                excite_activation=a["gate_activation"], name=f"{self.name}_hub",
            )  # fmt: skip
            self.inner.build(input_shape)
            self.inner.conv_reduce.build((None, 1, 1, channels))
            self.inner.conv_expand.build((None, 1, 1, hidden))

        def call(self, x):
            return self.inner(x)

    return KerasHubSE, None
