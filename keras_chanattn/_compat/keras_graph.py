"""Walking a Keras 3 functional graph: its nodes, the producer of a tensor, nested layers.

Keras has no public API for the nodes of a functional model (one call of a layer, with its
input and output tensors and the arguments it was called with) or for the layer that
produced a symbolic tensor; `add_attention`, the FLOPs counter and Grad-CAM need them. The
private attributes they rest on (`_nodes_by_depth`, `_keras_history`, `_inbound_nodes`,
`_flatten_layers`, a node's `arguments.args` and `.kwargs`) are read here only, and
`tests/test_compat.py` names each one if a Keras release removes it.
"""

import keras


def is_functional(model):
    """Whether `model` is a functional `keras.Model` (built from inputs and outputs).

    Sequential models and subclassed models (whose graph is Python code) are not.
    """
    # Keras' functional model class is private; it is the public `keras.Function` that is
    # also a `keras.Model`.
    return (
        isinstance(model, keras.Model)
        and isinstance(model, keras.Function)
        and not isinstance(model, keras.Sequential)
    )


def graph_nodes(model):
    """The nodes (layer calls) of functional `model`, from its inputs to its outputs.

    Each node has `operation`, `input_tensors`, `outputs`, `parent_nodes`, `is_input` and
    `arguments` (read with `call_arguments`). A nested model is one node.
    """
    by_depth = model._nodes_by_depth  # {depth from the outputs: [node, ...]}
    return [node for depth in sorted(by_depth, reverse=True) for node in by_depth[depth]]


def call_arguments(node):
    """`(args, kwargs)` of the call that `node` records: the symbolic tensors and other
    values the layer was called with, e.g. `((x,), {"training": False})`.

    Replacing each `keras.KerasTensor` in them by a value re-runs the call eagerly
    (Grad-CAM runs a model layer by layer so).
    """
    arguments = node.arguments  # a private SymbolicArguments
    return tuple(arguments.args), dict(arguments.kwargs)


def producer(tensor):
    """The operation (layer or `keras.ops` op) that produced symbolic `tensor`."""
    return tensor._keras_history.operation


def producer_node(tensor):
    """The node (one call of an operation) that produced symbolic `tensor`."""
    operation, node_index, _ = tensor._keras_history
    return inbound_node(operation, node_index)


def inbound_node(layer, index=0):
    """The node of `layer`'s `index`-th call; `None` where it was called fewer times."""
    nodes = layer._inbound_nodes
    return nodes[index] if index < len(nodes) else None


def flatten_layers(model, recursive=True):
    """Every layer inside `model` (not itself), blocks' sub-layers too when `recursive`."""
    return model._flatten_layers(include_self=False, recursive=recursive)
