"""The private TensorFlow, Keras and LiteRT APIs the package uses: each test names its API.

Every private name read in `keras_chanattn/_compat/` has a test here that fails with a message
naming it when a release removes or changes it.
"""

import keras
import pytest

from keras_chanattn._compat import keras_graph

# --- keras_chanattn/_compat/keras_graph.py: walking a Keras functional graph ---


def _keras_graph_requires(obj, attribute):
    """Fails naming the private Keras attribute `keras_graph` reads, if `obj` lacks it."""
    if not hasattr(obj, attribute):
        pytest.fail(
            f"Keras {keras.__version__} has no {type(obj).__name__}.{attribute}, which "
            "keras_chanattn/_compat/keras_graph.py reads: adapt it to this release."
        )


def _keras_graph_model():
    from keras_chanattn import SqueezeExcite

    inputs = keras.Input((4, 4, 8), name="image")
    x = keras.layers.Conv2D(8, 1, name="conv")(inputs)
    x = SqueezeExcite(reduction=2, name="attention")(x)
    outputs = keras.layers.Add(name="add")([inputs, x])
    return keras.Model(inputs, outputs, name="residual")


def test_keras_functional_nodes_by_depth():
    model = _keras_graph_model()
    _keras_graph_requires(model, "_nodes_by_depth")
    nodes = keras_graph.graph_nodes(model)
    assert [node.operation.name for node in nodes] == ["image", "conv", "attention", "add"]
    for attribute in ("operation", "input_tensors", "outputs", "parent_nodes", "is_input"):
        _keras_graph_requires(nodes[-1], attribute)
    _keras_graph_requires(nodes[-1], "arguments")
    _keras_graph_requires(nodes[-1].arguments, "args")
    assert [parent.operation.name for parent in nodes[-1].parent_nodes] == ["image", "attention"]


def test_keras_node_arguments_args_and_kwargs():
    inputs = keras.Input((4, 4, 8), name="image")
    conv = keras.layers.Conv2D(8, 1, name="conv")(inputs)
    added = keras.layers.Add(name="add")([inputs, conv])
    outputs = keras.layers.Dropout(0.5, name="dropout")(added, training=False)
    nodes = keras_graph.graph_nodes(keras.Model(inputs, outputs))
    _keras_graph_requires(nodes[-1], "arguments")
    for attribute in ("args", "kwargs"):
        _keras_graph_requires(nodes[-1].arguments, attribute)
    calls = {node.operation.name: keras_graph.call_arguments(node) for node in nodes}
    assert calls["image"] == ((), {})
    args, kwargs = calls["add"]
    assert kwargs == {} and len(args) == 1
    assert args[0][0] is inputs and args[0][1] is conv
    args, kwargs = calls["dropout"]
    assert len(args) == 1 and args[0] is added
    assert kwargs == {"training": False}, (
        "Node.arguments no longer records the call's keyword arguments: adapt "
        "keras_chanattn/_compat/keras_graph.py's call_arguments"
    )


def test_keras_tensor_keras_history():
    model = _keras_graph_model()
    _keras_graph_requires(model.output, "_keras_history")
    assert keras_graph.producer(model.output).name == "add"
    assert keras_graph.producer_node(model.output).operation.name == "add"


def test_keras_operation_inbound_nodes():
    model = _keras_graph_model()
    add = model.get_layer("add")
    _keras_graph_requires(add, "_inbound_nodes")
    node = keras_graph.inbound_node(add)
    assert [keras_graph.producer(t).name for t in node.input_tensors] == ["image", "attention"]
    assert keras_graph.inbound_node(add, 1) is None
    assert keras_graph.inbound_node(keras.layers.Dense(2)) is None  # never called


def test_keras_layer_flatten_layers():
    model = _keras_graph_model()
    _keras_graph_requires(model, "_flatten_layers")
    top = keras_graph.flatten_layers(model, recursive=False)
    assert [layer.name for layer in top] == [layer.name for layer in model.layers]
    nested = keras_graph.flatten_layers(model)
    assert model not in nested
    assert len(nested) > len(top)  # the attention block's own sub-layers
    attention = model.get_layer("attention")
    assert all(layer in nested for layer in keras_graph.flatten_layers(attention))


def test_is_functional_needs_no_private_api():
    model = _keras_graph_model()
    assert keras_graph.is_functional(model)
    assert not keras_graph.is_functional(
        keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    )
    assert not keras_graph.is_functional(keras.layers.Dense(1))

    class Subclassed(keras.Model):
        def call(self, x):
            return x

    assert not keras_graph.is_functional(Subclassed())


# --- keras_chanattn/_compat/litert.py and tf_converter.py: LiteRT and converter internals ---


def _requires(obj, attribute, module):
    """Fails naming the private attribute `keras_chanattn/_compat/<module>` reads."""
    if not hasattr(obj, attribute):
        pytest.fail(
            f"{getattr(obj, '__name__', type(obj).__name__)}.{attribute} is gone, which "
            f"keras_chanattn/_compat/{module} reads: adapt it to this release."
        )


def _tiny_converter(int8):
    """A converter of `mean(relu(2x + 1)) * sqrt(relu(2x + 1) + 1)` on a 4x4x3 image."""
    import numpy as np
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, 4, 4, 3], tf.float32)])
    def graph(x):
        y = tf.nn.relu(x * 2.0 + 1.0)
        return tf.reduce_mean(y, axis=[1, 2], keepdims=True) * tf.math.sqrt(y + 1.0)

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [graph.get_concrete_function()], graph
    )
    if int8:
        rng = np.random.default_rng(0)
        images = rng.uniform(0, 1, (8, 1, 4, 4, 3)).astype("float32")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image] for image in images)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter


def test_litert_interpreter_get_ops_details():
    from ai_edge_litert.interpreter import Interpreter

    from keras_chanattn._compat import litert
    from keras_chanattn.export.litert import make_interpreter

    _requires(Interpreter, "_get_ops_details", "litert.py")
    interpreter, xnnpack_error = make_interpreter(_tiny_converter(int8=False).convert(), 1)
    assert xnnpack_error is None
    nodes = litert.interpreter_nodes(interpreter)
    fields = {"index", "op_name", "inputs", "outputs", "operand_types", "result_types"}
    assert all(fields <= set(node) for node in nodes), (
        f"Interpreter._get_ops_details() lacks fields {fields}: adapt _compat/litert.py"
    )
    names = [node["op_name"] for node in nodes]
    assert names[-1] == "DELEGATE" and names.count("DELEGATE") == 1, (
        f"Interpreter._get_ops_details() no longer lists XNNPACK's partition last: {names}"
    )
    assert "SQRT" in names[:-1]


def test_tf_converter_calibrate_only_and_mlir_quantize():
    import numpy as np
    from tensorflow.lite.python import convert

    from keras_chanattn._compat import tf_converter
    from keras_chanattn.export.graph import operator_outputs
    from keras_chanattn.export.litert import make_interpreter

    converter = _tiny_converter(int8=True)
    for attribute in ("_experimental_calibrate_only", "_experimental_disable_per_channel"):
        _requires(converter, attribute, "tf_converter.py")
    _requires(convert, "mlir_quantize", "tf_converter.py")
    calibrated = tf_converter.calibrate_only(converter)
    ops = operator_outputs(calibrated)
    assert "QUANTIZE" not in [op for op, _ in ops], (
        "TFLiteConverter._experimental_calibrate_only no longer stops before quantisation"
    )
    sqrt = [name for op, names in ops if op == "SQRT" for name in names]
    quantized = tf_converter.quantize_calibrated(converter, calibrated, sqrt)
    interpreter, _ = make_interpreter(quantized, 1)
    assert interpreter.get_input_details()[0]["dtype"] == np.int8
    assert interpreter.get_output_details()[0]["dtype"] == np.int8
    ops = [op for op, _ in operator_outputs(quantized)]
    assert "DEQUANTIZE" in ops and "SQRT" in ops, (
        f"mlir_quantize(denylisted_nodes=...) no longer keeps the named op in float: {ops}"
    )


# --- keras_chanattn/_compat/tensorflow.py: TensorFlow's op-determinism switch ---


def test_tensorflow_op_determinism_switch():
    from tensorflow.python.framework import config as tf_config

    for name in ("is_op_determinism_enabled", "enable_op_determinism", "disable_op_determinism"):
        if not hasattr(tf_config, name):
            pytest.fail(
                f"tensorflow.python.framework.config has no {name}, which "
                "keras_chanattn/_compat/tensorflow.py calls: adapt it to this release."
            )
    from keras_chanattn._compat import tensorflow as adapter

    assert not adapter.is_op_determinism_enabled()
    adapter.enable_op_determinism()
    try:
        assert adapter.is_op_determinism_enabled()
    finally:
        adapter.disable_op_determinism()
    assert not adapter.is_op_determinism_enabled()


# --- keras_chanattn/_compat/litert.py: the v2 API's CPU-acceleration verdict, quietly ---


def test_compiled_model_fully_accelerated_and_its_native_lines_are_caught(capfd):
    import tensorflow as tf

    from keras_chanattn._compat.litert import compiled_model_fully_accelerated

    def flatbuffer(fn):
        traced = tf.function(fn, input_signature=[tf.TensorSpec((1, 4, 4, 2), tf.float32)])
        concrete = traced.get_concrete_function()
        return tf.lite.TFLiteConverter.from_concrete_functions([concrete], traced).convert()

    # XNNPACK has ReLU; it has no GATHER_ND.
    assert compiled_model_fully_accelerated(flatbuffer(lambda x: tf.nn.relu(x) * 2.0)) is True
    gather = flatbuffer(lambda x: tf.gather_nd(x, [[0, 1], [0, 2]]))
    assert compiled_model_fully_accelerated(gather) is False
    assert "accelerator_registry" not in capfd.readouterr().err
    with pytest.raises(RuntimeError):
        compiled_model_fully_accelerated(b"not a flatbuffer")
