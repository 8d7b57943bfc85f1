"""NumPy references of CBAM (channel attention, spatial attention, both), from docs/blocks.md.

The spatial part follows the official PyTorch code step by step in NCHW (`ChannelPool`,
`Conv2d` with padding `(k - 1) // 2`, `BatchNorm2d`, sigmoid), with the layer's Keras
kernel mapped to PyTorch's `(out, in, kh, kw)` layout by the documented porting rule.
"""

import numpy as np

from tests.references import LayerCase
from tests.references.numpy_ops import GATES, relu, sigmoid, to_numpy


def torch_conv_weight(conv_gate):
    """The PyTorch `(1, 2, k, k)` weight a user would have ported into `conv_gate`:
    Keras `kernel = w.transpose(2, 3, 1, 0)`, so `w = kernel.transpose(3, 2, 0, 1)`."""
    return to_numpy(conv_gate.conv.kernel).transpose(3, 2, 0, 1)


def conv2d_nchw(z, w):
    """PyTorch `Conv2d(stride=1, padding=(k - 1) // 2, bias=False)`: cross-correlation."""
    k = w.shape[-1]
    p = (k - 1) // 2
    n, _, h, width = z.shape
    zp = np.pad(z, ((0, 0), (0, 0), (p, p), (p, p)))
    out = np.zeros((n, w.shape[0], h, width))
    for a in range(k):
        for b in range(k):
            out += np.einsum("nchw,oc->nohw", zp[:, :, a : a + h, b : b + width], w[:, :, a, b])
    return out


def batch_norm_nchw(y, bn, training):
    """PyTorch `BatchNorm2d` on NCHW: batch statistics over (N, H, W), biased variance."""
    if training:
        mean, var = y.mean(axis=(0, 2, 3)), y.var(axis=(0, 2, 3))
    else:
        mean, var = to_numpy(bn.moving_mean), to_numpy(bn.moving_variance)
    view = (1, -1, 1, 1)
    normed = (y - mean.reshape(view)) / np.sqrt(var.reshape(view) + bn.epsilon)
    return normed * to_numpy(bn.gamma).reshape(view) + to_numpy(bn.beta).reshape(view)


def attention_gate_nchw(x, conv_gate, training):
    """The reference's `SpatialGate` / `AttentionGate` on an NCHW tensor: pool over dim 1."""
    z = np.concatenate([x.max(axis=1, keepdims=True), x.mean(axis=1, keepdims=True)], axis=1)
    y = conv2d_nchw(z, torch_conv_weight(conv_gate))
    y = batch_norm_nchw(y, conv_gate.bn, training)
    return x * sigmoid(y)


def channel_attention(layer, x, training=False):
    def mlp(s):
        h = relu(s @ to_numpy(layer.reduce.kernel) + to_numpy(layer.reduce.bias))
        return h @ to_numpy(layer.expand.kernel) + to_numpy(layer.expand.bias)

    s = mlp(x.mean(axis=(1, 2))) + mlp(x.max(axis=(1, 2)))
    return x * GATES[layer.gate_activation](s)[:, None, None, :]


def spatial_attention(layer, x, training=False):
    out = attention_gate_nchw(x.transpose(0, 3, 1, 2), layer.gate, training)
    return out.transpose(0, 2, 3, 1)


def cbam(layer, x, training=False):
    y = channel_attention(layer.channel_attention, x, training)
    return spatial_attention(layer.spatial_attention, y, training)


def spatial_gate_shapes(layer, input_shape):
    n, h, w, _ = input_shape
    return {"spatial": (n, h, w, 1)}


def cbam_gate_shapes(layer, input_shape):
    n, h, w, c = input_shape
    return {"channel": (n, c), "spatial": (n, h, w, 1)}


CHANNEL_MLP_256 = 256 * 16 + 16 + 16 * 256 + 256  # 8,464
SPATIAL_256 = 2 * 7 * 7 + 2  # conv 98 + BN gamma, beta

CASES = [
    LayerCase(
        name="channel_attention",
        sliceable=True,
        reference=channel_attention,
        kwargs={"reduction": 4},
        params_256=({}, CHANNEL_MLP_256, 0),
        invalid=[
            ({"reduction": 0}, "reduction"),
            ({"min_channels": 0}, "min_channels"),
            ({"divisor": 0}, "divisor"),
            ({"gate_activation": "softmax"}, "gate_activation"),
        ],
        extra_kwargs=[
            {"reduction": 4, "gate_activation": "hard_sigmoid"},
            {"reduction": 3, "divisor": 8},
            {"reduction": 16, "min_channels": 4},
        ],
    ),
    LayerCase(
        name="spatial_attention",
        sliceable=True,
        reference=spatial_attention,
        params_256=({}, SPATIAL_256, 2),
        invalid=[
            ({"kernel_size": 4}, "odd"),
            ({"kernel_size": 0}, "kernel_size"),
            ({"bn_momentum": 1.5}, "bn_momentum"),
            ({"bn_epsilon": 0}, "bn_epsilon"),
        ],
        extra_kwargs=[{"kernel_size": 3}, {"kernel_size": 1}, {"bn_epsilon": 1e-3}],
        gate_shapes=spatial_gate_shapes,
    ),
    LayerCase(
        name="cbam",
        sliceable=True,
        reference=cbam,
        kwargs={"reduction": 4},
        params_256=({}, CHANNEL_MLP_256 + SPATIAL_256, 2),
        invalid=[
            ({"reduction": 0}, "reduction"),
            ({"gate_activation": "softmax"}, "gate_activation"),
            ({"kernel_size": 6}, "odd"),
            ({"bn_momentum": -0.1}, "bn_momentum"),
            ({"bn_epsilon": -1.0}, "bn_epsilon"),
        ],
        extra_kwargs=[
            {"kernel_size": 3, "gate_activation": "tanh"},
            {"reduction": 2, "divisor": 4, "bn_epsilon": 1e-3},
        ],
        gate_shapes=cbam_gate_shapes,
    ),
]
