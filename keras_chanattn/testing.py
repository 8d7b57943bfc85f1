"""Helpers that the test suite and the benchmarks share: layer test cases, random weights."""

import dataclasses
from collections.abc import Callable

import numpy as np


def multiply_gates(layer, x, gates):
    """NumPy: `x` times each gate, for blocks whose output is their input times their gates.

    Knows the shared gate names (see `AttentionLayer`): `"channel"` `(N, C)`, broadcast over
    the positions, and `"spatial"` `(N, H, W, G)`, map `g` on the `g`-th of `G` groups of
    consecutive channels. Any other name raises: such a block declares its own
    `combine_gates`.
    """
    out = np.asarray(x, np.float64)
    n, h, w, c = out.shape
    for name, gate in gates.items():
        gate = np.asarray(gate, np.float64)
        if name == "channel":
            out = out * gate[:, None, None, :]
        elif name == "spatial":
            groups = gate.shape[-1]
            out = (out.reshape(n, h, w, groups, c // groups) * gate[..., None]).reshape(out.shape)
        else:
            raise ValueError(
                f"multiply_gates knows the gates 'channel' and 'spatial', got {name!r}: declare "
                "the block's combine_gates on its LayerCase."
            )
    return out


def channel_gate_shapes(layer, input_shape):
    """`{"channel": (N, C)}`: the gate shapes of a block with one per-channel gate."""
    n, _, _, c = input_shape
    return {"channel": (n, c)}


@dataclasses.dataclass
class LayerCase:
    """How to test one registered attention layer.

    Attributes:
        name: the registry name.
        reference: `reference(layer, x, training) -> np.ndarray`, an independent NumPy
            implementation of the block's formula (`docs/blocks.md`) that reads the
            layer's weights (as NumPy arrays) and nothing else of it. In training mode it
            uses batch statistics where the block carries BatchNorm.
        kwargs: constructor arguments for the small-shape tests.
        channels: channel count of the small-shape tests.
        params_256: `(kwargs, trainable, non_trainable)` counts at 256 channels.
        invalid: `(kwargs, message_regex)` pairs: constructor or build arguments that must
            raise `ValueError` matching the regex (at construction or at build on
            `channels` channels).
        extra_kwargs: other valid constructor arguments whose variants the parity test
            also runs (each dict a variant).
        export_kwargs: arguments over `kwargs` for the export suite's small classifier
            (the block after a ReLU, 16 channels).
        export_variants: `{label: kwargs}`, other graphs of the block (complete
            constructor arguments) that the export suite also converts and verifies, as
            `<name>-<label>`.
        known_export_failures: `{quantization: reason}`, the TFLite formats whose
            verified export the block is known to fail, and why; the export suite expects
            those failures (strict), so a fix makes it fail until the entry is removed.
        gate_shapes: `gate_shapes(layer, input_shape) -> {name: shape}`, the names and
            shapes `layer.gates` returns. Defaults to one `"channel"` gate `(N, C)`.
        combine_gates: `combine_gates(layer, x, gates) -> np.ndarray`, the block's output
            from its input and its gates (NumPy arrays), in NumPy, independently of the
            layer's code (it may read the layer's weights). Defaults to `multiply_gates`.
        sliceable: whether the block declares `slice_channels` (pruning can remove its
            channels); the slicing suite checks a slice against `reference` on the input
            with the removed channels zeroed, and that the others refuse clearly.
            Defaults to `False`.
    """

    name: str
    reference: Callable
    kwargs: dict = dataclasses.field(default_factory=dict)
    channels: int = 16
    params_256: tuple = ({}, 0, 0)
    invalid: list = dataclasses.field(default_factory=list)
    extra_kwargs: list = dataclasses.field(default_factory=list)
    export_kwargs: dict = dataclasses.field(default_factory=dict)
    export_variants: dict = dataclasses.field(default_factory=dict)
    known_export_failures: dict = dataclasses.field(default_factory=dict)
    gate_shapes: Callable = channel_gate_shapes
    combine_gates: Callable = multiply_gates
    sliceable: bool = False


def randomize_weights(layer, seed=0, scale=0.5, rng=None):
    """Sets every weight of a built layer to random values (positive for variances).

    Zero- and one-initialised weights would make parity tests blind to terms that
    multiply them, so tests and benchmarks randomise everything first.
    """
    rng = rng or np.random.default_rng(seed)
    for variable in layer.weights:
        shape = tuple(variable.shape)
        if "variance" in variable.path:
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = rng.normal(0.0, scale, shape)
        variable.assign(value.astype(variable.dtype))
