"""Accelerator coverage in the export verification: LiteRT's v2 CPU accelerator, the GPU
delegate (Analyzer, or the package's screen of its documented rules), and full int8 leaving
a classifier's softmax head to the app."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_chanattn
from keras_chanattn.export import PreparedModel, convert_tflite, export_tflite, verify_tflite
from keras_chanattn.export.accelerators import (
    cpu_fully_accelerated,
    gpu_checker_active,
    gpu_column,
    gpu_compatibility,
    parse_gpu_analysis,
)
from keras_chanattn.export.head import ends_in_softmax, softmax_layer
from keras_chanattn.layers.registry import list_attention, small_network_kwargs
from tests.marks import slow_unless

SIZE = 16
DATA = os.path.join(os.path.dirname(__file__), "data")

# The Analyzer's text for an op the GPU delegate refuses: the op line, then the reason, then
# the subgraph's summary (the layout of TensorFlow's model_analyzer.cc; this TensorFlow's
# Analyzer prints no refusal at all, see `gpu_checker_active`).
REFUSING_TEXT = """=== TFLite ModelAnalyzer ===

Subgraph#0 main(T#0) -> [T#5]
  Op#0 CONV_2D(T#0, T#1, T#2) -> [T#3]
  Op#1 GATHER_ND(T#3, T#4[0, 1, 0, 2]) -> [T#5]
GPU COMPATIBILITY WARNING: Not supported op GATHER_ND
  Op#2 STRIDED_SLICE(T#5, T#6, T#7, T#8) -> [T#9]
GPU COMPATIBILITY WARNING: STRIDED_SLICE supports for 3 or 4 dimensional tensors only.

GPU COMPATIBILITY WARNING: Subgraph#0 has GPU delegate compatibility issues at nodes 1, 2 \
with TFLite runtime version 2.21.0

Tensors of Subgraph#0
  T#0(serving_default_images:0) shape:[1, 16, 16, 3], type:FLOAT32
"""


def _images(n, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (n, SIZE, SIZE, 3)).astype("float32")


def _classifier(block=None, activation="softmax"):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    if block is not None:
        x = block(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(5, activation=activation)(x))


# --- the GPU delegate's Analyzer text ------------------------------------------------------


def test_parser_reads_each_refused_op_and_its_reason():
    assert parse_gpu_analysis(REFUSING_TEXT) == [
        {"subgraph": 0, "index": 1, "op": "GATHER_ND", "reason": "Not supported op GATHER_ND"},
        {
            "subgraph": 0,
            "index": 2,
            "op": "STRIDED_SLICE",
            "reason": "STRIDED_SLICE supports for 3 or 4 dimensional tensors only.",
        },
    ]


def test_parser_finds_nothing_refused_in_a_captured_compatible_analysis():
    with open(os.path.join(DATA, "analyzer_se_float32.txt")) as f:
        text = f.read()  # captured from this TensorFlow, an SE classifier in float32
    assert "Op#7 FULLY_CONNECTED" in text
    assert parse_gpu_analysis(text) == []


def test_parser_rejects_bytes_with_the_fix():
    with pytest.raises(TypeError, match="decode"):
        parse_gpu_analysis(b"Op#0 CONV_2D")


def test_gpu_column():
    assert gpu_column({"checked": "rules", "accepts_all": True, "refused": []}) == "all"
    refused = [{"op": "GATHER_ND"}, {"op": "STRIDED_SLICE"}]
    verdict = {"checked": "analyzer", "accepts_all": False, "refused": refused}
    assert gpu_column(verdict) == "2 refused"
    assert gpu_column({"checked": False, "accepts_all": None, "refused": []}) == "?"
    assert gpu_column({}) == "?"


def test_gpu_verdict_comes_from_the_analyzer_or_else_from_the_rules_screen():
    flatbuffer = convert_tflite(_classifier(activation=None), "float32")
    verdict = gpu_compatibility(flatbuffer)
    assert verdict["checked"] == ("analyzer" if gpu_checker_active() else "rules")
    assert verdict["accepts_all"] is True and verdict["refused"] == []
    if verdict["checked"] == "rules":
        assert "not the delegate" in verdict["note"]


# --- the report ------------------------------------------------------------------------------


def test_report_has_the_accelerator_verdicts(tmp_path):
    model = _classifier(activation=None)
    report = export_tflite(model, tmp_path / "m.tflite", "float32", validation_data=_images(8))
    assert report.passed, report.summary()
    assert report.cpu_fully_accelerated is True and report.cpu_accelerator_error is None
    assert report.gpu_delegate == gpu_compatibility((tmp_path / "m.tflite").read_bytes())
    assert report.softmax_head is None
    saved = json.loads(report.to_json())
    assert saved["cpu_fully_accelerated"] is True
    assert set(saved["gpu_delegate"]) == {"checked", "accepts_all", "refused", "note"}
    assert "CPU accelerator (v2): fully accelerated" in report.summary()


def test_cpu_verdict_is_false_for_an_op_xnnpack_lacks():
    @tf.function(input_signature=[tf.TensorSpec((1, 4, 4, 2), tf.float32)])
    def gather(x):
        return tf.gather_nd(x, [[0, 1], [0, 2]])

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [gather.get_concrete_function()], gather
    )
    assert cpu_fully_accelerated(converter.convert()) == (False, None)
    fully, error = cpu_fully_accelerated(b"not a flatbuffer")
    assert fully is None and error


# --- the softmax head ------------------------------------------------------------------------


def test_softmax_head_is_found_in_each_form():
    model = _classifier()
    assert softmax_layer(model) is model.layers[-1]
    assert softmax_layer(_classifier(activation=None)) is None
    inputs = keras.Input((4,))
    logits = keras.layers.Dense(3)(inputs)
    for head in (keras.layers.Softmax(), keras.layers.Activation("softmax")):
        assert softmax_layer(keras.Model(inputs, head(logits))) is head
    assert softmax_layer(keras.Model(inputs, keras.layers.Activation("relu")(logits))) is None


def test_int8_default_classifier_is_fully_accelerated_and_compared_on_logits(tmp_path):
    # classifier_activation="softmax", the builders' default; SRM has an inference form, so
    # the export model is a clone sharing the head layer with `model`.
    model = _classifier(keras_chanattn.create_attention("srm", scale_statistics=True))
    calibration, held_out = _images(48), _images(16, seed=1)
    report = export_tflite(model, tmp_path / "m.tflite", "int8", calibration, held_out)
    assert report.passed, report.summary()
    assert report.softmax_head == "left to the app"
    assert report.cpu_fully_accelerated is True
    assert report.xnnpack_partitions == 1 and report.undelegated_ops == []
    flatbuffer = (tmp_path / "m.tflite").read_bytes()
    assert not ends_in_softmax(flatbuffer)
    # Compared with the logits: an independent NumPy head on the Keras features.
    features = keras.Model(model.input, model.layers[-2].output).predict(held_out, verbose=0)
    assert report.inference_forms
    kernel, bias = model.layers[-1].get_weights()
    logits = features @ kernel + bias
    with PreparedModel(model) as prepared:
        np.testing.assert_allclose(
            prepared.keras_outputs(held_out, logits=True)[0], logits, rtol=1e-4, atol=1e-5
        )
    # The same file checked by verify_tflite is compared on logits too.
    again = verify_tflite(flatbuffer, model, "int8", held_out)
    assert again.softmax_head == "left to the app" and again.passed
    # Top-1 of the file's logits is the Keras model's top-1.
    assert again.held_out.top1_agreement == pytest.approx(report.held_out.top1_agreement)


def test_float_formats_keep_the_softmax_head(tmp_path):
    model = _classifier()
    report = export_tflite(model, tmp_path / "m.tflite", "float16", validation_data=_images(8))
    assert report.passed, report.summary()
    assert report.softmax_head == "kept" and report.cpu_fully_accelerated is True
    assert ends_in_softmax((tmp_path / "m.tflite").read_bytes())


# --- every block's float files stay on the CPU accelerator ---------------------------------


@pytest.mark.parametrize(
    ("name", "quantization"),
    [
        slow_unless((name, quantization) == ("se", "float32"), name, quantization)
        for name in list_attention()
        for quantization in ("float32", "float16")
    ],
)
def test_block_float_files_stay_fully_accelerated(name, quantization):
    block = keras_chanattn.create_attention(name, **small_network_kwargs(name, 16))
    flatbuffer = convert_tflite(_classifier(block, activation=None), quantization)
    assert cpu_fully_accelerated(flatbuffer) == (True, None)
