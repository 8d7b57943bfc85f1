"""Every registered block's `gates`: names, shapes, and the output recombined from them.

Each block's `LayerCase` declares its gate shapes and a NumPy `combine_gates` (the default
multiplies by `"channel"` and `"spatial"`); the recombination never runs the layer's code,
so a gate that drifted from what `call` multiplies by fails here.
"""

import keras
import numpy as np
import pytest

import keras_chanattn
from keras_chanattn.layers import AttentionLayer
from tests.layer_cases import CASES, case_variants, randomize_weights

NAMES = keras_chanattn.list_attention()
TOLERANCE = 1e-5
SHAPES = [(2, 7, 5), (1, 1, 1)]


def to_numpy(gates):
    return {name: keras.ops.convert_to_numpy(g).astype(np.float64) for name, g in gates.items()}


def check_gates(case, layer, form, x, training=False):
    """`form.gates(x)` has the case's names and shapes, and recombines to `form(x)`."""
    gates = to_numpy(form.gates(x, training=training))
    shapes = {name: g.shape for name, g in gates.items()}
    assert shapes == case.gate_shapes(layer, x.shape), f"{type(form).__name__}"
    expected = keras.ops.convert_to_numpy(form(x, training=training))
    got = case.combine_gates(form, x.astype(np.float64), gates)
    err = float(np.max(np.abs(got - expected)))
    assert err <= TOLERANCE, f"{type(form).__name__} {x.shape}: max abs error {err:.2e}"
    return gates


def case_of(name):
    case = CASES.get(name)
    assert case is not None, f"no LayerCase (tests/references/) for {name!r}"
    return case


@pytest.mark.parametrize("name", NAMES)
def test_gates_recombine_to_the_output(name):
    """Every variant, its inference form too, in inference mode: the case's NumPy
    `combine_gates(x, gates)` equals the output within 1e-5, and the form's gates (another
    graph, e.g. BatchNorm folded) equal the layer's."""
    case = case_of(name)
    rng = np.random.default_rng(0)
    for i, kwargs in enumerate(case_variants(case)):
        for shape in SHAPES:
            x = rng.normal(size=(*shape, case.channels)).astype("float32")
            layer = keras_chanattn.create_attention(name, **kwargs)
            layer.build(x.shape)
            randomize_weights(layer, seed=i)
            gates = check_gates(case, layer, layer, x)
            form_gates = check_gates(case, layer, layer.inference_layer(), x)
            for gate in gates:
                np.testing.assert_allclose(form_gates[gate], gates[gate], atol=TOLERANCE)


@pytest.mark.parametrize("name", NAMES)
def test_gates_in_training_mode_recombine_to_the_training_output(name):
    """`training=True` gates use the batch statistics, as `call(training=True)` does."""
    case = case_of(name)
    layer = keras_chanattn.create_attention(name, **case.kwargs)
    x = np.random.default_rng(1).normal(size=(3, 6, 5, case.channels)).astype("float32")
    layer.build(x.shape)
    randomize_weights(layer, seed=2)
    check_gates(case, layer, layer, x, training=True)


@pytest.mark.parametrize("kwargs", [{"parametric": True}, {"parametric": True, "use_mlp": True}])
def test_parametric_gather_excite_gates(kwargs):
    """GE-theta(-plus), outside the registry-wide case (it needs a known height and width)."""
    case = CASES["ge"]
    layer = keras_chanattn.create_attention("ge", reduction=4, **kwargs)
    x = np.random.default_rng(3).normal(size=(2, 7, 5, case.channels)).astype("float32")
    layer.build(x.shape)
    randomize_weights(layer, seed=4)
    gates = check_gates(case, layer, layer, x)
    form = layer.inference_layer()
    assert type(form) is not type(layer)
    np.testing.assert_allclose(
        check_gates(case, layer, form, x)["channel"], gates["channel"], atol=TOLERANCE
    )


@pytest.mark.parametrize("name", NAMES)
def test_integer_input_gates_equal_the_float_input_gates(name):
    case = case_of(name)
    layer = keras_chanattn.create_attention(name, **case.kwargs)
    x = np.random.default_rng(5).integers(0, 4, size=(2, 6, 5, case.channels))
    layer.build(x.shape)
    randomize_weights(layer, seed=6)
    from_int = to_numpy(layer.gates(x.astype("uint8")))
    from_float = to_numpy(layer.gates(x.astype("float32")))
    assert from_int.keys() == from_float.keys()
    for gate in from_int:
        np.testing.assert_array_equal(from_int[gate], from_float[gate])


@pytest.mark.parametrize("name", NAMES)
def test_gates_come_in_the_compute_dtype(name):
    case = case_of(name)
    layer = keras_chanattn.create_attention(name, dtype="mixed_float16", **case.kwargs)
    x = np.random.default_rng(7).normal(size=(2, 6, 5, case.channels)).astype("float32")
    layer.build(x.shape)
    dtypes = {keras.backend.standardize_dtype(g.dtype) for g in layer.gates(x).values()}
    assert dtypes == {"float16"}


class NoGates(AttentionLayer):
    def call(self, inputs):
        return inputs


def test_a_block_without_gates_says_what_to_implement():
    with pytest.raises(NotImplementedError, match=r"NoGates does not implement `gates\("):
        NoGates().gates(np.zeros((1, 2, 2, 3), "float32"))


def test_gates_build_an_unbuilt_block_and_check_its_input():
    layer = keras_chanattn.create_attention("se", reduction=4)
    gates = layer.gates(np.ones((2, 3, 3, 16), "float32"))
    assert layer.built and tuple(gates["channel"].shape) == (2, 16)
    with pytest.raises(ValueError, match="expects a 4-D input"):
        keras_chanattn.create_attention("se").gates(np.ones((3, 3, 16), "float32"))
