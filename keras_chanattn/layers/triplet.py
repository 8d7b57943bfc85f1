"""Rotate to Attend: Convolutional Triplet Attention Module (Misra et al., WACV 2021): https://arxiv.org/abs/2010.03045"""

import keras
from keras import ops

from keras_chanattn.layers.cbam import (
    REFERENCE_BN_EPSILON,
    REFERENCE_BN_MOMENTUM,
    ConvGate,
    check_odd_kernel_size,
    spatial_arguments,
    z_pool_maps,
)
from keras_chanattn.layers.common import AttentionLayer, channels_from_shape, check_bool
from keras_chanattn.layers.registry import register_attention

BRANCHES = ("cw", "hc", "hw")


def triplet_branch_gates(inputs, cw, hc, hw=None, training=None):
    """Each branch's gate of Triplet Attention on an NHWC tensor, shaped to broadcast to it.

    Each `ConvGate` sees its plane with the reference's orientation (rows, cols): `cw`
    the (C, W) plane pooled over H, `hc` the (H, C) plane pooled over W, `hw` the (H, W)
    plane pooled over C. Returns `{"cw": (N, 1, W, C), "hc": (N, H, 1, C),
    "hw": (N, H, W, 1)}` (no `"hw"` when `hw` is `None`).
    """
    # The max and mean maps stay apart (`z_pool_maps`): joined, full int8 gives them one scale.
    # (C, W) plane: pool over H -> (N, W, C, 1) maps, rows over C as the reference's (N, H, C, W).
    maps = [ops.transpose(m, (0, 2, 1, 3)) for m in z_pool_maps(inputs, axis=1)]
    gates = {"cw": ops.transpose(cw(maps, training=training), (0, 3, 2, 1))}  # -> (N, 1, W, C)
    # (H, C) plane: pool over W -> (N, H, C, 1) maps, rows over H as the reference's (N, W, H, C).
    gates["hc"] = ops.transpose(hc(z_pool_maps(inputs, axis=2), training=training), (0, 1, 3, 2))
    if hw is not None:
        # (H, W) plane: pool over C -> (N, H, W, 1) maps, CBAM's spatial gate.
        gates["hw"] = hw(z_pool_maps(inputs, axis=3), training=training)
    return gates


def triplet_gates(inputs, cw, hc, hw=None, training=None):
    """Mean gate of Triplet Attention's branches on an NHWC tensor, broadcastable to it.

    Returns `(g_cw + g_hc + g_hw) / 3` (or the mean of the first two when `hw` is `None`)
    of `triplet_branch_gates`; `x * gates` equals the reference's mean of `x * g` per branch.
    """
    gates = triplet_branch_gates(inputs, cw, hc, hw, training)
    total = gates["cw"] + gates["hc"]  # (N, H, W, C)
    if hw is None:
        return total * 0.5
    return (total + gates["hw"]) * (1.0 / 3.0)


def folded_branch_gates(inputs, cw, hc, hw=None):
    """`triplet_branch_gates` of folded `ConvGate`s, with no transpose and blocked convolutions.

    The (C, W) plane is convolved as the (W, C) plane with the kernel transposed (the same
    values), so its pooled maps keep the input's order; every branch's convolution runs on
    blocks of columns (`ConvGate.blocked`). Each gate `(N, W, C, 1)`, `(N, H, C, 1)` is
    then a reshape of the broadcastable one.
    """
    shape = ops.shape(inputs)
    channels = inputs.shape[-1]
    gates = {
        "cw": ops.reshape(
            cw.blocked(z_pool_maps(inputs, axis=1), transposed=True), (-1, 1, shape[2], channels)
        ),
        "hc": ops.reshape(hc.blocked(z_pool_maps(inputs, axis=2)), (-1, shape[1], 1, channels)),
    }
    if hw is not None:
        gates["hw"] = hw.blocked(z_pool_maps(inputs, axis=3))
    return gates


@register_attention("triplet")
class TripletAttention(AttentionLayer):
    """Triplet Attention: three spatial gates, one per pair of the axes (C, H, W).

    Each branch Z-pools `x` over one axis (`[max, mean]`), applies a `k x k` convolution
    `2 -> 1` without bias, BatchNorm and a sigmoid, and gates `x` with the result: on the
    (C, W) plane (pooled over H), the (H, C) plane (pooled over W) and the (H, W) plane
    (pooled over C). The output is the mean of the three gated tensors. The rotations of
    the reference are transposes of the small pooled maps here, so the input stays NHWC
    and height and width may be unknown.

    `inference_layer()` returns a `FoldedTripletAttention` with each BatchNorm folded into
    its convolution (same outputs in inference mode).

    Porting the reference's weights (`TripletAttention` of the official code, with gates
    `cw`, `hc`, `hw`): for each gate `b`, `layer.<b>.conv.kernel = w.transpose(2, 3, 1, 0)`
    for `<b>.conv.conv.weight` `w` of shape `(1, 2, k, k)`, and `layer.<b>.bn` gamma, beta,
    moving mean and variance from `<b>.conv.bn` `weight`, `bias`, `running_mean`,
    `running_var`. The convolution rows run over C, H, H and its columns over W, C, W in
    the three branches, as in the reference's permuted tensors.

    Paper: Misra, Nalamada, Arasanipalai, Hou, "Rotate to Attend: Convolutional Triplet
    Attention Module", WACV 2021, https://arxiv.org/abs/2010.03045

    Args:
        kernel_size: odd size of the square convolution kernel of each branch. Defaults
            to `7`.
        no_spatial: drop the (H, W) branch and average the other two. Defaults to
            `False`.
        bn_momentum: BatchNorm moving-average momentum, Keras convention (PyTorch's 0.01
            is Keras' 0.99). Defaults to `0.99` (the reference's).
        bn_epsilon: BatchNorm epsilon. Defaults to `1e-5` (the reference's).
        bn_zero_gamma: initialise every BatchNorm scale at 0, so that the block starts as
            `x * 0.5`. Defaults to `False` (the reference module's initialisation).
        synchronized: synchronise the BatchNorm statistics across replicas under a
            `tf.distribute` strategy. Defaults to `False`.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Input shape:
        4-D tensor `(batch, height, width, channels)`; height and width may be unknown.

    Output shape:
        Same as the input.

    Example:

    >>> x = keras.Input((None, None, 64))
    >>> y = TripletAttention(kernel_size=7)(x)
    """

    slice_refusal = (
        "two of its branches convolve across the channel axis, so removing a channel "
        "changes its neighbours' gates"
    )
    paper_figures = {
        "resnet50": {"delta": 4_800, "gflops": 4.17, "top1": 77.48, "base_top1": None},
    }

    def __init__(
        self,
        kernel_size=7,
        no_spatial=False,
        bn_momentum=REFERENCE_BN_MOMENTUM,
        bn_epsilon=REFERENCE_BN_EPSILON,
        bn_zero_gamma=False,
        synchronized=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        arguments = spatial_arguments(
            kernel_size, bn_momentum, bn_epsilon, bn_zero_gamma, synchronized
        )
        self.kernel_size = arguments["kernel_size"]
        self.no_spatial = check_bool("no_spatial", no_spatial)
        self.bn_momentum = arguments["bn_momentum"]
        self.bn_epsilon = arguments["bn_epsilon"]
        self.bn_zero_gamma = arguments["bn_zero_gamma"]
        self.synchronized = arguments["synchronized"]

    @property
    def branches(self):
        """Names of the branches in use, in the reference's order: `cw`, `hc` (, `hw`)."""
        return BRANCHES[:2] if self.no_spatial else BRANCHES

    def build(self, input_shape):
        self.channels = channels_from_shape(self, input_shape)
        self.hw = None
        for branch in self.branches:
            gate = ConvGate(
                self.kernel_size,
                bn_momentum=self.bn_momentum,
                bn_epsilon=self.bn_epsilon,
                bn_zero_gamma=self.bn_zero_gamma,
                synchronized=self.synchronized,
                dtype=self.dtype_policy,
                name=branch,
            )
            gate.build((None, None, None, 2))
            setattr(self, branch, gate)

    def call(self, inputs, training=None):
        return inputs * triplet_gates(inputs, self.cw, self.hc, self.hw, training=training)

    def gates(self, inputs, training=False):
        """`{"cw": (N, 1, W, C), "hc": (N, H, 1, C), "hw": (N, H, W, 1)}`, each branch's
        gate shaped to broadcast to `x` (no `"hw"` with `no_spatial`); the output is
        their mean times `x`."""
        return triplet_branch_gates(inputs, self.cw, self.hc, self.hw, training=training)

    def inference_layer(self):
        """Returns a `FoldedTripletAttention` with each BatchNorm folded into its conv."""
        if not self.built:
            raise ValueError("Build the layer (call it on an input) before folding it.")
        folded = FoldedTripletAttention(
            self.kernel_size,
            self.no_spatial,
            dtype=self.dtype_policy,
            name=f"{self.name}_folded",
        )
        folded.build((None, None, None, self.channels))
        for branch in self.branches:
            getattr(folded, branch).set_weights(getattr(self, branch).folded_weights())
        return folded

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "kernel_size": self.kernel_size,
                "no_spatial": self.no_spatial,
                "bn_momentum": self.bn_momentum,
                "bn_epsilon": self.bn_epsilon,
                "bn_zero_gamma": self.bn_zero_gamma,
                "synchronized": self.synchronized,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_chanattn")
class FoldedTripletAttention(AttentionLayer):
    """Inference form of `TripletAttention`: each BatchNorm folded into its convolution.

    The three (or two) branch gates are `sigmoid(conv(z) + b)`. Built by
    `TripletAttention.inference_layer()`; it computes the same outputs as the original in
    inference mode, with no BatchNorm op, no transpose and each convolution on blocks of
    columns (`folded_branch_gates`): in full int8 on XNNPACK the one-channel convolutions
    of the (C, W) and (H, C) planes were most of the block's time.

    Args:
        kernel_size: odd size of the square convolution kernel of each branch. Defaults
            to `7`.
        no_spatial: drop the (H, W) branch and average the other two. Defaults to
            `False`.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Input shape:
        4-D tensor `(batch, height, width, channels)`.

    Output shape:
        Same as the input.
    """

    def __init__(self, kernel_size=7, no_spatial=False, **kwargs):
        super().__init__(**kwargs)
        self.kernel_size = check_odd_kernel_size(kernel_size)
        self.no_spatial = check_bool("no_spatial", no_spatial)

    def build(self, input_shape):
        channels_from_shape(self, input_shape)
        self.hw = None
        for branch in BRANCHES[:2] if self.no_spatial else BRANCHES:
            gate = ConvGate(
                self.kernel_size, batch_norm=False, dtype=self.dtype_policy, name=branch
            )
            gate.build((None, None, None, 2))
            setattr(self, branch, gate)

    def call(self, inputs):
        gates = folded_branch_gates(inputs, self.cw, self.hc, self.hw)
        # The mean's factor scales the small gate maps, so that only the two ADDs building
        # the full map and the product with `x` touch (H, W, C).
        factor = 1.0 / len(gates)
        total = gates["cw"] * factor + gates["hc"] * factor
        if "hw" in gates:
            total = total + gates["hw"] * factor
        return inputs * total

    def gates(self, inputs, training=False):
        """`{"cw": (N, 1, W, C), "hc": (N, H, 1, C), "hw": (N, H, W, 1)}`, as
        `TripletAttention.gates`."""
        return folded_branch_gates(inputs, self.cw, self.hc, self.hw)

    def get_config(self):
        config = super().get_config()
        config.update({"kernel_size": self.kernel_size, "no_spatial": self.no_spatial})
        return config
