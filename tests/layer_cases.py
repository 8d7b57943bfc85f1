"""The table the registry-wide layer suite reads: one `LayerCase` per registered attention.

Each family's NumPy reference lives in `tests/references/<family>.py`, which also declares
its cases in a module-level `CASES` list. The suite fails for a registered name that has
no case here, so a new family cannot skip the checks.
"""

import importlib
import pkgutil

from keras_chanattn.testing import LayerCase, randomize_weights  # noqa: F401  (re-exported)
from tests import references


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
