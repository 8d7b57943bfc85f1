"""Which parametrised cases run in the fast suite (`pytest -m "not slow"`).

A family of cases over every block and format is run whole by the full suite; the fast suite
keeps a representative few, so a change is checked in minutes and CI still runs them all.
"""

import pytest


def slow_unless(fast, *values, id=None, marks=()):
    """`pytest.param(*values)`, marked `slow` unless `fast`."""
    marks = list(marks if isinstance(marks, (list, tuple)) else [marks])
    return pytest.param(*values, id=id, marks=marks if fast else [*marks, pytest.mark.slow])
