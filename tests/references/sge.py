"""NumPy reference of Spatial Group-wise Enhance (docs/blocks.md), in the reference's NCHW steps."""

from tests.references import LayerCase
from tests.references.numpy_ops import sigmoid, to_numpy


def spatial_group_enhance(layer, x, training=False):
    groups = layer.groups
    b, h, w, c = x.shape
    t = x.transpose(0, 3, 1, 2).reshape(b * groups, c // groups, h, w)
    xn = (t * t.mean(axis=(2, 3), keepdims=True)).sum(axis=1)  # (B*G, H, W)
    xn = xn.reshape(b * groups, h * w)
    xn = xn - xn.mean(axis=1, keepdims=True)
    # torch's unbiased std is NaN for one position; the layer defines it as 0 there.
    ddof = 1 if (layer.unbiased and h * w > 1) else 0
    xn = xn / (xn.std(axis=1, ddof=ddof, keepdims=True) + layer.epsilon)
    xn = xn.reshape(b, groups, h, w)
    xn = (
        xn * to_numpy(layer.weight)[None, :, None, None] + to_numpy(layer.bias)[None, :, None, None]
    )
    out = t * sigmoid(xn.reshape(b * groups, 1, h, w))
    return out.reshape(b, c, h, w).transpose(0, 2, 3, 1)


def sge_gate_shapes(layer, input_shape):
    """One map per group; the default `multiply_gates` applies map g to group g's channels."""
    n, h, w, _ = input_shape
    return {"spatial": (n, h, w, layer.groups)}


CASES = [
    LayerCase(
        name="sge",
        reference=spatial_group_enhance,
        kwargs={"groups": 4},
        params_256=({"groups": 64}, 2 * 64, 0),
        invalid=[
            ({"groups": 0}, "groups"),
            ({"groups": 3}, "divisible by groups"),
            ({"epsilon": 0}, "epsilon"),
        ],
        extra_kwargs=[{"groups": 1}, {"groups": 16}, {"unbiased": False}, {"epsilon": 1e-3}],
        gate_shapes=sge_gate_shapes,
    ),
]
