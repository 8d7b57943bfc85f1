"""NumPy references of the seed blocks (SE, SRM, ECA, Shuffle Attention), from docs/blocks.md."""

import numpy as np

from tests.references import LayerCase
from tests.references.numpy_ops import GATES, batch_norm, relu, sigmoid, to_numpy


def squeeze_excite(layer, x, training=False):
    s = x.max(axis=(1, 2)) if layer.pooling == "max" else x.mean(axis=(1, 2))
    h = relu(s @ to_numpy(layer.reduce.kernel) + to_numpy(layer.reduce.bias))
    s = GATES[layer.gate_activation](
        h @ to_numpy(layer.expand.kernel) + to_numpy(layer.expand.bias)
    )
    return x * s[:, None, None, :]


def style_recalibration(layer, x, training=False):
    n = x.shape[1] * x.shape[2]
    mean = x.mean(axis=(1, 2))
    ddof = 1 if (layer.unbiased and n > 1) else 0
    std = np.sqrt(x.var(axis=(1, 2), ddof=ddof) + layer.epsilon)
    w = to_numpy(layer.cfc)
    z = w[:, 0] * mean + w[:, 1] * std
    g = sigmoid(batch_norm(z, layer.bn, training))
    return x * g[:, None, None, :]


def efficient_channel_attention(layer, x, training=False):
    w = to_numpy(layer.kernel).reshape(-1)
    k = w.size
    s = np.pad(x.mean(axis=(1, 2)), ((0, 0), (k // 2, k // 2)))
    channels = x.shape[-1]
    y = sum(w[j] * s[:, j : j + channels] for j in range(k))
    return x * GATES[layer.gate_activation](y)[:, None, None, :]


def shuffle_attention(layer, x, training=False):
    """Follows the PyTorch reference step by step, in NCHW."""
    groups = layer.groups
    b, h, w, c = x.shape
    t = x.transpose(0, 3, 1, 2).reshape(b * groups, c // groups, h, w)
    x0, x1 = np.split(t, 2, axis=1)
    p = {name: to_numpy(getattr(layer, name))[None, :, None, None] for name in (
        "channel_weight", "channel_bias", "spatial_weight", "spatial_bias",
        "norm_gamma", "norm_beta",
    )}  # fmt: skip
    xn = x0 * sigmoid(p["channel_weight"] * x0.mean(axis=(2, 3), keepdims=True) + p["channel_bias"])
    mu = x1.mean(axis=(2, 3), keepdims=True)
    var = x1.var(axis=(2, 3), keepdims=True)
    gn = (x1 - mu) / np.sqrt(var + layer.epsilon) * p["norm_gamma"] + p["norm_beta"]
    xs = x1 * sigmoid(p["spatial_weight"] * gn + p["spatial_bias"])
    out = np.concatenate([xn, xs], axis=1).reshape(b, c, h, w)
    out = out.reshape(b, 2, c // 2, h, w).transpose(0, 2, 1, 3, 4).reshape(b, c, h, w)
    return out.transpose(0, 2, 3, 1)


def sa_gate_shapes(layer, input_shape):
    n, h, w, c = input_shape
    return {"channel": (n, c // 2), "spatial_branch": (n, h, w, c // 2)}


def sa_combine_gates(layer, x, gates):
    """Each group's channel half times `"channel"`, its spatial half times
    `"spatial_branch"` (both over the branch's channels in input order), then the shuffle."""
    n, h, w, c = x.shape
    half = c // (2 * layer.groups)
    gate = np.empty((n, h, w, layer.groups, 2, half))
    gate[..., 0, :] = gates["channel"].reshape(n, 1, 1, layer.groups, half)
    gate[..., 1, :] = gates["spatial_branch"].reshape(n, h, w, layer.groups, half)
    out = x * gate.reshape(n, h, w, c)
    # Channel shuffle with 2 groups: channel k * C/2 + i moves to 2 * i + k.
    return out.reshape(n, h, w, 2, c // 2).transpose(0, 1, 2, 4, 3).reshape(n, h, w, c)


CASES = [
    LayerCase(
        name="se",
        sliceable=True,
        reference=squeeze_excite,
        kwargs={"reduction": 4},
        params_256=({}, 2 * 256 * 16 + 16 + 256, 0),
        invalid=[
            ({"reduction": 0}, "reduction"),
            ({"min_channels": 0}, "min_channels"),
            ({"divisor": 0}, "divisor"),
            ({"pooling": "median"}, "pooling"),
            ({"gate_activation": "softmax"}, "gate_activation"),
            ({"activation": len}, "by name"),
        ],
        extra_kwargs=[
            {"reduction": 4, "pooling": "max"},
            {"reduction": 4, "gate_activation": "hard_sigmoid"},
            {"reduction": 4, "gate_activation": "tanh"},
            {"reduction": 3, "divisor": 8},
        ],
    ),
    LayerCase(
        name="srm",
        sliceable=True,
        reference=style_recalibration,
        params_256=({}, 2 * 256 + 2 * 256, 2 * 256),
        invalid=[
            ({"epsilon": -1.0}, "epsilon"),
            ({"bn_momentum": 1.5}, "bn_momentum"),
            ({"bn_epsilon": 0}, "bn_epsilon"),
        ],
        extra_kwargs=[{"unbiased": False}, {"epsilon": 1e-3, "scale_statistics": True}],
        # After a ReLU (the export suite's classifier), the default inference form, without
        # channel scaling, loses top-1 agreement in full int8 (test_export's
        # test_srm_after_relu_needs_channel_scaling_and_says_so).
        export_kwargs={"scale_statistics": True},
    ),
    LayerCase(
        name="eca",
        reference=efficient_channel_attention,
        params_256=({}, 5, 0),
        invalid=[
            ({"kernel_size": 4}, "odd"),
            ({"kernel_size": 0}, "kernel_size"),
            ({"gamma": 0}, "gamma"),
        ],
        extra_kwargs=[{"kernel_size": 5}, {"kernel_size": 1}, {"gamma": 1, "b": 2}],
    ),
    LayerCase(
        name="sa",
        reference=shuffle_attention,
        kwargs={"groups": 2},
        params_256=({"groups": 64}, 3 * 256 // 64, 0),
        invalid=[
            ({"groups": 0}, "groups"),
            ({"groups": 3}, r"divisible by 2 \* groups"),
            ({"epsilon": 0}, "epsilon"),
        ],
        extra_kwargs=[{"groups": 1}, {"groups": 8}],
        gate_shapes=sa_gate_shapes,
        combine_gates=sa_combine_gates,
    ),
]
