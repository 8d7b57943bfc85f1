"""A classifier's softmax head: found, taken off for full int8, and told apart in a `.tflite`.

LiteRT's CPU accelerator (XNNPACK) has no int8 SOFTMAX, so a full-int8 classifier ending in
softmax (the builders' default `classifier_activation="softmax"`) leaves that op to LiteRT's
own kernels: one op outside the accelerator, a second XNNPACK partition boundary. Full int8
therefore converts the model without it (the file outputs logits; the app applies softmax,
or just takes the arg max: top-1 is the same). Float formats keep it: XNNPACK takes a float
SOFTMAX. Verification compares like with like: a file without the head against the Keras
model's logits.
"""

import keras

from keras_chanattn._compat.keras_graph import is_functional, producer_node
from keras_chanattn.export.graph import operator_outputs

KEPT = "kept"
LEFT_TO_APP = "left to the app"


def _is_softmax(activation):
    return getattr(activation, "__name__", None) == "softmax"


def _head_node(model):
    """The node (layer call) making the single output of functional `model`, or `None`."""
    if not is_functional(model) or len(model.outputs) != 1:
        return None
    return producer_node(model.outputs[0])


def softmax_layer(model):
    """The layer whose softmax makes the single output of functional `model`, or `None`: a
    layer with `activation="softmax"` (a `Dense` head), an `Activation("softmax")` or a
    `Softmax` layer. Read from the graph, so a layer shared with another model (an inference
    form's clone) is found in this one's."""
    node = _head_node(model)
    layer = None if node is None else node.operation
    if isinstance(layer, keras.layers.Softmax):
        return layer
    return layer if _is_softmax(getattr(layer, "activation", None)) else None


def without_softmax(model):
    """`model` ending in its logits: its graph up to the softmax head's input, then (for a
    layer with a softmax activation) a copy of that layer with a linear activation and the
    same weights. Shares every other layer with `model` (names kept, for op attribution)."""
    layer = softmax_layer(model)
    if layer is None:
        raise ValueError(f"Model {model.name!r} does not end in a softmax.")
    logits = _head_node(model).input_tensors[0]
    if not isinstance(layer, (keras.layers.Softmax, keras.layers.Activation)):
        linear = layer.__class__.from_config({**layer.get_config(), "activation": "linear"})
        logits = linear(logits)
        linear.set_weights(layer.get_weights())
    return keras.Model(model.input, logits, name=model.name)


def ends_in_softmax(tflite_bytes):
    """Whether the `.tflite`'s main graph ends in a SOFTMAX op (its last operator)."""
    ops = operator_outputs(tflite_bytes)
    return bool(ops) and ops[-1][0] == "SOFTMAX"
