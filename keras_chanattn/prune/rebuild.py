"""Rebuilding a functional model without the pruned channels, weights sliced to match.

The graph is cloned with `keras.models.clone_model`: every layer is re-created from its
config (a producing convolution with fewer filters, a block from its `slice_channels`)
and given a copy of its weights, sliced where its channels were pruned. The original
model is not modified and shares nothing with the new one.
"""

import keras
import numpy as np

from keras_chanattn._compat import keras_graph
from keras_chanattn.prune.sites import prune_sites


def _layer_plan(model, keep):
    """`{layer name: {"in": indices, "out": indices}}` from `{block: kept indices}`."""
    sites, _ = prune_sites(model)
    plan = {}
    for name, indices in keep.items():
        site = sites[name]
        plan.setdefault(site.producer, {})["out"] = indices
        for layer in (*site.before, name, *site.after):
            plan[layer] = {"in": indices, "out": indices}
        plan.setdefault(site.consumer, {})["in"] = indices
    return plan


def _variable_name(variable):
    return variable.path.rsplit("/", 1)[-1]


def _sliced_weights(layer, entry):
    """`layer`'s weights (its `weights` order) with its pruned channels taken out."""
    values = []
    for variable in layer.weights:
        value = np.asarray(keras.ops.convert_to_numpy(variable))
        name = _variable_name(variable)
        if isinstance(layer, keras.layers.BatchNormalization):
            value = value[entry["out"]]
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            value = value[:, :, entry["out"]] if name == "kernel" else value[entry["out"]]
        elif name == "kernel":  # Conv2D: (kh, kw, in, out)
            if "in" in entry:
                value = value[:, :, entry["in"]]
            if "out" in entry:
                value = value[..., entry["out"]]
        elif name == "bias" and "out" in entry:
            value = value[entry["out"]]
        values.append(value)
    return values


class _Cloner:
    """The `clone_function` of `prune_channels`: new layers, and what each one receives."""

    def __init__(self, plan):
        self.plan = plan
        self.pairs = []  # (original, clone, weights)

    def __call__(self, layer):
        if not isinstance(layer, keras.layers.Layer):
            return layer  # a stateless keras.ops operation
        entry = self.plan.get(layer.name)
        config = layer.get_config()
        if entry is None:
            weights = layer.get_weights()
        elif hasattr(layer, "slice_channels"):
            config, weights = layer.slice_channels(entry["out"])
        else:
            weights = _sliced_weights(layer, entry)
            if isinstance(layer, keras.layers.Conv2D) and "out" in entry:
                config["filters"] = len(entry["out"])
        clone = layer.__class__.from_config(config)
        self.pairs.append((clone, weights))
        return clone


def prune_channels(model, keep, name=None):
    """A new functional model without the channels that `keep` leaves out.

    Args:
        model: the functional model (left unchanged).
        keep: `{block name: kept channel indices}` for some of its prunable blocks, as
            `plan_pruning` returns.
        name: the new model's name. Defaults to the original's with `"_pruned"`.

    Returns:
        A `keras.Model` whose producing convolutions, channel-wise layers, blocks and
        consuming convolutions have only the kept channels, weights copied and sliced.
    """
    cloner = _Cloner(_layer_plan(model, keep))

    def new_input(tensor):
        name = keras_graph.producer(tensor).name
        return keras.Input(batch_shape=tensor.shape, dtype=tensor.dtype, name=name)

    input_tensors = keras.tree.map_structure(new_input, model.input)
    clone = keras.models.clone_model(model, input_tensors=input_tensors, clone_function=cloner)
    for layer, weights in cloner.pairs:
        if weights:
            layer.set_weights(weights)
    return keras.Model(clone.input, clone.output, name=name or f"{model.name}_pruned")
