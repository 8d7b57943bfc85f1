"""GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond (Cao et al., 2019): https://arxiv.org/abs/1904.11492"""

import keras
from keras import ops

from keras_chanattn.layers.common import (
    AttentionLayer,
    channels_from_shape,
    check_choice,
    check_positive_float,
    check_positive_int,
    check_ratio,
    expand_hw,
    spatial_mean,
    spatial_size,
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
        min_channels: smallest bottleneck width. Defaults to `8`, as `SqueezeExcite`.
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

    slice_refusal = (
        "its slicing is not declared yet (its fusion and LayerNorm would need the "
        "consumer's weights for the removed channels)"
    )
    paper_figures = {
        "resnet50": {"delta": 2_548_000, "gflops": None, "top1": None, "base_top1": None},
    }

    def __init__(
        self,
        reduction=16,
        min_channels=8,
        divisor=None,
        pooling="attention",
        fusion="add",
        epsilon=1e-5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.reduction = check_ratio("reduction", reduction)
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

    def _uniform_pooling(self, inputs):
        """Whether the context is a plain mean: `pooling="avg"`, or a single position."""
        return self.pooling == "avg" or (inputs.shape[1] == 1 and inputs.shape[2] == 1)

    def _attention_weights(self, inputs):
        """The softmax over the `H * W` positions, `(N, H * W)` in float32."""
        shape = ops.shape(inputs)
        logits = ops.cast(self.context_logits(inputs), "float32")
        logits = logits + ops.cast(self.context_bias, "float32")
        return ops.softmax(ops.reshape(logits, (-1, shape[1] * shape[2])), axis=-1)

    def _context(self, inputs):
        if self.pooling == "avg":
            return spatial_mean(inputs, keepdims=False)
        channels = inputs.shape[-1]
        if inputs.shape[1] == 1 and inputs.shape[2] == 1:
            # One position: its softmax weight is 1 (skipping a size-1 softmax warning).
            return ops.reshape(inputs, (-1, channels))
        shape = ops.shape(inputs)
        weights = ops.expand_dims(self._attention_weights(inputs), 1)  # (N, 1, H * W)
        values = ops.reshape(ops.cast(inputs, "float32"), (-1, shape[1] * shape[2], channels))
        context = ops.matmul(weights, values)  # (N, 1, C)
        return ops.cast(ops.reshape(context, (-1, channels)), self.compute_dtype)

    def _transform(self, inputs):
        """The transformed context `(N, C)`: added to `x`, or the logits of its gate."""
        t = self.reduce(self._context(inputs))
        return self.expand(ops.relu(self.norm(t)))

    def _channel_gate(self, inputs):
        """The gate of `fusion="mul"`, `(N, C)`."""
        return ops.sigmoid(self._transform(inputs))

    def call(self, inputs):
        if self.fusion == "add":
            return inputs + expand_hw(self._transform(inputs))
        return inputs * expand_hw(self._channel_gate(inputs))

    def gates(self, inputs, training=False):
        """`{"attention": (N, H, W, 1)}`, the weights of the positions in the context
        (the softmax over `H * W`; uniform, `1 / (H * W)`, with `pooling="avg"`); with
        `fusion="mul"` also `"channel"` `(N, C)`. With `fusion="add"` the output is
        `x + transform(sum_p attention_p * x_p)`."""
        if self._uniform_pooling(inputs):
            ones = ops.ones_like(ops.cast(inputs[..., :1], "float32"))
            attention = ones / spatial_size(inputs)
        else:
            shape = ops.shape(inputs)
            attention = ops.reshape(self._attention_weights(inputs), (-1, shape[1], shape[2], 1))
        gates = {"attention": ops.cast(attention, self.compute_dtype)}
        if self.fusion == "mul":
            gates["channel"] = self._channel_gate(inputs)
        return gates

    def inference_layer(self):
        """Returns a `GlobalContextInference` with the same weights (same outputs)."""
        if not self.built:
            raise ValueError("Build the layer (call it on an input) before converting it.")
        form = GlobalContextInference(
            **{k: v for k, v in self.get_config().items() if k in _ARGUMENTS},
            dtype=self.dtype_policy,
            name=f"{self.name}_inference",
        )
        form.build((None, None, None, self.expand.units))
        form.set_weights(self.get_weights())
        return form

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


_ARGUMENTS = ("reduction", "min_channels", "divisor", "pooling", "fusion", "epsilon")


@keras.saving.register_keras_serializable(package="keras_chanattn")
class GlobalContextInference(GlobalContext):
    """Inference form of `GlobalContext`, written for full-int8 TFLite on XNNPACK.

    Same arguments, weights and outputs as `GlobalContext` (built by its
    `inference_layer()`); only the graph differs:

    - the attention pooling is the softmax over the `H * W` logits (a vector, one value per
      position), then the elementwise product with `x` and a sum over H and W (MUL and
      SUM, which XNNPACK runs in int8; it does not delegate int8 BATCH_MATMUL). The inert
      logit bias is left out (the softmax is shift-invariant);
    - the LayerNorm is written out (MEAN, SUB, MUL; XNNPACK does not delegate int8
      SQUARED_DIFFERENCE);
    - fusion by addition is `x - (-t)`, with `-t` from the last convolution's negated
      weights, so that no ADD touches the (H, W, C) map. After a fine-tune `t` is small
      (the convolution starts at zero: about 1/1000 of the map's range on the fine-tuned
      ResNet-50), below the scale ratio XNNPACK's int8 SUB accepts; full-int8 export widens
      its calibrated range to that limit (`keras_chanattn.export.ranges`).

    In full int8 the SOFTMAX over positions, the LayerNorm's ADDs and its RSQRT stay in
    float (`export_float_ops`): XNNPACK does not delegate int8 SOFTMAX or RSQRT, and
    rejects an int8 ADD of a constant as small as `epsilon`. The float tensors are
    `(N, C / r)` vectors and the `(N, H * W)` attention weights; every op on the (H, W, C)
    map is int8.

    Args:
        reduction: reduction ratio of the transform bottleneck. Defaults to `16`.
        min_channels: smallest bottleneck width. Defaults to `8`, as `SqueezeExcite`.
        divisor: round the bottleneck width to a multiple of this. Defaults to `None`.
        pooling: `"attention"` or `"avg"`. Defaults to `"attention"`.
        fusion: `"add"` or `"mul"`. Defaults to `"add"`.
        epsilon: LayerNorm epsilon. Defaults to `1e-5`.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Input shape:
        4-D tensor `(batch, height, width, channels)`.

    Output shape:
        Same as the input.
    """

    # TFLite ops full-int8 export keeps in float (see keras_chanattn.export.verify).
    export_float_ops = ("SOFTMAX", "ADD", "RSQRT")

    def _attention_weights(self, inputs):
        shape = ops.shape(inputs)
        logits = ops.cast(self.context_logits(inputs), "float32")
        return ops.softmax(ops.reshape(logits, (-1, shape[1] * shape[2])), axis=-1)

    def _context(self, inputs):
        if self._uniform_pooling(inputs):
            return super()._context(inputs)
        shape = ops.shape(inputs)
        weights = ops.reshape(self._attention_weights(inputs), (-1, shape[1], shape[2], 1))
        context = ops.sum(ops.cast(inputs, "float32") * weights, axis=(1, 2))
        return ops.cast(context, self.compute_dtype)

    def _hidden(self, inputs):
        """The LayerNorm-ReLU bottleneck vector `(N, C / r)`, in float32."""
        z = ops.cast(self.reduce(self._context(inputs)), "float32")
        mean = ops.mean(z, axis=-1, keepdims=True)
        centred = z - mean
        var = ops.mean(centred * centred, axis=-1, keepdims=True)
        gamma, beta = (ops.cast(w, "float32") for w in (self.norm.gamma, self.norm.beta))
        return ops.relu(centred * ops.rsqrt(var + self.epsilon) * gamma + beta)

    def _expand_weights(self):
        return (ops.cast(w, "float32") for w in (self.expand.kernel, self.expand.bias))

    def _channel_gate(self, inputs):
        kernel, bias = self._expand_weights()
        gate = ops.sigmoid(ops.matmul(self._hidden(inputs), kernel) + bias)
        return ops.cast(gate, self.compute_dtype)

    def call(self, inputs):
        if self.fusion == "mul":
            return inputs * expand_hw(self._channel_gate(inputs))
        kernel, bias = self._expand_weights()
        negated = ops.matmul(self._hidden(inputs), -kernel) - bias
        return inputs - expand_hw(ops.cast(negated, self.compute_dtype))

    def inference_layer(self):
        return self
