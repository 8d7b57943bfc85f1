"""CONTRIBUTING.md's promise: a new block is its layer module plus its reference module.

A throwaway block and its test case are written as two files at test time, into folders
added to the `keras_chanattn.layers` and `tests.references` packages; the registry, the
case collection, the export suite's derived lists and the registry-wide checks pick them
up with no other edit. Everything is removed afterwards.
"""

import importlib
import sys
import textwrap

import keras
import pytest

import keras_chanattn
from keras_chanattn import layers
from keras_chanattn.layers import registry
from tests import layer_cases, references, test_gates, test_layers

NAME = "throwaway"

LAYER_MODULE = '''
"""A throwaway gate for tests/test_contributing.py: x * sigmoid(w * GAP(x) + b)."""

from keras import ops

from keras_chanattn.layers.common import AttentionLayer, channels_from_shape
from keras_chanattn.layers.registry import register_attention


@register_attention("throwaway")
class ThrowawayGate(AttentionLayer):
    """Per-channel gate `x * sigmoid(w * GAP(x) + b)`, `w` scaled by `scale`."""

    paper_figures = {
        "resnet50": {"delta": 45_440, "gflops": 3.86, "top1": None, "base_top1": None},
    }

    @classmethod
    def small_network_kwargs(cls, channels=16):
        return {"scale": 0.5}

    def __init__(self, scale=1.0, **kwargs):
        super().__init__(**kwargs)
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}.")
        self.scale = scale

    def build(self, input_shape):
        channels = channels_from_shape(self, input_shape)
        self.w = self.add_weight(name="w", shape=(channels,), initializer="ones")
        self.b = self.add_weight(name="b", shape=(channels,), initializer="zeros")

    def _gate(self, x):
        pooled = ops.mean(x, axis=(1, 2), keepdims=True)
        return ops.sigmoid(self.scale * self.w * pooled + self.b)

    def call(self, x):
        return x * self._gate(x)

    def gates(self, x, training=False):
        return {"channel": ops.reshape(self._gate(x), (-1, x.shape[-1]))}

    def inference_layer(self):
        form = ThrowawayGateInference(scale=self.scale, name=f"{self.name}_inference")
        form.build((None, None, None, self.w.shape[0]))
        form.set_weights(self.get_weights())
        return form

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


class ThrowawayGateInference(ThrowawayGate):
    """The export form: the gate's sigmoid stays in float in full int8."""

    export_float_ops = ("LOGISTIC",)
'''

REFERENCE_MODULE = '''
"""NumPy reference of the throwaway gate."""

from keras_chanattn.testing import LayerCase
from tests.references.numpy_ops import sigmoid, to_numpy


def throwaway_gate(layer, x, training=False):
    w, b = to_numpy(layer.w), to_numpy(layer.b)
    return x * sigmoid(layer.scale * w * x.mean(axis=(1, 2), keepdims=True) + b)


CASES = [
    LayerCase(
        name="throwaway",
        reference=throwaway_gate,
        params_256=({}, 2 * 256, 0),
        invalid=[({"scale": 0}, "scale")],
        extra_kwargs=[{"scale": 2.0}],
        export_variants={"half": {"scale": 0.5}},
        known_export_failures={"int8": "a throwaway reason"},
    ),
]
'''


@pytest.fixture
def throwaway_block(tmp_path, monkeypatch):
    """Writes the two modules, imports the layer package's, and removes everything after."""
    for folder, package, text in [
        ("layers", layers, LAYER_MODULE),
        ("references", references, REFERENCE_MODULE),
    ]:
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "throwaway_block.py").write_text(textwrap.dedent(text))
        monkeypatch.setattr(package, "__path__", [*package.__path__, str(tmp_path / folder)])
    importlib.invalidate_caches()
    layers.import_layer_modules()  # what importing the package does
    try:
        yield
    finally:
        if NAME in registry.list_attention():
            registry.unregister_attention(NAME)
        for module in ("keras_chanattn.layers", "tests.references"):
            sys.modules.pop(f"{module}.throwaway_block", None)


def test_a_new_layer_module_registers_itself(throwaway_block):
    assert NAME in keras_chanattn.list_attention()
    layer = keras_chanattn.create_attention(NAME, scale=2.0)
    assert type(layer).__name__ == "ThrowawayGate" and layer.registry_name == NAME
    assert registry.small_network_kwargs(NAME) == {"scale": 0.5}
    assert registry.paper_figures("resnet50")[NAME]["delta"] == 45_440


def test_the_suites_derive_their_lists_from_the_new_case(throwaway_block):
    cases = layer_cases.collect_cases()
    assert set(keras_chanattn.list_attention()) == set(cases)  # the layer suite's coverage
    assert layer_cases.export_variants(cases)[f"{NAME}-half"] == (NAME, {"scale": 0.5})
    assert layer_cases.known_export_failures(cases)[(NAME, "int8")] == "a throwaway reason"
    assert NAME in layer_cases.int8_form_names(cases)


def test_the_registry_wide_checks_run_on_the_new_block(throwaway_block, monkeypatch, tmp_path):
    cases = layer_cases.collect_cases()
    monkeypatch.setitem(test_layers.CASES, NAME, cases[NAME])
    test_layers.test_matches_numpy_reference(NAME)
    test_layers.test_parameter_counts_at_256_channels(NAME)
    test_layers.test_config_round_trip_has_every_constructor_argument(NAME)
    test_layers.test_keras_file_round_trip_without_custom_objects(NAME, tmp_path)
    test_layers.test_invalid_hyper_parameters_are_clear_errors(NAME)
    test_layers.test_inference_layer_matches_inference_mode(NAME)
    test_gates.test_gates_recombine_to_the_output(NAME)
    test_gates.test_integer_input_gates_equal_the_float_input_gates(NAME)


def test_a_new_block_without_gates_fails_the_gates_suite_clearly(throwaway_block, monkeypatch):
    cases = layer_cases.collect_cases()
    monkeypatch.setitem(test_gates.CASES, NAME, cases[NAME])
    block = type(keras_chanattn.create_attention(NAME))
    monkeypatch.delattr(block, "gates")
    with pytest.raises(NotImplementedError, match="ThrowawayGate does not implement `gates"):
        test_gates.test_gates_recombine_to_the_output(NAME)


def test_the_throwaway_block_is_gone_afterwards():
    assert NAME not in keras_chanattn.list_attention()
    assert NAME not in layer_cases.CASES
    assert "keras_chanattn>ThrowawayGate" not in keras.saving.get_custom_objects()
