"""The package's screen of a `.tflite` against the GPU delegate's documented rules
(`export.gpu_rules`): small TensorFlow graphs with an op the rules refuse, hand-built ops
for the per-op rules, and every registered block's float32 file."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_chanattn
from keras_chanattn.export import convert_tflite
from keras_chanattn.export.gpu_rules import Op, Tensor, op_problems, read_ops, screen_gpu_rules
from keras_chanattn.layers.registry import list_attention, small_network_kwargs
from tests.marks import slow_unless


def _convert(function, *specs):
    traced = tf.function(function, input_signature=list(specs))
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [traced.get_concrete_function()], traced
    )
    return converter.convert()


def _refused_ops(flatbuffer):
    return {(r["op"], r["reason"]) for r in screen_gpu_rules(flatbuffer)}


def test_gather_nd_is_refused_as_an_op_the_delegate_lacks():
    flatbuffer = _convert(lambda x: tf.gather_nd(x, [[0, 1], [0, 2]]), tf.TensorSpec((1, 4, 4, 2)))
    assert _refused_ops(flatbuffer) == {
        ("GATHER_ND", "GATHER_ND: not among the GPU delegate's ops")
    }


def test_five_d_transpose_is_refused_for_its_rank():
    flatbuffer = _convert(
        lambda x: tf.transpose(x, [0, 1, 2, 4, 3]) * 2.0, tf.TensorSpec((1, 4, 4, 2, 3))
    )
    (refused,) = [r for r in screen_gpu_rules(flatbuffer) if r["op"] == "TRANSPOSE"]
    assert "TRANSPOSE of 5 axes" in refused["reason"]
    assert "5-D input [1, 4, 4, 2, 3]: ranks 1 to 4 only" in refused["reason"]


def test_cumsum_needs_a_constant_axis():
    # gpu_compatibility.cc takes a float CUMSUM with a constant int32 axis, nothing else.
    constant = _convert(lambda x: tf.cumsum(x, axis=2), tf.TensorSpec((1, 4, 4, 2)))
    assert [op.name for op in read_ops(constant)] == ["CUMSUM"]
    assert screen_gpu_rules(constant) == []
    runtime = _convert(
        lambda x, axis: tf.cumsum(x, axis=axis),
        tf.TensorSpec((1, 4, 4, 2)),
        tf.TensorSpec((), tf.int32),
    )
    (refused,) = screen_gpu_rules(runtime)
    assert refused["op"] == "CUMSUM"
    assert "constant int32 axis" in refused["reason"] and "INT32 input" in refused["reason"]


def test_conv_and_squeeze_excitation_graph_is_accepted():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    s = keras.layers.GlobalAveragePooling2D()(x)
    s = keras.layers.Dense(2, activation="relu")(s)
    s = keras.layers.Dense(8, activation="sigmoid")(s)
    x = keras.layers.Multiply()([x, keras.layers.Reshape((1, 1, 8))(s)])
    x = keras.layers.Add()([x, keras.layers.Conv2D(8, 1)(inputs)])
    logits = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x))
    flatbuffer = convert_tflite(keras.Model(inputs, logits), "float32")
    ops = {op.name for op in read_ops(flatbuffer)}
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "MEAN", "FULLY_CONNECTED", "MUL", "ADD"} <= ops
    assert screen_gpu_rules(flatbuffer) == []


def _binary(name, a, b):
    x, y = Tensor(tuple(a), "FLOAT32", False), Tensor(tuple(b), "FLOAT32", False)
    out = Tensor(tuple(np.broadcast_shapes(a, b)), "FLOAT32", False)
    return Op(0, 0, name, False, None, (x, y), (out,))


def test_mul_and_add_broadcasting_rules():
    assert op_problems(_binary("MUL", (1, 4, 4, 8), (1, 8))) == []  # [b, c] into [b, h, w, c]
    assert op_problems(_binary("ADD", (1, 4, 4, 8), (4, 4, 8))) == []  # 3-D at batch 1
    assert op_problems(_binary("MUL", (1, 4, 4, 8), (1, 1, 1, 8))) == []
    assert op_problems(_binary("ADD", (1, 4, 4, 8), (4, 8))) == [
        "no broadcasting of [1, 4, 4, 8] with [4, 8]"
    ]
    (problem,) = op_problems(_binary("MUL", (1, 4, 1, 8), (1, 1, 4, 8)))
    assert "one operand must be the larger in every axis" in problem


def test_reduction_axes_must_be_constant():
    x = Tensor((1, 4, 4, 8), "FLOAT32", False)
    axes = Tensor((2,), "INT32", True, np.array([1, 2], "int32"))
    out = Tensor((1, 8), "FLOAT32", False)
    assert op_problems(Op(0, 0, "MEAN", False, None, (x, axes), (out,))) == []
    runtime_axes = Tensor((2,), "INT32", False)
    problems = op_problems(Op(0, 0, "SUM", False, None, (x, runtime_axes), (out,)))
    assert problems == ["SUM takes constant int32 axes only", "INT32 input: float tensors only"]


def test_bad_input_is_refused_with_the_fix():
    with pytest.raises(TypeError, match="read_bytes"):
        screen_gpu_rules("model.tflite")
    with pytest.raises(ValueError, match="TFL3"):
        screen_gpu_rules(b"\x00" * 64)


def _block_file(name):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    x = keras_chanattn.create_attention(name, **small_network_kwargs(name, 16))(x)
    logits = keras.layers.Dense(5)(keras.layers.GlobalAveragePooling2D()(x))
    return convert_tflite(keras.Model(inputs, logits), "float32")


@pytest.mark.parametrize(
    "name", [slow_unless(name in ("se", "sa", "sge"), name) for name in list_attention()]
)
def test_block_float32_file_passes_the_gpu_rules(name):
    # SA's channel shuffle and SGE's per-group gate use 4-D views (H and W merged): their
    # 5-D forms were refused for the tensors' rank.
    assert screen_gpu_rules(_block_file(name)) == []
