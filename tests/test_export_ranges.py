"""Tests of `keras_chanattn.export.ranges`: calibrated int8 ranges widened to XNNPACK's limits.

After a fine-tune, Global Context's context vector and Shuffle Attention's weights are small
(their last weights start at zero). Their int8 ADD/SUB/MUL then fell outside XNNPACK's scale
limits and split the graph (GC: 3 partitions, SA: 10 on the fine-tuned ResNet-50). Here the
small classifier of `test_export` gets those weights scaled down to the same effect.
"""

import keras
import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from keras_chanattn.export import ExportVerificationError, convert_tflite, export_tflite
from keras_chanattn.export import tflite as tflite_module
from keras_chanattn.export.ranges import (
    ADD_MIN_RATIO,
    MARGIN,
    MUL_MIN_RATIO,
    fit_xnnpack_ranges,
)
from tests.test_export import _block_of, calibration_images, held_out_images, trained

# The weights a fine-tune leaves small, scaled to 1e-4 of their trained size.
SMALL_WEIGHTS = {"gc": ("expand",), "sa": ("channel_weight", "spatial_weight")}
SHRINK = 1e-4


def fine_tuned_like(name):
    model = trained(name)
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    for weight in _block_of(clone).weights:
        if any(part in weight.path for part in SMALL_WEIGHTS[name]):
            weight.assign(weight.numpy() * SHRINK)
    return clone


def int8_binary_op_ratios(tflite_bytes):
    """`(op, ratio, limit)` of every int8 ADD/SUB/MUL, from the quantised model's scales."""
    interpreter = Interpreter(
        model_content=tflite_bytes,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    found = []
    for node in interpreter._get_ops_details():  # noqa: SLF001
        if node["op_name"] not in ("ADD", "SUB", "MUL"):
            continue
        details = [
            interpreter._get_tensor_details(int(i), 0)  # noqa: SLF001
            for i in [*node["inputs"], *node["outputs"]]
        ]
        if any(d["dtype"] != np.int8 for d in details):
            continue
        a, b, out = (float(d["quantization_parameters"]["scales"][0]) for d in details)
        if node["op_name"] == "MUL":
            found.append(("MUL", a * b / out, MUL_MIN_RATIO))
        else:
            found.extend((node["op_name"], s / out, ADD_MIN_RATIO) for s in (a, b))
    return found


@pytest.mark.parametrize("name", ["gc", "sa"])
def test_small_gate_terms_stay_in_one_xnnpack_partition(name, tmp_path, monkeypatch):
    """With the ranges widened, the export passes in one partition, every int8 binary op's
    scales are within XNNPACK's limits, and the report lists what was widened, in the block;
    without the widening, the same export fails on partitions."""
    model = fine_tuned_like(name)
    block = _block_of(model).name
    report = export_tflite(
        model, tmp_path / "m.tflite", "int8", calibration_images(), held_out_images()
    )
    assert report.xnnpack_partitions == 1 and report.passed
    assert report.widened_ranges
    assert {w["layer"] for w in report.widened_ranges} == {f"{block}_inference"}
    assert all(w["before"] < w["limit"] and w["factor"] > 1 for w in report.widened_ranges)
    assert "int8 ranges widened for XNNPACK" in report.summary()
    ratios = int8_binary_op_ratios((tmp_path / "m.tflite").read_bytes())
    assert ratios and all(ratio >= limit for _, ratio, limit in ratios), ratios

    monkeypatch.setattr(tflite_module, "fit_xnnpack_ranges", lambda calibrated, _: (calibrated, []))
    with pytest.raises(ExportVerificationError, match="XNNPACK partitions > 1"):
        export_tflite(model, tmp_path / "n.tflite", "int8", calibration_images(), held_out_images())
    assert not (tmp_path / "n.tflite").exists()


class _TwoSmallTerms(keras.layers.Layer):
    """`x - 1e-4 * mean(x)` twice: the first small term is read once, the second also
    feeds a second output."""

    def call(self, x):
        once = keras.ops.mean(x, axis=(1, 2), keepdims=True) * 1e-4
        twice = keras.ops.max(x, axis=(1, 2), keepdims=True) * 1e-4
        return x - once, x - twice, twice


def _calibrated(model, images, monkeypatch):
    """The calibrated float model the export's int8 conversion hands to the range fitting."""
    seen = []

    def record(calibrated, float_outputs):
        seen.append(calibrated)
        return calibrated, []

    monkeypatch.setattr(tflite_module, "fit_xnnpack_ranges", record)
    convert_tflite(model, "int8", images)
    return seen[0]


def _recorded_widths(tflite_bytes):
    model = schema.Model.GetRootAs(tflite_bytes, 0)
    subgraph = model.Subgraphs(0)
    widths = {}
    for i in range(subgraph.TensorsLength()):
        tensor = subgraph.Tensors(i)
        q = tensor.Quantization()
        if q is not None and q.MinLength() == 1:
            lo, hi = float(q.MinAsNumpy()[0]), float(q.MaxAsNumpy()[0])
            widths[tensor.Name().decode()] = max(hi, 0.0) - min(lo, 0.0)
    return widths


def _output_names(tflite_bytes):
    subgraph = schema.Model.GetRootAs(tflite_bytes, 0).Subgraphs(0)
    return [subgraph.Tensors(int(i)).Name().decode() for i in subgraph.OutputsAsNumpy()]


def test_fit_widens_a_term_read_once_to_the_limit_and_leaves_one_read_twice(monkeypatch):
    inputs = keras.Input((8, 8, 4))
    model = keras.Model(inputs, _TwoSmallTerms()(inputs))
    images = np.random.default_rng(0).uniform(-1.0, 3.0, (16, 8, 8, 4)).astype("float32")
    calibrated = _calibrated(model, images, monkeypatch)
    before = _recorded_widths(calibrated)

    fitted, widened = fit_xnnpack_ranges(calibrated)

    after = _recorded_widths(fitted)
    assert [w["op"] for w in widened] == ["SUB"]
    term = widened[0]["tensor"]
    assert "mul" in term and before[term] / max(before.values()) < ADD_MIN_RATIO
    once_out, _, twice = _output_names(calibrated)  # x - once, x - twice, twice
    assert before[twice] / before[once_out] < ADD_MIN_RATIO  # small too, but read twice
    np.testing.assert_allclose(after[term] / after[once_out], MARGIN * ADD_MIN_RATIO, rtol=1e-5)
    assert widened[0]["factor"] == pytest.approx(after[term] / before[term], rel=1e-5)
    assert {k: v for k, v in after.items() if k != term} == {
        k: v for k, v in before.items() if k != term
    }  # the term read twice (and everything else) keeps its range
