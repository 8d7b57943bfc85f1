"""Helpers shared by the attention families: input checks, pooling statistics, gates."""

import math

import keras
from keras import ops

# Gate activations a block may use, by name. Names (not functions) are stored in configs so
# that they stay JSON-serialisable.
GATE_ACTIVATIONS = ("sigmoid", "hard_sigmoid", "tanh", "relu")


def make_divisible(value, divisor=8, min_value=None, round_limit=0.9):
    """Rounds `value` to a multiple of `divisor`, as MobileNet-style networks do.

    The result is at least `min_value` (defaults to `divisor`) and is never rounded down
    by more than `1 - round_limit` of `value`.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < round_limit * value:
        rounded += divisor
    return rounded


def check_positive_int(name, value, minimum=1):
    """Raises `ValueError` unless `value` is an integer >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")
    return value


def check_positive_float(name, value):
    """Raises `ValueError` unless `value` is a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"`{name}` must be a positive number, got {value!r}.")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` must be a positive number, got {value!r}.")
    return float(value)


def check_choice(name, value, choices):
    """Raises `ValueError` unless `value` is one of `choices`."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}, got {value!r}.")
    return value


def channels_from_shape(layer, input_shape):
    """Returns the channel count of an NHWC input shape, or raises a clear `ValueError`.

    Attention blocks work on 4-D feature maps `(batch, height, width, channels)` whose
    channel dimension is known when the layer is built; height and width may be unknown.
    """
    shape = tuple(input_shape)
    if len(shape) != 4:
        raise ValueError(
            f"{type(layer).__name__} expects a 4-D input (batch, height, width, channels) "
            f"in channels-last layout, got shape {shape} of rank {len(shape)}. Apply it to "
            "the output of a 2-D convolution, or reshape the input to NHWC."
        )
    channels = shape[-1]
    if channels is None:
        raise ValueError(
            f"{type(layer).__name__} needs a known channel dimension, got shape {shape}. "
            "Give the model input a fixed number of channels, e.g. keras.Input((None, None, 3))."
        )
    return int(channels)


def gate(x, name):
    """Applies the gate activation `name` (one of `GATE_ACTIVATIONS`)."""
    if name == "sigmoid":
        return ops.sigmoid(x)
    if name == "hard_sigmoid":
        # relu6(x + 3) / 6, as MobileNetV3 and PyTorch's `hardsigmoid`.
        return ops.relu6(x + 3.0) / 6.0
    if name == "tanh":
        return ops.tanh(x)
    if name == "relu":
        return ops.relu(x)
    raise ValueError(f"Unknown gate activation {name!r}; valid names are {list(GATE_ACTIVATIONS)}.")


def expand_hw(t):
    """`(N, C)` -> `(N, 1, 1, C)`: a per-channel vector shaped to scale an NHWC map."""
    return ops.expand_dims(ops.expand_dims(t, 1), 1)


def spatial_mean(x, keepdims=True):
    """Mean over height and width, computed in float32 and cast back to `x.dtype`."""
    mean = ops.mean(ops.cast(x, "float32"), axis=(1, 2), keepdims=keepdims)
    return ops.cast(mean, x.dtype)


def spatial_max(x, keepdims=True):
    """Max over height and width."""
    return ops.max(x, axis=(1, 2), keepdims=keepdims)


def spatial_size(x):
    """Number of positions `H * W` of an NHWC tensor, as a float32 scalar (H, W may be dynamic)."""
    shape = ops.shape(x)
    return ops.cast(shape[1], "float32") * ops.cast(shape[2], "float32")


def style_moments(x, epsilon=1e-5, unbiased=True, keepdims=True):
    """Per-channel mean and standard deviation over height and width of an NHWC tensor.

    One `moments` pass in float32 (so large float16 activations do not overflow), then
    `std = sqrt(var + epsilon)`; the epsilon keeps the gradient finite at zero variance.
    With `unbiased=True` the variance divides by `H * W - 1` (PyTorch's `std`, which the
    reference implementations use); a 1x1 map then has variance 0.

    Returns:
        `(mean, std)`, each of shape `(N, 1, 1, C)` (or `(N, C)` without `keepdims`), in
        float32.
    """
    x32 = ops.cast(x, "float32")
    mean, var = ops.moments(x32, axes=(1, 2), keepdims=keepdims)
    if unbiased:
        n = spatial_size(x32)
        var = var * (n / ops.maximum(n - 1.0, 1.0))
    return mean, ops.sqrt(var + epsilon)


def config_activation(value):
    """Accepts an activation given by name and returns the name (JSON-serialisable)."""
    if not isinstance(value, str):
        raise ValueError(
            f"Activations are given by name (a string such as 'relu'), got {value!r}. "
            "A Python function cannot be saved in the layer's config."
        )
    keras.activations.get(value)  # raises for an unknown name
    return value


class AttentionLayer(keras.layers.Layer):
    """Base class of the attention blocks: shape-preserving layers on NHWC feature maps.

    Subclasses create their weights in `build` (after `channels_from_shape`) and write `call`
    with `keras.ops`. `inference_layer()` returns the form used for export; blocks with a
    cheaper equivalent graph (BatchNorm folded, say) override it.

    What is particular to a block is declared on its class, so that no other module keeps
    a per-block list:

    - `paper_figures`: `{backbone: {"delta", "gflops", "top1", "base_top1"}}`, the block's
      paper's figures (trainable-parameter delta over the plain network, GFLOPs as
      multiply-adds, top-1 and that paper's baseline top-1; `None` where it gives none).
      Read from the class itself, not inherited. `models.params` prints them beside ours.
    - `small_network_kwargs(channels)`: constructor arguments that fit the block into a
      small network (see below).
    """

    paper_figures = {}

    @classmethod
    def small_network_kwargs(cls, channels=16):
        """Constructor arguments that fit the block on maps of `channels` channels or more.

        The papers' defaults suit ImageNet networks (e.g. 64 groups need 64 or 128
        channels); small networks (a CIFAR ResNet's first stage has 16 channels) need less.
        The default is `{}`: the block's defaults fit any channel count.
        """
        return {}

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def inference_layer(self):
        """Returns a layer computing the same outputs in inference mode, for export.

        The default is the layer itself; blocks that carry BatchNorm return a sibling layer
        with the statistics folded into their weights.
        """
        return self
