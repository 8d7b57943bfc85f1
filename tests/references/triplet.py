"""NumPy reference of Triplet Attention, from docs/blocks.md.

Follows the official PyTorch `TripletAttention.forward` step by step in NCHW: the same
permutes (NumPy's `transpose` is PyTorch's `permute`), one `AttentionGate` per rotated
tensor, and the mean of the branches. Nothing here mirrors the layer's NHWC code.
"""

from tests.references import LayerCase
from tests.references.cbam import attention_gate_nchw


def triplet_attention(layer, x, training=False):
    x = x.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    x_perm1 = x.transpose(0, 2, 1, 3)  # (N, H, C, W)
    x_out11 = attention_gate_nchw(x_perm1, layer.cw, training).transpose(0, 2, 1, 3)
    x_perm2 = x.transpose(0, 3, 2, 1)  # (N, W, H, C)
    x_out21 = attention_gate_nchw(x_perm2, layer.hc, training).transpose(0, 3, 2, 1)
    if layer.no_spatial:
        out = 1 / 2 * (x_out11 + x_out21)
    else:
        out = 1 / 3 * (attention_gate_nchw(x, layer.hw, training) + x_out11 + x_out21)
    return out.transpose(0, 2, 3, 1)


def triplet_gate_shapes(layer, input_shape):
    n, h, w, c = input_shape
    shapes = {"cw": (n, 1, w, c), "hc": (n, h, 1, c), "hw": (n, h, w, 1)}
    if layer.no_spatial:
        del shapes["hw"]
    return shapes


def triplet_combine_gates(layer, x, gates):
    """The mean over the branches of `x` times the branch's gate (broadcast)."""
    return sum(x * gate for gate in gates.values()) / len(gates)


CASES = [
    LayerCase(
        name="triplet",
        reference=triplet_attention,
        params_256=({}, 3 * (2 * 7 * 7 + 2), 3 * 2),
        invalid=[
            ({"kernel_size": 2}, "odd"),
            ({"kernel_size": "7"}, "kernel_size"),
            ({"bn_momentum": 1.0}, "bn_momentum"),
            ({"bn_epsilon": -1.0}, "bn_epsilon"),
        ],
        extra_kwargs=[
            {"no_spatial": True},
            {"kernel_size": 3},
            {"kernel_size": 5, "no_spatial": True, "bn_epsilon": 1e-3},
        ],
        export_variants={"no-spatial": {"no_spatial": True}},
        gate_shapes=triplet_gate_shapes,
        combine_gates=triplet_combine_gates,
    ),
]
