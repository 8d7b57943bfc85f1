"""Where a model's channels can be pruned: attention blocks between two convolutions.

A site is an attention block whose input comes from a convolution through channel-wise
layers only (BatchNorm, activations, padding, pooling, a depthwise convolution) and whose
output reaches another convolution the same way, every tensor on the way feeding the next
layer only. Its channels then belong to that stretch alone: removing one removes a filter
of the producing convolution, the matching entries of every channel-wise layer and of the
block, and an input channel of the consuming convolution. A block whose output reaches a
residual `Add` (the `"standard"` position) is not a site: its channels are the shortcut's
too.
"""

import dataclasses

import keras

from keras_chanattn._compat import keras_graph
from keras_chanattn.layers.common import AttentionLayer

# Layers that map channel c to channel c alone, with at most per-channel weights.
_CHANNELWISE = (
    keras.layers.BatchNormalization,
    keras.layers.Activation,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.ELU,
    keras.layers.Dropout,
    keras.layers.SpatialDropout2D,
    keras.layers.ZeroPadding2D,
    keras.layers.MaxPooling2D,
    keras.layers.AveragePooling2D,
    keras.layers.DepthwiseConv2D,
)

POSITION_HINT = (
    'Prunable positions: "3x3" in keras_chanattn ResNets (inside the residual branch, '
    "between its convolutions) and the default MobileNetV2 position (after the depthwise "
    'convolution); the "standard", "pre", "post" and "identity" positions tie the '
    "block's channels to a residual sum."
)


@dataclasses.dataclass(frozen=True)
class PruneSite:
    """One prunable attention block and the layers its channels run through.

    Attributes:
        block: the block's layer name (its path in `collect_gates`).
        channels: its channel count.
        producer: the convolution whose filters make the channels.
        before: the channel-wise layers from the producer to the block, in graph order.
        after: the channel-wise layers from the block to the consumer.
        consumer: the convolution that reads the channels as its input channels.
        scoring_conv: the convolution nearest before the block (a depthwise one in
            MobileNetV2), whose filters' L1 norms `prune_by_l1` ranks.
    """

    block: str
    channels: int
    producer: str
    before: tuple
    after: tuple
    consumer: str
    scoring_conv: str


class _NotASite(Exception):
    """Why a block is not a prunable site (collected into the user's error message)."""


def _is_conv(layer):
    return isinstance(layer, keras.layers.Conv2D) and not isinstance(
        layer, (keras.layers.Conv2DTranspose,)
    )


def _is_channelwise(layer):
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return layer.depth_multiplier == 1
    if isinstance(layer, keras.layers.BatchNormalization):
        return layer.axis in (-1, 3, [-1], [3])
    return isinstance(layer, _CHANNELWISE)


def _describe(layer):
    return f"{layer.name!r} ({type(layer).__name__})"


class _Graph:
    """The model's nodes read once: who reads each tensor, the outputs, calls per layer.

    Calls are counted in this model's graph only: a layer also called in another model
    (a feature extractor built on the same layers) is not shared here.
    """

    def __init__(self, model):
        self.nodes = keras_graph.graph_nodes(model)
        self.consumers, self.calls = {}, {}
        for node in self.nodes:
            self.calls[id(node.operation)] = self.calls.get(id(node.operation), 0) + 1
            for tensor in node.input_tensors:
                self.consumers.setdefault(id(tensor), []).append(node)
        self.outputs = {id(tensor) for tensor in keras.tree.flatten(model.outputs)}

    def check_single_call(self, layer):
        if self.calls.get(id(layer), 0) > 1:
            raise _NotASite(f"{_describe(layer)} is called more than once (a shared layer)")


def _only_consumer(tensor, graph):
    """The one node that reads `tensor`, or `_NotASite`."""
    if id(tensor) in graph.outputs:
        raise _NotASite("its channels are a model output")
    readers = graph.consumers.get(id(tensor), [])
    if len(readers) != 1:
        names = ", ".join(_describe(node.operation) for node in readers)
        raise _NotASite(f"its channels also feed other layers ({names})")
    return readers[0]


def _walk_back(node, graph):
    """`(producer, before, scoring_conv)` of the block at `node`."""
    chain, scoring, tensor = [], None, node.input_tensors[0]
    while True:
        _only_consumer(tensor, graph)
        parent = keras_graph.producer_node(tensor)
        layer = parent.operation
        if parent.is_input or not isinstance(layer, keras.layers.Layer):
            raise _NotASite("its input does not come from a convolution")
        graph.check_single_call(layer)
        if _is_conv(layer):
            if layer.groups != 1:
                raise _NotASite(f"its producing convolution {_describe(layer)} is grouped")
            return layer, tuple(reversed(chain)), scoring or layer
        if not _is_channelwise(layer):
            raise _NotASite(f"its input comes from {_describe(layer)}, not from a convolution")
        if scoring is None and isinstance(layer, keras.layers.DepthwiseConv2D):
            scoring = layer
        chain.append(layer)
        tensor = parent.input_tensors[0]


def _walk_forward(node, graph):
    """`(consumer, after)` of the block at `node`."""
    chain, tensor = [], node.outputs[0]
    while True:
        reader = _only_consumer(tensor, graph)
        layer = reader.operation
        if isinstance(layer, keras.layers.Add) or type(layer).__name__ == "Add":
            raise _NotASite(
                f"its output feeds the residual add {layer.name!r}, which ties its channels "
                "to the shortcut's"
            )
        if not isinstance(layer, keras.layers.Layer):
            raise _NotASite(f"its output feeds the operation {layer.name!r}")
        graph.check_single_call(layer)
        if _is_conv(layer):
            if layer.groups != 1:
                raise _NotASite(f"its consuming convolution {_describe(layer)} is grouped")
            return layer, tuple(chain)
        if isinstance(layer, AttentionLayer) or not _is_channelwise(layer):
            raise _NotASite(f"its output feeds {_describe(layer)}, not a convolution")
        chain.append(layer)
        tensor = reader.outputs[0]


def _site(node, graph):
    block = node.operation
    graph.check_single_call(block)
    channels = node.input_tensors[0].shape[-1]
    if len(node.input_tensors) != 1 or len(node.input_tensors[0].shape) != 4:
        raise _NotASite("it does not take one 4-D feature map")
    producer, before, scoring = _walk_back(node, graph)
    consumer, after = _walk_forward(node, graph)
    return PruneSite(
        block=block.name,
        channels=int(channels),
        producer=producer.name,
        before=tuple(layer.name for layer in before),
        after=tuple(layer.name for layer in after),
        consumer=consumer.name,
        scoring_conv=scoring.name,
    )


def find_prune_sites(model):
    """`(sites, refused)`: `{block: PruneSite}` and `{block: reason}` for `model`'s blocks.

    Only the top-level graph of a functional model is searched; a block inside a nested
    model is refused with the advice to prune that model.
    """
    check_functional(model)
    graph = _Graph(model)
    sites, refused = {}, {}
    for node in graph.nodes:
        layer = node.operation
        if isinstance(layer, keras.Model):
            for inner in keras_graph.flatten_layers(layer):
                if isinstance(inner, AttentionLayer):
                    refused[f"{layer.name}/{inner.name}"] = (
                        f"it sits inside the nested model {layer.name!r}; prune that model"
                    )
            continue
        if not isinstance(layer, AttentionLayer):
            continue
        try:
            sites[layer.name] = _site(node, graph)
        except _NotASite as reason:
            refused[layer.name] = str(reason)
    return sites, refused


def check_functional(model):
    """Raises a clear `ValueError` unless `model` is a functional `keras.Model`."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"Pruning takes a keras.Model, got {type(model).__name__}.")
    if isinstance(model, keras.Sequential) or not keras_graph.is_functional(model):
        raise ValueError(
            f"Model {model.name!r} ({type(model).__name__}) is not a functional model; pruning "
            "rewrites a functional graph. Build it with keras.Model(inputs, outputs) (the "
            "keras_chanattn.models builders do)."
        )


def prune_sites(model):
    """`(sites, refused)` as `find_prune_sites`, or a `ValueError` saying why no block of
    `model` is prunable."""
    sites, refused = find_prune_sites(model)
    if not sites:
        if not refused:
            raise ValueError(
                f"Model {model.name!r} holds no attention block, so it has no prunable "
                f"channels. {POSITION_HINT}"
            )
        reasons = "; ".join(f"{name}: {why}" for name, why in list(refused.items())[:4])
        more = f" (and {len(refused) - 4} more)" if len(refused) > 4 else ""
        raise ValueError(
            f"Model {model.name!r} has no prunable attention block: {reasons}{more}. "
            f"{POSITION_HINT}"
        )
    return sites, refused
