"""The table the registry-wide suites read: one `LayerCase` per registered attention.

Each family's NumPy reference lives in `tests/references/<family>.py`, which also declares
its cases in a module-level `CASES` list. The layer suite fails for a registered name that
has no case here, so a new family cannot skip the checks. The export suite's per-block
lists (argument variants, int8 forms, known failures) are derived from the cases here.
"""

import importlib
import pkgutil

import keras_chanattn
from keras_chanattn.testing import LayerCase, randomize_weights  # noqa: F401  (re-exported)
from tests import references


def collect_cases(package=references):
    """`{name: LayerCase}` from the `CASES` list of every module of `package`."""
    cases = {}
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for case in getattr(module, "CASES", []):
            if case.name in cases:
                raise ValueError(f"Two test cases for attention {case.name!r}.")
            cases[case.name] = case
    return cases


CASES = collect_cases()


def case_variants(case):
    """The case's constructor arguments, then each of its `extra_kwargs` over them."""
    return [case.kwargs] + [dict(case.kwargs, **extra) for extra in case.extra_kwargs]


def export_variants(cases=None):
    """`{"<name>-<label>": (name, kwargs)}`: every case's `export_variants`."""
    cases = CASES if cases is None else cases
    return {
        f"{name}-{label}": (name, kwargs)
        for name, case in sorted(cases.items())
        for label, kwargs in case.export_variants.items()
    }


def known_export_failures(cases=None):
    """`{(name, quantization): reason}`: every case's `known_export_failures`."""
    cases = CASES if cases is None else cases
    return {
        (name, quantization): reason
        for name, case in sorted(cases.items())
        for quantization, reason in case.known_export_failures.items()
    }


def int8_form_names(cases=None):
    """The blocks whose inference form is another layer that declares `export_float_ops`:
    the forms rewritten for full int8 (rescaled statistics, float per-channel paths)."""
    cases = CASES if cases is None else cases
    names = []
    for name, case in sorted(cases.items()):
        layer = keras_chanattn.create_attention(name, **case.kwargs)
        layer.build((None, None, None, case.channels))
        form = layer.inference_layer()
        if type(form) is not type(layer) and getattr(form, "export_float_ops", ()):
            names.append(name)
    return names
