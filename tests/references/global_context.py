"""NumPy reference of the Global Context block (GCNet), from docs/blocks.md."""

import numpy as np

from tests.references import LayerCase
from tests.references.numpy_ops import relu, sigmoid, to_numpy


def _dense(layer, z):
    return z @ to_numpy(layer.kernel) + to_numpy(layer.bias)


def layer_norm(z, norm):
    mean = z.mean(axis=-1, keepdims=True)
    var = z.var(axis=-1, keepdims=True)
    return (z - mean) / np.sqrt(var + norm.epsilon) * to_numpy(norm.gamma) + to_numpy(norm.beta)


def transform(layer, context):
    """The bottleneck transform of the context vector `(N, C)`."""
    return _dense(layer.expand, relu(layer_norm(_dense(layer.reduce, context), layer.norm)))


def global_context(layer, x, training=False):
    n, h, w, c = x.shape
    if layer.pooling == "avg":
        context = x.mean(axis=(1, 2))
    else:
        logits = x @ to_numpy(layer.context_logits.kernel) + to_numpy(layer.context_bias)
        logits = logits.reshape(n, h * w)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        context = np.einsum("np,npc->nc", p, x.reshape(n, h * w, c))
    t = transform(layer, context)[:, None, None, :]
    return x + t if layer.fusion == "add" else x * sigmoid(t)


def gc_gate_shapes(layer, input_shape):
    n, h, w, c = input_shape
    shapes = {"attention": (n, h, w, 1)}
    if layer.fusion == "mul":
        shapes["channel"] = (n, c)
    return shapes


def gc_combine_gates(layer, x, gates):
    """`x + transform(sum_p attention_p * x_p)`; with `fusion="mul"`, `x * channel`, whose
    `channel` must be `sigmoid(transform(context))` of that attention's context."""
    context = np.einsum("nhw,nhwc->nc", gates["attention"][..., 0], x)
    t = transform(layer, context)
    if layer.fusion == "add":
        return x + t[:, None, None, :]
    np.testing.assert_allclose(gates["channel"], sigmoid(t), atol=1e-5)
    return x * gates["channel"][:, None, None, :]


def params_per_block(channels, hidden):
    """Logit conv C -> 1 (bias), conv C -> P (bias), LayerNorm (2P), conv P -> C (bias)."""
    return (
        (channels + 1) + (channels * hidden + hidden) + 2 * hidden + (hidden * channels + channels)
    )


CASES = [
    LayerCase(
        name="gc",
        reference=global_context,
        kwargs={"reduction": 4},
        # The logit bias (one per block) is non-trainable: the softmax ignores it.
        params_256=({}, params_per_block(256, 16) - 1, 1),
        invalid=[
            ({"reduction": 0}, "reduction"),
            ({"min_channels": 0}, "min_channels"),
            ({"divisor": 0}, "divisor"),
            ({"pooling": "max"}, "pooling"),
            ({"fusion": "concat"}, "fusion"),
            ({"epsilon": 0}, "epsilon"),
        ],
        extra_kwargs=[
            {"fusion": "mul"},
            {"pooling": "avg"},
            {"pooling": "avg", "fusion": "mul"},
            {"reduction": 3, "divisor": 8},
        ],
        export_variants={
            "mul": {"reduction": 4, "fusion": "mul"},
            "avg": {"reduction": 4, "pooling": "avg"},
        },
        gate_shapes=gc_gate_shapes,
        combine_gates=gc_combine_gates,
    ),
]
