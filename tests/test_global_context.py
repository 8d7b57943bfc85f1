"""Global Context checks beyond the registry-wide suite: the inert logit bias, the
initial state, and the parameter count the paper reports for ResNet-50."""

import keras
import numpy as np

from keras_chanattn import GlobalContext
from tests.layer_cases import randomize_weights
from tests.references.global_context import params_per_block


def random_input(shape, seed=1):
    return np.random.default_rng(seed).normal(0.0, 1.0, shape).astype("float32")


def test_logit_bias_is_non_trainable_and_does_not_change_the_output():
    layer = GlobalContext(reduction=4)
    layer.build((None, None, None, 16))
    randomize_weights(layer)
    assert [w.path.split("/")[-1] for w in layer.non_trainable_weights] == ["context_bias"]
    x = random_input((2, 7, 5, 16))
    before = keras.ops.convert_to_numpy(layer(x))
    layer.context_bias.assign([5.0])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), before, atol=1e-5)


def test_default_initialisation_starts_as_identity_or_half_gate():
    x = random_input((2, 6, 5, 16))
    add = GlobalContext(reduction=4)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(add(x)), x)
    mul = GlobalContext(reduction=4, fusion="mul")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(mul(x)), 0.5 * x, rtol=1e-7)


def test_resnet50_parameter_count_matches_the_paper():
    """GC (r = 16) in each of ResNet-50's 16 bottlenecks: +2,548,000 parameters."""
    stages = [(256, 3), (512, 4), (1024, 6), (2048, 3)]
    assert sum(n * params_per_block(c, c // 16) for c, n in stages) == 2_548_000
    total = 0
    for channels, blocks in stages:
        layer = GlobalContext()
        layer.build((None, 7, 7, channels))
        total += blocks * sum(int(np.prod(w.shape)) for w in layer.weights)
    assert total == 2_548_000
