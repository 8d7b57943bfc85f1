"""Every registered block's `slice_channels`: a slice equals the block with channels zeroed.

A block that declares slicing (its `LayerCase.sliceable`) must compute, on the kept channels
alone, what its NumPy reference (`tests/references/`) computes on the full input with the
other channels zeroed; the others must refuse with a message that names the prunable
blocks. Inputs are non-negative: every prunable site of the builders follows a ReLU (CBAM's
spatial half is exact there only, see `SpatialAttention.slice_channels`).
"""

import keras
import numpy as np
import pytest

import keras_chanattn
from keras_chanattn.layers.registry import sliceable_attention
from tests.layer_cases import CASES, case_variants, randomize_weights

NAMES = keras_chanattn.list_attention()
TOLERANCE = 1e-5


def _keep(channels, rng):
    """About half the channels, always the first and last (slices at both ends)."""
    chosen = rng.choice(np.arange(1, channels - 1), size=channels // 2 - 2, replace=False)
    return np.sort(np.concatenate([[0, channels - 1], chosen]))


def _sliced(layer, keep, x):
    config, weights = layer.slice_channels(keep)
    sliced = type(layer).from_config(config)
    sliced.build((None, *x.shape[1:3], len(keep)))
    sliced.set_weights(weights)
    return sliced


def test_cases_declare_what_the_blocks_declare():
    declared = sorted(name for name in NAMES if CASES[name].sliceable)
    assert declared == sliceable_attention()


@pytest.mark.parametrize("name", sliceable_attention())
def test_slice_equals_reference_with_channels_zeroed(name):
    """Every variant of a sliceable block: `sliced(x[..., keep])` equals the NumPy reference
    of the original on `x` with the other channels zeroed, at `keep`; fewer parameters."""
    case = CASES[name]
    rng = np.random.default_rng(0)
    for i, kwargs in enumerate(case_variants(case)):
        x = np.abs(rng.normal(size=(2, 7, 5, case.channels))).astype("float32")
        layer = keras_chanattn.create_attention(name, **kwargs)
        layer.build(x.shape)
        randomize_weights(layer, seed=i)
        keep = _keep(case.channels, rng)
        zeroed = np.zeros_like(x)
        zeroed[..., keep] = x[..., keep]
        expected = case.reference(layer, zeroed.astype(np.float64))[..., keep]
        sliced = _sliced(layer, keep, x)
        got = keras.ops.convert_to_numpy(sliced(x[..., keep], training=False))
        err = float(np.max(np.abs(got - expected)))
        assert err <= TOLERANCE, f"{name} {kwargs}: max abs error {err:.2e}"
        assert sliced.count_params() <= layer.count_params()


@pytest.mark.parametrize("name", sorted(set(NAMES) - set(sliceable_attention())))
def test_unsliceable_blocks_refuse(name):
    layer = keras_chanattn.create_attention(name, **CASES[name].kwargs)
    layer.build((None, None, None, CASES[name].channels))
    with pytest.raises(ValueError, match=r"cannot be sliced: .*Prunable blocks: .*se"):
        layer.slice_channels([0, 1])


def test_parametric_gather_excite_slices():
    """GE-theta-plus (depthwise gather, BatchNorm, MLP), where the suite's case is tiled."""
    rng = np.random.default_rng(1)
    layer = keras_chanattn.create_attention("ge", parametric=True, use_mlp=True, reduction=4)
    x = np.abs(rng.normal(size=(3, 4, 4, 16))).astype("float32")
    layer.build(x.shape)
    randomize_weights(layer, seed=2)
    keep = _keep(16, rng)
    zeroed = np.zeros_like(x)
    zeroed[..., keep] = x[..., keep]
    expected = CASES["ge"].reference(layer, zeroed.astype(np.float64))[..., keep]
    got = keras.ops.convert_to_numpy(_sliced(layer, keep, x)(x[..., keep], training=False))
    np.testing.assert_allclose(got, expected, atol=TOLERANCE)


@pytest.mark.parametrize(
    "keep, message",
    [
        ([], "non-empty"),
        ([[0, 1]], "1-D"),
        ([0.0, 1.0], "ints"),
        ([1, 1], "distinct"),
        ([-1, 2], "distinct and >= 0"),
        ([0, 16], "out of range"),
    ],
)
def test_bad_keep_is_refused(keep, message):
    layer = keras_chanattn.create_attention("se", reduction=4)
    layer.build((None, None, None, 16))
    with pytest.raises(ValueError, match=message):
        layer.slice_channels(keep)
