"""Reading a model's attention gates: every block's `gates` over a set of images.

`collect_gates` runs the model eagerly in inference mode, with each block's `call`
recording its input (`keras_chanattn.layers.common.recording_block_inputs`), then asks each
block for its gates on that input: the model gets no new layer, output or weight, and any
model holding blocks works (functional, Sequential, subclassed, nested models, `.keras`
files, `add_attention`'s).
"""

from collections.abc import Mapping

import keras
import numpy as np

from keras_chanattn._compat.keras_graph import flatten_layers
from keras_chanattn.layers.common import AttentionLayer, check_positive_int, recording_block_inputs


def _children(layer):
    """The layers directly inside `layer`: a model's `layers`, or a layer's sub-layers."""
    if isinstance(layer, keras.Model):
        return layer.layers
    return flatten_layers(layer, recursive=False)


def _walk(layer, prefix, seen, found):
    for child in _children(layer):
        if id(child) in seen:
            continue
        seen.add(id(child))
        path = f"{prefix}{child.name}"
        if isinstance(child, AttentionLayer):
            found.append((path, child))  # its sub-layers (CBAM's halves) are part of it
        else:
            _walk(child, f"{path}/", seen, found)


def attention_layers(model):
    """Every attention block inside `model`, nested models included: `{path: layer}`.

    The path is the block's name, preceded by the names of the models (or layers) it sits
    in, e.g. `"backbone/se_3"`; a path that would repeat gets `"#2"`, `"#3"`, ... A block
    inside another block (CBAM's halves) is part of that block and not listed. The order
    is the layers' order: the call order for functional and Sequential models, the order
    the attributes were set for subclassed ones.
    """
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(f"attention_layers takes a keras.Model, got {type(model).__name__}.")
    found = []
    _walk(model, "", {id(model)}, found)
    blocks = {}
    for path, layer in found:
        key, count = path, 1
        while key in blocks:
            count += 1
            key = f"{path}#{count}"
        blocks[key] = layer
    return blocks


def channel_weights(gates):
    """The `"channel"` gate of one block's gates, `(N, C)` as NumPy, or `None` without one.

    `gates` is one block's dict, from `layer.gates(x)` or one entry of `collect_gates`
    (SA's channel gate is `(N, C / 2)`, see `docs/blocks.md`).
    """
    if not isinstance(gates, Mapping):
        raise TypeError(
            f"channel_weights takes one block's gates, a dict {{gate_name: array}}, got "
            f"{type(gates).__name__}."
        )
    if any(isinstance(value, Mapping) for value in gates.values()):
        first = next(iter(gates))
        raise TypeError(
            "channel_weights takes one block's gates, got collect_gates' dict of blocks; "
            f"pass one entry, e.g. channel_weights(gates[{first!r}])."
        )
    gate = gates.get("channel")
    return None if gate is None else np.asarray(keras.ops.convert_to_numpy(gate))


def _expected_image_shape(model):
    """`(height, width, channels)` of the model's one input (`None` where free), or `None`
    where the model does not declare its input (a subclassed model)."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    if not inputs:
        return None
    if len(inputs) != 1:
        raise ValueError(
            f"collect_gates runs models with one image input; model {model.name!r} has "
            f"{len(inputs)} inputs. Collect from a sub-model with one image input."
        )
    return tuple(inputs[0].shape[1:])


def _check_images(model, images):
    """`images` as an array `(N, H, W, C)` that `model` takes, or a clear `ValueError`."""
    array = np.asarray(images)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"images must hold real numbers, got dtype {array.dtype}.")
    if array.ndim != 4:
        raise ValueError(
            f"images must be a batch (N, H, W, C), got shape {array.shape} (rank {array.ndim}). "
            "Pass image[None] for one image, images[..., None] for grey images without a "
            "channel axis."
        )
    if len(array) == 0:
        raise ValueError("images holds no image (shape (0, ...)); pass at least one.")
    expected = _expected_image_shape(model)
    if expected is None:
        return array
    wanted = ", ".join("?" if d is None else str(d) for d in expected)
    pairs = zip(expected, array.shape[1:], strict=False)
    if len(expected) != 3 or any(want not in (None, got) for want, got in pairs):
        raise ValueError(
            f"Model {model.name!r} takes inputs of shape (N, {wanted}), got images of shape "
            f"{array.shape}. Resize the images to the model's height, width and channels."
        )
    return array


def _gates_of_batch(model, paths, batch):
    """`{key: {gate: array}}` for one batch: each recorded block call's gates."""
    calls = []
    with recording_block_inputs(lambda layer, inputs: calls.append((layer, inputs))):
        model(batch, training=False)
    gates, counts = {}, {}
    for layer, inputs in calls:
        key = paths.get(id(layer), layer.name)
        counts[key] = counts.get(key, 0) + 1
        if counts[key] > 1:  # one block called several times (a shared layer)
            key = f"{key}@{counts[key]}"
        gates[key] = {
            name: np.asarray(keras.ops.convert_to_numpy(gate), np.float32)
            for name, gate in layer.gates(inputs, training=False).items()
        }
    return gates


def collect_gates(model, images, batch_size=32):
    """Every attention block's gates over `images`: `{block_path: {gate_name: array}}`.

    Runs `model(batch, training=False)` eagerly over `images` in batches, and for each
    block it calls, its `gates` on the input it received (see `docs/blocks.md` for each
    block's gate names and shapes). The model is not changed: no layer, output or weight
    is added, and inference mode leaves BatchNorm statistics alone.

    Args:
        model: a built `keras.Model` holding attention blocks (functional, Sequential or
            subclassed; nested models, `.keras` files and `add_attention`'s models work).
        images: a NumPy array `(N, H, W, C)` of what the model takes.
        batch_size: images per forward pass. Defaults to `32`.

    Returns:
        `{path: {gate_name: np.ndarray}}`, in the order the blocks ran, the path as
        `attention_layers` names it (`"backbone/se_3"`); each gate is concatenated over the
        batches, `(N, ...)`, in float32 (float16 gates of a mixed-precision model too). A
        block called several times per pass gets one entry per call, `path@2`, ...

    Raises:
        TypeError: `model` is not a `keras.Model`.
        ValueError: the model holds no attention block, is not built, takes several
            inputs; images not of shape `(N, H, W, C)` (or not the model's), not real
            numbers; a bad `batch_size`. All before any image is run.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"collect_gates takes a keras.Model, got {type(model).__name__}. For one block, "
            "call layer.gates(x)."
        )
    blocks = attention_layers(model)
    if not blocks:
        raise ValueError(
            f"Model {model.name!r} holds no attention block (keras_chanattn AttentionLayer), "
            "so it has no gates to collect. Add blocks with keras_chanattn.add_attention("
            "model, 'se'), or pass a model built with blocks (keras_chanattn.models)."
        )
    if not model.built:
        raise ValueError(
            f"Model {model.name!r} is not built; its blocks have no weights yet. Build it "
            "(call it on a batch, or load its trained weights) before collecting gates."
        )
    images = _check_images(model, images)
    batch_size = check_positive_int("batch_size", batch_size)
    paths = {id(layer): path for path, layer in blocks.items()}
    parts = {}
    for start in range(0, len(images), batch_size):
        for key, gates in _gates_of_batch(model, paths, images[start : start + batch_size]).items():
            for name, gate in gates.items():
                parts.setdefault(key, {}).setdefault(name, []).append(gate)
    return {
        key: {name: np.concatenate(arrays) for name, arrays in gates.items()}
        for key, gates in parts.items()
    }
