"""Helpers shared by the attention families: input checks, pooling statistics, gates."""

import contextlib
import contextvars
import functools
import math
import numbers

import keras
import numpy as np
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


def _type_note(value):
    """`" (str)"` for a value of the wrong type, to show why `'8'` or `2.0` was refused."""
    return "" if isinstance(value, (bool, numbers.Number)) else f" ({type(value).__name__})"


def check_positive_int(name, value, minimum=1):
    """Raises `ValueError` unless `value` is an integer >= `minimum`; returns it as `int`.

    Bools are refused (`True` is not a count); NumPy integers are accepted.
    """
    if (
        isinstance(value, (bool, np.bool_))
        or not isinstance(value, numbers.Integral)
        or value < minimum
    ):
        hint = ""
        if isinstance(value, float) and math.isfinite(value) and value == int(value):
            hint = f" Pass {name}={int(value)} (an int, not a float)."
        raise ValueError(
            f"`{name}` must be an integer >= {minimum}, got {value!r}{_type_note(value)}.{hint}"
        )
    return int(value)


def check_number(name, value, minimum=None, exclusive=True):
    """Raises `ValueError` unless `value` is a finite real number in range; returns a float.

    Args:
        name: the argument's name, for the message.
        value: the value given.
        minimum: the lower bound, or `None` for any finite number.
        exclusive: whether the bound itself is refused (`> minimum`) or accepted
            (`>= minimum`).
    """
    bound = "" if minimum is None else f" {'>' if exclusive else '>='} {minimum:g}"
    valid = (
        not isinstance(value, (bool, np.bool_))
        and isinstance(value, numbers.Real)
        and math.isfinite(value)
    )
    if valid and minimum is not None:
        valid = value > minimum if exclusive else value >= minimum
    if not valid:
        raise ValueError(
            f"`{name}` must be a finite number{bound}, got {value!r}{_type_note(value)}."
        )
    return float(value)


def check_positive_float(name, value):
    """Raises `ValueError` unless `value` is a finite number > 0; returns it as `float`."""
    return check_number(name, value, minimum=0)


def check_ratio(name, value):
    """Raises `ValueError` unless `value` is a finite reduction ratio >= 1 (`C -> C / r`)."""
    return check_number(name, value, minimum=1, exclusive=False)


def check_bool(name, value):
    """Raises `ValueError` unless `value` is `True` or `False`; returns it as `bool`.

    A truthiness test would take `"no"` (or `"False"` from a text config) for `True`.
    """
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(
            f"`{name}` must be True or False, got {value!r}{_type_note(value)}. "
            f"Pass a bool, e.g. {name}=False."
        )
    return bool(value)


def check_bn_momentum(value):
    """Raises `ValueError` unless `value` is a BatchNorm momentum in [0, 1), Keras convention."""
    if (
        isinstance(value, (bool, np.bool_))
        or not isinstance(value, numbers.Real)
        or not 0.0 <= value < 1.0
    ):
        raise ValueError(
            f"`bn_momentum` must be a number in [0, 1) (Keras convention: PyTorch's momentum "
            f"m is 1 - m here, so the reference's 0.01 is 0.99), got {value!r}."
        )
    return float(value)


def check_choice(name, value, choices):
    """Raises `ValueError` unless `value` is one of `choices`."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}, got {value!r}.")
    return value


def check_channels_last(what):
    """Raises `ValueError` unless Keras' global image data format is `"channels_last"`.

    The blocks and builders work on NHWC maps (TFLite's layout); under
    `"channels_first"` the convolutions around them would produce NCHW maps that the
    blocks would read as NHWC. `what` names the layer or builder for the message.
    """
    data_format = keras.config.image_data_format()
    if data_format != "channels_last":
        raise ValueError(
            f"{what} takes channels-last (NHWC) feature maps, (batch, height, width, "
            f"channels): keras_chanattn's attention blocks and model builders are NHWC only, "
            f"but keras.config.image_data_format() is {data_format!r}. Call "
            'keras.config.set_image_data_format("channels_last") before building, and '
            "transpose channels-first data with keras.ops.transpose(x, (0, 2, 3, 1))."
        )


def channels_first_hint(shape):
    """A sentence for a build error when `shape` looks like NCHW read as NHWC, else `""`.

    Only used in messages of errors raised anyway: `(None, 64, 8, 8)` is also a valid NHWC
    map (64 rows, 8 columns, 8 channels), so a shape alone never justifies an error.
    """
    shape = tuple(shape)
    if len(shape) != 4 or None in shape[1:]:
        return ""
    _, first, height, width = shape
    if first > width and height == width:
        return (
            f" The shape {shape} looks channels-first (batch, channels, height, width); the "
            "blocks take (batch, height, width, channels): transpose it with "
            "keras.ops.transpose(x, (0, 2, 3, 1))."
        )
    return ""


def channels_from_shape(layer, input_shape):
    """Returns the channel count of an NHWC input shape, or raises a clear `ValueError`.

    Attention blocks work on 4-D feature maps `(batch, height, width, channels)` whose
    channel dimension is known when the layer is built; height and width may be unknown.
    Keras' global image data format must be `"channels_last"` (see `check_channels_last`).
    """
    check_channels_last(type(layer).__name__)
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
    if channels < 1:
        raise ValueError(
            f"{type(layer).__name__} needs at least 1 channel, got shape {shape}. Apply it "
            "to a feature map with channels, e.g. keras.Input((None, None, 3))."
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


def config_activation(value, name="activation"):
    """Accepts an activation given by name and returns the name (JSON-serialisable)."""
    if not isinstance(value, str):
        raise ValueError(
            f"Activations are given by name (a string such as 'relu'), got `{name}`={value!r}. "
            "A Python function cannot be saved in the layer's config."
        )
    try:
        keras.activations.get(value)
    except ValueError:
        raise ValueError(
            f"`{name}` must name a Keras activation (e.g. 'relu', 'swish', 'gelu'), got {value!r}."
        ) from None
    return value


def check_keep(layer, keep, channels=None):
    """`keep` as a sorted int array of distinct channel indices, or a clear `ValueError`.

    `channels`, where known, is the block's input channel count that the indices must lie
    below. At least one channel must be kept: a block on no channels is no block.
    """
    array = np.asarray(keep)
    what = f"{type(layer).__name__} {layer.name!r}"
    if array.ndim != 1 or array.size == 0 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"slice_channels of {what} takes a non-empty 1-D list of channel indices (ints), "
            f"got {keep!r}."
        )
    array = np.sort(array.astype(np.int64))
    if len(np.unique(array)) != len(array) or array[0] < 0:
        raise ValueError(f"slice_channels of {what}: channel indices must be distinct and >= 0.")
    if channels is not None and array[-1] >= channels:
        raise ValueError(
            f"slice_channels of {what}: channel index {int(array[-1])} is out of range for its "
            f"{channels} channels."
        )
    return array


def slice_weights(layer, keep, axes):
    """Copies of `layer.weights` (in that order) with channels `keep` taken along an axis.

    `axes` maps the end of a variable's path (`"reduce/kernel"`, `"bn/gamma"`) to the axis
    that indexes the block's channels; the other variables are copied whole. A block's
    `slice_channels` declares its per-channel weights this way.
    """
    sliced = []
    for variable in layer.weights:
        value = np.asarray(ops.convert_to_numpy(variable))
        axis = next((a for end, a in axes.items() if variable.path.endswith(end)), None)
        sliced.append(value if axis is None else np.take(value, keep, axis=axis))
    return sliced


def kept_hidden_width(config, hidden, channels):
    """`config` updated so that a bottleneck MLP keeps `hidden` units on `channels` inputs.

    `reduced_channels(channels, reduction, min_channels, divisor)` then gives `hidden`
    exactly: the slice keeps every hidden unit and removes inputs and outputs only.
    """
    config.update(reduction=max(1.0, channels / hidden), min_channels=hidden, divisor=None)
    return config


BN_SLICE_AXES = {"gamma": 0, "beta": 0, "moving_mean": 0, "moving_variance": 0}


# The function `recording_block_inputs` installs: each block's call hands it `(layer, input)`.
_INPUT_RECORDER = contextvars.ContextVar("keras_chanattn_input_recorder", default=None)


@contextlib.contextmanager
def recording_block_inputs(record):
    """Within the context, each block's `call` first hands `record(layer, inputs)` its input.

    The input is the one `call` computes on (already cast to the compute dtype). A block
    called inside another block's `call` (CBAM's halves) is not recorded: its input is
    part of the outer block's. `keras_chanattn.analysis.collect_gates` reads the inputs
    of a model's blocks this way, without adding layers or outputs to the model.
    """
    token = _INPUT_RECORDER.set(record)
    try:
        yield
    finally:
        _INPUT_RECORDER.reset(token)


def _as_float_input(layer, inputs):
    """`inputs`, cast to `layer`'s compute dtype when it is not a float tensor."""
    dtype = getattr(inputs, "dtype", None)
    if dtype is not None and not keras.backend.is_float_dtype(
        keras.backend.standardize_dtype(dtype)
    ):
        return ops.cast(inputs, layer.compute_dtype)
    return inputs


def _cast_non_float_inputs(call):
    """Wraps a block's `call` so that a non-float input is first cast to the compute dtype.

    Keras autocasts float inputs only, so an image decoded as uint8 would reach the
    block's arithmetic as integers (TensorFlow refuses `int * float`; integer statistics
    truncate). Casting once here gives integer inputs the float path's results. Inside
    `recording_block_inputs` the (cast) input is also recorded, and the recorder is off
    while the block runs, so that the blocks it calls are not recorded too.
    """

    @functools.wraps(call)
    def wrapper(self, inputs, *args, **kwargs):
        inputs = _as_float_input(self, inputs)
        record = _INPUT_RECORDER.get()
        if record is None:
            return call(self, inputs, *args, **kwargs)
        record(self, inputs)
        token = _INPUT_RECORDER.set(None)
        try:
            return call(self, inputs, *args, **kwargs)
        finally:
            _INPUT_RECORDER.reset(token)

    wrapper.casts_non_float_inputs = True
    return wrapper


def _cast_non_float_gate_inputs(gates):
    """Wraps a block's `gates` so that it reads its input in the compute dtype, as `call` does.

    Calling the layer casts a float input to the compute dtype (Keras' autocast) and the
    `call` wrapper casts the others; `gates` is a plain method, so it casts every input,
    and builds the layer on the input's shape first if needed, as a call would.
    """

    @functools.wraps(gates)
    def wrapper(self, inputs, *args, **kwargs):
        inputs = ops.convert_to_tensor(inputs)
        if keras.backend.standardize_dtype(inputs.dtype) != self.compute_dtype:
            inputs = ops.cast(inputs, self.compute_dtype)
        if not self.built:
            self.build(tuple(inputs.shape))
        return gates(self, inputs, *args, **kwargs)

    wrapper.casts_non_float_inputs = True
    return wrapper


class AttentionLayer(keras.layers.Layer):
    """Base class of the attention blocks: shape-preserving layers on NHWC feature maps.

    Subclasses create their weights in `build` (after `channels_from_shape`) and write `call`
    with `keras.ops`; a non-float input (a uint8 image, say) reaches `call` already cast to
    the layer's compute dtype, so integer inputs give the float inputs' results.
    `inference_layer()` returns the form used for export; blocks with a cheaper equivalent
    graph (BatchNorm folded, say) override it.

    What is particular to a block is declared on its class, so that no other module keeps
    a per-block list:

    - `paper_figures`: `{backbone: {"delta", "gflops", "top1", "base_top1"}}`, the block's
      paper's figures (trainable-parameter delta over the plain network, GFLOPs as
      multiply-adds, top-1 and that paper's baseline top-1; `None` where it gives none).
      Read from the class itself, not inherited. `models.params` prints them beside ours.
    - `small_network_kwargs(channels)`: constructor arguments that fit the block into a
      small network (see below).

    `gates(inputs, training=False)` returns what the block multiplies its input by, a dict
    of named tensors in the compute dtype (`docs/blocks.md` lists each block's):

    - `"channel"`: per-channel weights `(N, C)` (SE, ECA, SRM, CBAM's channel half, GE with
      global extent, GC with `fusion="mul"`); Shuffle Attention's is `(N, C / 2)`, over
      its channel-branch channels in input order.
    - `"spatial"`: per-position maps `(N, H, W, G)`, map `g` gating the `g`-th of `G`
      groups of consecutive channels (`G = 1`: CBAM, spatial attention; SGE's groups).
    - block-specific ones: GE's `"tiles"`, GC's `"attention"`, SA's `"spatial_branch"`,
      Triplet's `"cw"`, `"hc"`, `"hw"`.

    Each block computes them with the code its `call` uses; the inference form has the
    same names. Integer inputs are cast as for `call`.

    `slice_channels(keep)` returns `(config, weights)` of the block on the kept input
    channels only (for `keras_chanattn.prune`): a block whose per-channel weights can be
    taken apart declares it, computing on the kept channels what it computed on them
    with the others zero. The others set `slice_refusal`, the reason they cannot.
    """

    paper_figures = {}
    # Why the block cannot be sliced (see `slice_channels`); `None` for blocks that can.
    slice_refusal = "it declares no `slice_channels`"

    def __init_subclass__(cls, **kwargs):
        # Every block's own `call` and `gates` cast integer (or bool) inputs to its compute
        # dtype; `call` also records its input for `recording_block_inputs`.
        super().__init_subclass__(**kwargs)
        for method, wrap in (
            ("call", _cast_non_float_inputs),
            ("gates", _cast_non_float_gate_inputs),
        ):
            function = cls.__dict__.get(method)
            if function is not None and not getattr(function, "casts_non_float_inputs", False):
                setattr(cls, method, wrap(function))

    def gates(self, inputs, training=False):
        """What the block multiplies its input by: `{name: tensor}` (see the class docstring).

        Args:
            inputs: the block's input, `(N, H, W, C)`.
            training: as for `call`: `True` uses batch statistics where the block carries
                BatchNorm (and updates its moving averages, as a training step does).
                Defaults to `False`.
        """
        raise NotImplementedError(
            f"{type(self).__name__} does not implement `gates(inputs, training=False)`. "
            "Define it to return the block's gates as {name: tensor}, e.g. "
            '{"channel": s} for a per-channel gate s of shape (N, C), computed by the '
            "code `call` uses (see AttentionLayer's docstring and CONTRIBUTING.md)."
        )

    def slice_channels(self, keep):
        """`(config, weights)` of this block on the input channels `keep` only.

        `type(self).from_config(config)`, built on `len(keep)` channels, takes `weights`
        and computes on the kept channels what this block computes on them when the other
        channels are zero. Blocks that cannot be sliced raise a `ValueError` naming the
        blocks that can.
        """
        from keras_chanattn.layers.registry import sliceable_attention

        raise ValueError(
            f"{type(self).__name__} ({self.name!r}) cannot be sliced: {self.slice_refusal}. "
            f"Prunable blocks: {', '.join(sliceable_attention())}."
        )

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
