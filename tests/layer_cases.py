"""The table the registry-wide layer suite reads: one `LayerCase` per registered attention.

Each family's NumPy reference lives in `tests/references/<family>.py`, which also declares
its cases in a module-level `CASES` list. The suite fails for a registered name that has
no case here, so a new family cannot skip the checks.
"""

import importlib
import pkgutil

import numpy as np

from tests import references
from tests.references import LayerCase  # noqa: F401  (re-exported for the suite)


def _collect():
    cases = {}
    for info in pkgutil.iter_modules(references.__path__):
        module = importlib.import_module(f"{references.__name__}.{info.name}")
        for case in getattr(module, "CASES", []):
            if case.name in cases:
                raise ValueError(f"Two test cases for attention {case.name!r}.")
            cases[case.name] = case
    return cases


CASES = _collect()


def randomize_weights(layer, seed=0, scale=0.5, rng=None):
    """Sets every weight of a built layer to random values (positive for variances).

    Zero- and one-initialised weights would make parity tests blind to terms that
    multiply them, so the suite randomises everything first.
    """
    rng = rng or np.random.default_rng(seed)
    for variable in layer.weights:
        shape = tuple(variable.shape)
        if "variance" in variable.path:
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = rng.normal(0.0, scale, shape)
        variable.assign(value.astype(variable.dtype))
