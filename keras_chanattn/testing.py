"""Helpers that the test suite and the benchmarks share: layer test cases, random weights."""

import dataclasses
from collections.abc import Callable

import numpy as np


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
