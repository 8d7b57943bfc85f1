"""Independent NumPy references of the attention blocks, one module per family.

Each module declares a `CASES` list of `keras_chanattn.testing.LayerCase`;
`tests/layer_cases.py` collects them.
"""

from keras_chanattn.testing import LayerCase  # noqa: F401  (the cases' type)
