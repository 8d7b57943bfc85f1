"""GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond (Cao et al., 2019): https://arxiv.org/abs/1904.11492"""

import keras
from keras import ops

from keras_chanattn.layers.common import (
    AttentionLayer,
    channels_from_shape,
    check_choice,
    check_positive_float,
    check_positive_int,
    spatial_mean,
)
from keras_chanattn.layers.registry import register_attention
from keras_chanattn.layers.squeeze_excite import reduced_channels


@register_attention("gc")
class GlobalContext(AttentionLayer):
    """Global Context block: attention-pooled context, a bottleneck transform, fused back.

    Context modelling: a 1x1 convolution `C -> 1` (with bias) gives one logit per position,
    a softmax over the `H * W` positions (in float32) weights them, and the weighted sum of
    `x` is the context vector (`C` values). Transform: 1x1 convolution `C -> C / reduction`
    (bias), LayerNorm over those channels (epsilon `1e-5`, affine), ReLU, 1x1 convolution
    back to `C` (bias, zero-initialised). Fusion: the result is added to every position
    (`fusion="add"`, the reference default), or gates it, `x * sigmoid(.)`
    (`fusion="mul"`). With zero-initialised last convolution the "add" block starts as the
    identity.

    The bias of the logit convolution is kept, so reference weights load one to one and
    the parameter count matches, but as a non-trainable weight: the softmax is invariant
    to a shift, so the bias never affects the output and its gradient is zero.

    Paper: Cao, Xu, Lin, Wei, Hu, "GCNet: Non-local Networks Meet Squeeze-Excitation
    Networks and Beyond", 2019, https://arxiv.org/abs/1904.11492

    Args:
        reduction: reduction ratio `r` of the transform bottleneck, `C -> C / r`
            (GCNet's `ratio` is `1 / r`). Defaults to `16`.
        min_channels: smallest bottleneck width. Defaults to `1`.
        divisor: if set, round the bottleneck width to a multiple of this. Defaults to
            `None` (no rounding, as in the paper).
        pooling: context modelling, `"attention"` (softmax-weighted sum, the paper's) or
            `"avg"` (global average pooling, the paper's ablation). Defaults to
            `"attention"`.
        fusion: `"add"` (broadcast addition) or `"mul"` (sigmoid-gated multiplication).
            Defaults to `"add"`.
        epsilon: LayerNorm epsilon. Defaults to `1e-5` (the reference's).
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Input shape:
        4-D tensor `(batch, height, width, channels)`; height and width may be unknown.

    Output shape:
        Same as the input.

    Example:

    >>> x = keras.Input((None, None, 256))
    >>> y = GlobalContext()(x)  # bottleneck 256 -> 16 -> 256, fusion by addition
    """

    def __init__(
        self,
        reduction=16,
        min_channels=1,
        divisor=None,
        pooling="attention",
        fusion="add",
        epsilon=1e-5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.reduction = check_positive_float("reduction", reduction)
        self.min_channels = check_positive_int("min_channels", min_channels)
        self.divisor = None if divisor is None else check_positive_int("divisor", divisor)
        self.pooling = check_choice("pooling", pooling, ("attention", "avg"))
        self.fusion = check_choice("fusion", fusion, ("add", "mul"))
        self.epsilon = check_positive_float("epsilon", epsilon)

    def build(self, input_shape):
        channels = channels_from_shape(self, input_shape)
        hidden = reduced_channels(channels, self.reduction, self.min_channels, self.divisor)
        if self.pooling == "attention":
            self.context_logits = keras.layers.Dense(
                1, use_bias=False, dtype=self.dtype_policy, name="context_logits"
            )
            self.context_logits.build((None, None, None, channels))
            self.context_bias = self.add_weight(
                name="context_bias", shape=(1,), initializer="zeros", trainable=False
            )
        self.reduce = keras.layers.Dense(hidden, dtype=self.dtype_policy, name="reduce")
        self.norm = keras.layers.LayerNormalization(
            epsilon=self.epsilon, dtype=self.dtype_policy, name="norm"
        )
        self.expand = keras.layers.Dense(
            channels, kernel_initializer="zeros", dtype=self.dtype_policy, name="expand"
        )
        self.reduce.build((None, channels))
        self.norm.build((None, hidden))
        self.expand.build((None, hidden))

    def _context(self, inputs):
        if self.pooling == "avg":
            return spatial_mean(inputs, keepdims=False)
        channels = inputs.shape[-1]
        if inputs.shape[1] == 1 and inputs.shape[2] == 1:
            # One position: its softmax weight is 1 (skipping a size-1 softmax warning).
            return ops.reshape(inputs, (-1, channels))
        shape = ops.shape(inputs)
        logits = ops.cast(self.context_logits(inputs), "float32")
        logits = logits + ops.cast(self.context_bias, "float32")
        weights = ops.softmax(ops.reshape(logits, (-1, 1, shape[1] * shape[2])), axis=-1)
        values = ops.reshape(ops.cast(inputs, "float32"), (-1, shape[1] * shape[2], channels))
        context = ops.matmul(weights, values)  # (N, 1, C)
        return ops.cast(ops.reshape(context, (-1, channels)), self.compute_dtype)

    def call(self, inputs):
        t = self.reduce(self._context(inputs))
        t = self.expand(ops.relu(self.norm(t)))
        t = ops.expand_dims(ops.expand_dims(t, 1), 1)
        if self.fusion == "add":
            return inputs + t
        return inputs * ops.sigmoid(t)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "reduction": self.reduction,
                "min_channels": self.min_channels,
                "divisor": self.divisor,
                "pooling": self.pooling,
                "fusion": self.fusion,
                "epsilon": self.epsilon,
            }
        )
        return config
