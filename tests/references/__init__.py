"""Independent NumPy references of the attention blocks, one module per family.

Each module declares a `CASES` list of `LayerCase`; `tests/layer_cases.py` collects them.
"""

import dataclasses
from collections.abc import Callable


@dataclasses.dataclass
class LayerCase:
    """How to test one registered attention layer.

    Attributes:
        name: the registry name.
        reference: `reference(layer, x, training) -> np.ndarray`, an independent NumPy
            implementation of the SPEC.md formula that reads the layer's weights (as
            NumPy arrays) and nothing else of it. In training mode it uses batch
            statistics where the block carries BatchNorm.
        kwargs: constructor arguments for the small-shape tests.
        channels: channel count of the small-shape tests.
        params_256: `(kwargs, trainable, non_trainable)` counts at 256 channels.
        invalid: `(kwargs, message_regex)` pairs: constructor or build arguments that must
            raise `ValueError` matching the regex (at construction or at build on
            `channels` channels).
        extra_kwargs: other valid constructor arguments whose variants the parity test
            also runs (each dict a variant).
    """

    name: str
    reference: Callable
    kwargs: dict = dataclasses.field(default_factory=dict)
    channels: int = 16
    params_256: tuple = ({}, 0, 0)
    invalid: list = dataclasses.field(default_factory=list)
    extra_kwargs: list = dataclasses.field(default_factory=list)
