"""Tests of `keras_chanattn.export.ranges`: calibrated int8 ranges widened to XNNPACK's limits.

After a fine-tune, Global Context's context vector and Shuffle Attention's weights are small
(their last weights start at zero). Their int8 ADD/SUB/MUL then fell outside XNNPACK's scale
limits and split the graph (GC: 3 partitions, SA: 10 on the fine-tuned ResNet-50). Here the
small classifier of `test_export` gets those weights scaled down to the same effect.
"""

import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter, OpResolverType
from ai_edge_litert.tools import flatbuffer_utils

from keras_chanattn.cli import main as cli_main
from keras_chanattn.export import ExportVerificationError, convert_tflite, export_tflite
from keras_chanattn.export import tflite as tflite_module
from keras_chanattn.export.inference import inference_model
from keras_chanattn.export.ranges import (
    ADD_MIN_RATIO,
    MARGIN,
    MAX_RATIO,
    MUL_MIN_RATIO,
    fit_xnnpack_ranges,
    int8_scale_problems,
    scale_ratio_problems,
)
from keras_chanattn.export.saved_model import write_saved_model
from keras_chanattn.images import image_input_spec
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


def _int8_binary_nodes(tflite_bytes):
    """`(op name, [input, input, output] tensor details)` of each int8 ADD/SUB/MUL: the ops
    read from the flatbuffer, the scales through the interpreter (independently of
    `export.ranges`)."""
    model = flatbuffer_utils.read_model_from_bytearray(tflite_bytes)
    interpreter = Interpreter(
        model_content=tflite_bytes,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    tensors = {d["index"]: d for d in interpreter.get_tensor_details()}
    found = []
    for operator in model.subgraphs[0].operators:
        op = flatbuffer_utils.opcode_to_name(model, operator.opcodeIndex)
        if op not in ("ADD", "SUB", "MUL"):
            continue
        details = [tensors[int(i)] for i in [*operator.inputs, *operator.outputs]]
        if all(d["dtype"] == np.int8 for d in details):
            found.append((op, details))
    return found


def int8_binary_op_ratios(tflite_bytes):
    """`(op, ratio, limit)` of every int8 ADD/SUB/MUL, from the quantised model's scales."""
    found = []
    for op, details in _int8_binary_nodes(tflite_bytes):
        a, b, out = (float(d["quantization_parameters"]["scales"][0]) for d in details)
        if op == "MUL":
            found.append(("MUL", a * b / out, MUL_MIN_RATIO))
        else:
            found.extend((op, s / out, ADD_MIN_RATIO) for s in (a, b))
    return found


@pytest.mark.parametrize("name", [pytest.param("gc", marks=pytest.mark.slow), "sa"])
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
    # The failure names the op outside XNNPACK and the scale limit it breaks.
    with pytest.raises(ExportVerificationError, match=r"XNNPACK partitions > 1 .*< 2\^-1[06]\]"):
        export_tflite(model, tmp_path / "n.tflite", "int8", calibration_images(), held_out_images())
    assert not (tmp_path / "n.tflite").exists()


def _without_widening(model, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(tflite_module, "fit_xnnpack_ranges", lambda calibrated, _: (calibrated, []))
        return convert_tflite(model, "int8", calibration_images())


def test_int8_scale_problems_agree_with_the_quantised_scales(monkeypatch):
    """`int8_scale_problems` finds exactly the ops whose scales (read through the
    interpreter) break a limit: some without the widening, none with it."""
    model = fine_tuned_like("gc")
    for tflite_bytes, expect_problems in [
        (_without_widening(model, monkeypatch), True),
        (convert_tflite(model, "int8", calibration_images()), False),
    ]:
        ratios = int8_binary_op_ratios(tflite_bytes)
        below = sum(ratio < limit for _, ratio, limit in ratios)
        checked, found = int8_scale_problems(tflite_bytes)
        assert checked == len(_int8_binary_nodes(tflite_bytes))
        assert sum(len(f["problems"]) for f in found) == below
        assert bool(found) == expect_problems
        assert all(f["op"] in ("ADD", "SUB") and "< 2^-10" in f["problems"][0] for f in found)


def test_scale_ratio_problems_at_the_limits():
    out = 0.5
    assert scale_ratio_problems("ADD", [ADD_MIN_RATIO * out, out], out) == []
    assert scale_ratio_problems("SUB", [out, ADD_MIN_RATIO * out * 0.99], out) == [
        f"input 1 / output scale {ADD_MIN_RATIO * 0.99:.3g} < 2^-10"
    ]
    assert scale_ratio_problems("ADD", [MAX_RATIO * out, out], out) == [
        "input 0 / output scale 256 >= 2^8"
    ]
    assert scale_ratio_problems("MUL", [MUL_MIN_RATIO * out, 1.0], out) == []
    assert scale_ratio_problems("MUL", [MUL_MIN_RATIO * out / 2, 1.0], out) == [
        f"input scales' product / output scale {MUL_MIN_RATIO / 2:.3g} < 2^-16"
    ]
    assert scale_ratio_problems("CONV_2D", [1e-9, 1.0], 1.0) == []


def test_int8_limits_cli(tmp_path, monkeypatch, capsys):
    model = fine_tuned_like("gc")
    (tmp_path / "split.tflite").write_bytes(_without_widening(model, monkeypatch))
    (tmp_path / "fitted.tflite").write_bytes(convert_tflite(model, "int8", calibration_images()))
    (tmp_path / "notes.txt").write_text("not a model")

    assert cli_main(["int8-limits", str(tmp_path / "fitted.tflite")]) == 0
    assert "0 outside XNNPACK's limits" in capsys.readouterr().out
    assert cli_main(["int8-limits", str(tmp_path / "split.tflite")]) == 1
    printed = capsys.readouterr().out
    assert "SUB " in printed and "< 2^-10" in printed
    assert cli_main(["int8-limits", str(tmp_path / "notes.txt")]) == 2
    assert "not a TFLite flatbuffer" in capsys.readouterr().err
    # An unreadable file does not stop the check of the files after it.
    paths = [str(tmp_path / name) for name in ("missing.tflite", "notes.txt", "split.tflite")]
    assert cli_main(["int8-limits", *paths]) == 2
    printed = capsys.readouterr()
    assert "missing.tflite" in printed.err and "notes.txt" in printed.err
    assert "split.tflite: " in printed.out and "< 2^-10" in printed.out


def _converter_int8(model, images):
    """The converter's own full-int8 model, no calibrate-only step, no range fitting."""
    export_model, _ = inference_model(model)
    with tempfile.TemporaryDirectory() as saved_model:
        write_saved_model(export_model, saved_model, image_input_spec(model), batch_size=1)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image[None]] for image in images)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
        return converter.convert()


def _graph(tflite_bytes):
    """Every tensor (name, type, shape, scales, zero points, constant bytes) and operator."""
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(tflite_bytes, 0))
    subgraph = model.subgraphs[0]
    tensors = []
    for tensor in subgraph.tensors:
        q = tensor.quantization
        data = model.buffers[tensor.buffer].data
        tensors.append((
            tensor.name, tensor.type, tuple(tensor.shape),
            None if q is None or q.scale is None else tuple(q.scale),
            None if q is None or q.zeroPoint is None else tuple(q.zeroPoint),
            None if data is None else bytes(data),
        ))  # fmt: skip
    codes = [(c.builtinCode, c.version) for c in model.operatorCodes]
    operators = [
        (codes[o.opcodeIndex], tuple(o.inputs), tuple(o.outputs)) for o in subgraph.operators
    ]
    return tensors, operators


@pytest.mark.parametrize("name", ["se", pytest.param("cbam", marks=pytest.mark.slow)])
def test_nothing_to_widen_gives_the_converters_own_int8_model(name):
    """Where no range needs widening, the export's calibrate -> fit -> quantise path gives
    the graph the converter's one-step full-int8 conversion gives: the same tensors, scales,
    zero points, weights and operators (only the metadata's order differs) when the output
    range gets no margin."""
    model = trained(name)
    images = calibration_images()
    exported = convert_tflite(
        model, "int8", images, num_calibration_samples=len(images), output_margin=0
    )
    assert int8_scale_problems(exported)[0] > 0
    tensors, operators = _graph(exported)
    assert tensors and operators
    assert (tensors, operators) == _graph(_converter_int8(model, images))


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
