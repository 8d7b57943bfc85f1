"""keras-hub blocks whose residual add hides inside the layer, unrolled for `add_attention`.

keras-hub's `MobileNetBackbone` adds the residual inside its block layers (`x = inputs + x`
in `call`), so its graph has no `Add` to find. `add_attention` recognises these blocks and
unrolls them: their sub-layers are called in the new graph, the attention block goes
before the add, and the add becomes an `Add` layer.
"""

import keras

INVERTED_RESIDUAL = "keras_hub_inverted_residual"
DEPTHWISE = "keras_hub_depthwise"


def keras_hub_kind(operation):
    """`INVERTED_RESIDUAL` or `DEPTHWISE` for a keras-hub block with an inner add, else None."""
    cls = type(operation)
    if not cls.__module__.startswith("keras_hub."):
        return None
    if cls.__name__ == "InvertedResidualBlock":
        if operation.stride == 1 and operation.infilters == operation.filters:
            return INVERTED_RESIDUAL
    if cls.__name__ == "DepthwiseConvBlock" and operation.residual:
        return DEPTHWISE
    return None


def unroll_keras_hub_block(block, inputs, kind, attend):
    """Calls a keras-hub MobileNet block's sub-layers with `attend(x, dtype)` before its add."""
    x = inputs
    for step in _residual_branch(block, kind):
        x = step(x)
    x = attend(x, block.dtype_policy)
    return keras.layers.Add(name=f"{block.name}_add", dtype=block.dtype_policy)([inputs, x])


def _residual_branch(block, kind):
    """The sub-layers of `block`'s residual branch, in call order."""
    try:
        if kind == INVERTED_RESIDUAL:
            steps = [
                block.conv1,
                block.batch_normalization1,
                block.activation1,
                block.pad,
                block.conv2,
                block.batch_normalization2,
                block.activation2,
            ]
            if block.squeeze_excite:
                steps.append(block.squeeze_excite)
            return steps + [block.conv3, block.batch_normalization3]
        steps = [block.pad, block.conv1, block.batch_normalization1, block.activation1]
        if block.squeeze_excite_ratio:
            steps.append(block.se_layer)
        return steps + [block.conv2, block.batch_normalization2]
    except AttributeError as error:
        raise ValueError(
            f"This version of keras-hub's {type(block).__name__} is not one add_attention "
            f"knows how to unroll ({error}); keras-hub 0.32 is supported."
        ) from error
