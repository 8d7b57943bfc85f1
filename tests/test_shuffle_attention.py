"""Shuffle Attention's instance-norm statistics on inputs far from zero.

A one-pass variance, `mean(x * x) - mean(x) ** 2`, cancels in float32 when `|mean| >> std`
(mean 100, std 0.1: output errors near 0.8 against the NumPy reference). The layer centres
first; these inputs check that both forms keep doing so."""

import keras
import numpy as np
import pytest

from keras_chanattn.layers.shuffle_attention import ShuffleAttention
from tests.layer_cases import randomize_weights
from tests.references.seed import shuffle_attention

# Relative to the input's magnitude (about 100 here): the registry suite's 1e-5 on inputs
# near 1.
RELATIVE_TOLERANCE = 1e-5


@pytest.mark.parametrize("form", ["training", "inference"])
@pytest.mark.parametrize(("mean", "std"), [(100.0, 0.1), (-30.0, 0.05)])
def test_statistics_hold_on_inputs_with_a_large_offset(form, mean, std):
    x = np.random.default_rng(0).normal(mean, std, (2, 7, 5, 16)).astype("float32")
    layer = ShuffleAttention(groups=2)
    layer.build(x.shape)
    randomize_weights(layer, seed=0)
    expected = shuffle_attention(layer, x.astype(np.float64))
    if form == "inference":
        layer = layer.inference_layer()
    error = np.max(np.abs(keras.ops.convert_to_numpy(layer(x)) - expected))
    assert error <= RELATIVE_TOLERANCE * np.max(np.abs(x)), error
