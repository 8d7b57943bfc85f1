"""Grad-CAM and Grad-CAM++: which image regions a Keras classifier's class score comes from.

Works on any functional or Sequential classifier, including one that nests its backbone as
a layer (a `keras.applications` model inside an outer model, or a model after
`add_attention`): the model is run layer by layer, eagerly, descending into the nested
models on the way to the chosen layer, so that the feature map `A` of a layer deep inside a
nested model can be watched by a `tf.GradientTape`. Nothing is added to the model's graph
and its layers are called as they are (inference mode), so the model is left untouched.

Which score is differentiated: the class's pre-softmax logit where the model ends in a
softmax that can be separated cleanly (a final `Softmax` layer, an `Activation("softmax")`,
or a last layer built with `activation="softmax"` such as `keras.applications`'
`predictions` Dense, which is run as a linear twin carrying the same weights); otherwise
the model's output score itself. The softmax couples every class (the gradient of one
probability also carries minus every other class's evidence, and vanishes where the model
is confident), which is why Grad-CAM's authors use the logit. `GradCAMResult.score` says
which one was used.
"""

import dataclasses
import difflib
import inspect

import keras
import numpy as np

from keras_chanattn._compat import keras_graph
from keras_chanattn.backend import require_tensorflow
from keras_chanattn.images import ImageSpec, as_images


@dataclasses.dataclass(frozen=True)
class GradCAMResult:
    """The class activation maps of a batch of images.

    Attributes:
        maps: float32 `(N, h, w)`, at the layer's resolution, after the ReLU (not
            normalised: comparable across images of one call).
        upsampled: float32 `(N, H, W)`, `maps` resized bilinearly to the image size and
            scaled to `[0, 1]` per image (min to max; a constant map gives zeros).
        class_index: int `(N,)`, the class each map explains.
        layer: the name of the layer whose feature map was used.
        score: `"logit"` (the pre-softmax logit) or `"output"` (the model's output).
    """

    maps: np.ndarray
    upsampled: np.ndarray
    class_index: np.ndarray
    layer: str
    score: str


@dataclasses.dataclass
class _Plan:
    """What one Grad-CAM run needs, all checked before any computation."""

    target: keras.layers.Layer
    containers: set  # ids of the nested models on the way to the target or the head
    skip: object = None  # a final softmax layer, passed over to reach the logits
    head: object = None  # a final layer with a softmax activation ...
    linear_head: object = None  # ... and its linear twin that gives the logits


def grad_cam(model, images, layer=None, class_index=None, batch_size=32, plus_plus=False):
    """Grad-CAM (or Grad-CAM++) maps of `images` for `model`'s class scores.

    Grad-CAM (Selvaraju et al., 2017): with `A` the layer's feature map `(h, w, K)` and `g`
    the gradient of the class score `S_c` with respect to `A`, channel weights
    `w_k = mean_ij g_ijk` and the map `ReLU(sum_k w_k A_k)`.

    Grad-CAM++ (Chattopadhay et al., 2018), in its closed form for an exponential link
    `Y_c = exp(S_c)` (whose higher derivatives are powers of `g`, the exp factors
    cancelling): `alpha_ijk = g^2 / (2 g^2 + (sum_ab A_abk) g^3)` (0 where the denominator
    is 0), `w_k = sum_ij alpha_ijk ReLU(g_ijk)` (the positive factor `exp(S_c)` of the paper's
    `ReLU(dY/dA)` is dropped: it scales a map, not its shape), map `ReLU(sum_k w_k A_k)`.

    Args:
        model: a functional or Sequential `keras.Model` taking one NHWC image input and
            returning class scores `(N, classes)`; nested models are searched for `layer`.
        images: float array `(N, H, W, C)` of the model's input size (or an
            `(images, labels)` tuple, or a `tf.data.Dataset` for a model of fixed size).
        layer: the layer whose output feature map `(N, h, w, K)` is explained: a name or
            a layer object. Defaults to `None`: the last layer (in call order, nested
            models included) whose output is 4-D, i.e. the last convolutional feature map.
        class_index: the class to explain: `None` (each image's predicted class), an int
            for all images, or `N` ints. Defaults to `None`.
        batch_size: images per forward and backward pass. Defaults to `32`.
        plus_plus: compute Grad-CAM++ instead of Grad-CAM. Defaults to `False`.

    Returns:
        A `GradCAMResult`.

    Raises:
        keras_chanattn.backend.BackendError: Keras runs on a backend other than TensorFlow.
        ValueError: a model that is not a single-input classifier or whose layers cannot
            be reached (subclassed), an unknown layer name (close matches listed), a layer
            whose output is not 4-D or that is called more than once, images of the wrong
            shape, a class index out of range, or a bad `batch_size`; all raised before any
            computation.
    """
    require_tensorflow("Grad-CAM (grad_cam)")
    classes = check_classifier(model)
    target, _ = resolve_layer(model, layer)
    plan = _plan(model, target)
    images = _check_images(model, images)
    indices = _check_class_index(class_index, len(images), classes)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}.")

    maps, used = [], []
    for start in range(0, len(images), batch_size):
        stop = start + batch_size
        chosen = None if indices is None else indices[start:stop]
        features, grads, picked = _gradients(model, plan, images[start:stop], chosen)
        maps.append(_cam(features, grads, plus_plus))
        used.append(picked)
    maps = np.concatenate(maps).astype("float32")
    return GradCAMResult(
        maps=maps,
        upsampled=upsample(maps, images.shape[1:3]),
        class_index=np.concatenate(used).astype("int64"),
        layer=target.name,
        score="output" if plan.skip is None and plan.head is None else "logit",
    )


def cam_from_gradients(features, gradients, plus_plus=False):
    """The Grad-CAM (or Grad-CAM++) maps `(N, h, w)` of feature maps and their gradients.

    `features` and `gradients` are `(N, h, w, K)` arrays (see `grad_cam` for the formulas);
    useful where the gradient comes from elsewhere (another framework, a custom score).
    """
    features, gradients = np.asarray(features), np.asarray(gradients)
    if features.ndim != 4 or features.shape != gradients.shape:
        raise ValueError(
            "features and gradients must be two (N, h, w, K) arrays of the same shape, got "
            f"{features.shape} and {gradients.shape}."
        )
    return _cam(features, gradients, plus_plus).astype("float32")


def _cam(features, grads, plus_plus):
    a = features.astype("float64")
    g = grads.astype("float64")
    if plus_plus:
        g2 = g * g
        denominator = 2.0 * g2 + a.sum(axis=(1, 2), keepdims=True) * g2 * g
        nonzero = denominator != 0
        alpha = np.where(nonzero, g2 / np.where(nonzero, denominator, 1.0), 0.0)
        weights = (alpha * np.maximum(g, 0.0)).sum(axis=(1, 2))
    else:
        weights = g.mean(axis=(1, 2))
    return np.maximum(np.einsum("nhwk,nk->nhw", a, weights), 0.0)


def upsample(maps, size):
    """`maps` `(N, h, w)` resized bilinearly to `size` `(H, W)`, each scaled to `[0, 1]`.

    Scaling is min to max per map; a constant map (no evidence anywhere) gives zeros.
    """
    maps = np.asarray(maps, dtype="float32")
    if maps.ndim != 3:
        raise ValueError(f"maps must be an (N, h, w) array, got shape {maps.shape}.")
    resized = keras.ops.image.resize(
        maps[..., None], tuple(int(s) for s in size), interpolation="bilinear"
    )
    resized = keras.ops.convert_to_numpy(resized)[..., 0].astype("float64")
    low = resized.min(axis=(1, 2), keepdims=True)
    span = resized.max(axis=(1, 2), keepdims=True) - low
    scaled = np.where(span > 0, (resized - low) / np.where(span > 0, span, 1.0), 0.0)
    return scaled.astype("float32")


def last_feature_layer(model):
    """The last layer of `model` (in call order, nested models included) with a 4-D output.

    This is `grad_cam`'s default layer: the last convolutional feature map before the
    classifier's pooling.
    """
    found = [layer for layer, outputs, _ in _layer_calls(model) if _is_feature_map(outputs)]
    if not found:
        raise ValueError(
            f"Model {model.name!r} has no layer with a 4-D output (batch, height, width, "
            "channels); Grad-CAM explains a convolutional feature map."
        )
    return found[-1]


def resolve_layer(model, layer=None):
    """The layer `grad_cam` would use for `layer` (a name, a layer, or `None`), and the
    shape of its feature map; raises `ValueError` for an unknown, ambiguous or non-4-D one."""
    calls = list(_layer_calls(model))
    if layer is None:
        target = last_feature_layer(model)
    elif isinstance(layer, keras.layers.Layer):
        target = layer
        if not any(found is layer for found, _, _ in calls):
            raise ValueError(
                f"Layer {layer.name!r} is not a layer of model {model.name!r} (or of a model "
                "nested in it). Pass one of its layers, or a layer name."
            )
    elif isinstance(layer, str):
        target = _layer_by_name(model, calls, layer)
    else:
        raise ValueError(f"layer must be a layer name, a layer or None, got {layer!r}.")
    outputs = [outputs for found, outputs, _ in calls if found is target]
    if len(outputs) > 1:
        raise ValueError(
            f"Layer {target.name!r} is called {len(outputs)} times in model {model.name!r}, "
            "so its feature map is ambiguous. Pick a layer that is called once."
        )
    if not _is_feature_map(outputs[0]):
        shapes = [tuple(t.shape) for t in outputs[0]]
        raise ValueError(
            f"Layer {target.name!r} outputs {shapes[0] if len(shapes) == 1 else shapes}, not "
            "a 4-D feature map (batch, height, width, channels). Pick a convolutional layer "
            f"(the default, layer=None, is the last one: {last_feature_layer(model).name!r})."
        )
    return target, tuple(outputs[0][0].shape)


def _layer_by_name(model, calls, name):
    matches = {id(found): found for found, _, _ in calls if found.name == name}
    if not matches:
        names = list(dict.fromkeys(found.name for found, _, _ in calls))
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
        hint = f" Close matches: {close}." if close else ""
        raise ValueError(
            f"Model {model.name!r} has no layer named {name!r} (nested models included)."
            f"{hint} See model.summary(expand_nested=True) for the names."
        )
    if len(matches) > 1:
        raise ValueError(
            f"Model {model.name!r} has {len(matches)} layers named {name!r} (in nested "
            "models). Pass the layer object instead, e.g. "
            "model.get_layer(<nested model>).get_layer(name)."
        )
    return next(iter(matches.values()))


def _is_feature_map(outputs):
    return len(outputs) == 1 and len(outputs[0].shape) == 4


def _layer_calls(model, path=()):
    """Yields `(layer, output tensors, nested models on the way)` for each layer call of
    `model`, in call order, descending into nested functional and Sequential models."""
    if isinstance(model, keras.Sequential):
        layers_and_outputs = [(layer, _sequential_outputs(model, layer)) for layer in model.layers]
    elif keras_graph.is_functional(model):
        layers_and_outputs = [
            (node.operation, node.outputs)
            for node in keras_graph.graph_nodes(model)
            if not node.is_input and isinstance(node.operation, keras.layers.Layer)
        ]
    else:
        raise _subclassed_error(model)
    for layer, outputs in layers_and_outputs:
        if _is_walkable(layer):
            yield from _layer_calls(layer, (*path, layer))
        elif not isinstance(layer, keras.layers.InputLayer):
            yield layer, outputs, path


def _is_walkable(layer):
    """Whether Grad-CAM can run `layer` layer by layer: a functional or Sequential model.

    A nested subclassed model is run whole, as any other layer."""
    return isinstance(layer, keras.Sequential) or keras_graph.is_functional(layer)


def _subclassed_error(model):
    return ValueError(
        f"Model {model.name!r} ({type(model).__name__}) is a subclassed model: its layers "
        "are called from Python code that Grad-CAM cannot reach. Build it functionally "
        "(keras.Model(inputs, outputs)) or as a keras.Sequential."
    )


def _sequential_outputs(model, layer):
    try:
        return keras.tree.flatten(layer.output)
    except (AttributeError, ValueError):
        raise ValueError(
            f"Sequential model {model.name!r} is not built; give it a keras.Input first, or "
            "call it on a batch of images."
        ) from None


def check_classifier(model):
    """The number of classes of `model`, or the `ValueError` `grad_cam` raises for a model
    it cannot explain: one NHWC image input and one `(N, classes)` output, functional or
    Sequential. Lets a caller refuse such a model before any work."""
    if not isinstance(model, keras.Model):
        raise ValueError(f"grad_cam takes a keras.Model, got {type(model).__name__}.")
    if not _is_walkable(model):
        raise _subclassed_error(model)
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):
        inputs = outputs = None
    if not inputs or not outputs:
        raise ValueError(
            f"Model {model.name!r} ({type(model).__name__}) has no defined inputs and "
            "outputs; build it on keras.Input((height, width, channels)) (functional or "
            "Sequential)."
        )
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise ValueError(
            f"grad_cam needs a model with one image input (batch, height, width, channels), "
            f"but {model.name!r} takes {[tuple(t.shape) for t in inputs]}."
        )
    shapes = [tuple(t.shape) for t in outputs]
    if len(shapes) != 1 or len(shapes[0]) != 2 or shapes[0][1] is None:
        raise ValueError(
            f"Model {model.name!r} is not a classifier: it returns {shapes}, where Grad-CAM "
            "needs one output of class scores (batch, classes). Pass the model with its "
            "classification head (pooling and Dense layer)."
        )
    return int(shapes[0][1])


def _check_images(model, images):
    _, height, width, channels = model.inputs[0].shape
    shape = tuple(images.shape) if hasattr(images, "shape") else ()
    if height is None or width is None:
        if len(shape) != 4:
            raise ValueError(
                f"Model {model.name!r} takes images of any size, so images must be one "
                f"array (N, height, width, {channels}); got "
                f"{'shape ' + str(tuple(shape)) if shape else type(images).__name__}."
            )
        height = height or shape[1]
        width = width or shape[2]
    spec = ImageSpec(int(height), int(width), int(channels), "float32")
    return as_images(images, spec, "images")


def _check_class_index(class_index, count, classes):
    """`None`, or an int array `(count,)` of class indices in `[0, classes)`."""
    if class_index is None:
        return None
    if isinstance(class_index, (bool, np.bool_)):
        raise ValueError(f"class_index must be None, an int or {count} ints, got a bool.")
    array = np.asarray(class_index)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"class_index must be None, an int or {count} ints, got {class_index!r} "
            f"(dtype {array.dtype})."
        )
    if array.ndim == 0:
        array = np.full(count, int(array))
    if array.shape != (count,):
        raise ValueError(
            f"class_index must be one int or one per image ({count}), got shape {array.shape}."
        )
    bad = array[(array < 0) | (array >= classes)]
    if bad.size:
        raise ValueError(
            f"class_index {int(bad[0])} is out of range: the model has {classes} classes "
            f"(0 to {classes - 1})."
        )
    return array.astype("int64")


def _plan(model, target):
    """Which nested models to enter (on the way to `target` and to the final layer), and
    how the pre-softmax logits are reached, if they can be."""
    containers = set()
    for layer, _, path in _layer_calls(model):
        if layer is target:
            containers.update(id(m) for m in path)
    plan = _Plan(target=target, containers=containers)
    final, final_input, path = _final_layer(model)
    if final is None or final is target:
        return plan
    if isinstance(final, keras.layers.Softmax) and final.axis in (-1, 1):
        plan.skip = final
    elif isinstance(final, keras.layers.Activation) and _is_softmax(final.activation):
        plan.skip = final
    elif _is_softmax(getattr(final, "activation", None)):
        plan.linear_head = _linear_twin(final, final_input)
        plan.head = final if plan.linear_head is not None else None
    if plan.skip is not None or plan.head is not None:
        containers.update(id(m) for m in path)
    return plan


def _is_softmax(activation):
    return activation is keras.activations.softmax


def _final_layer(model, path=()):
    """`(layer, its input tensor, nested models on the way)` of the layer producing the
    model's output; `(None, None, path)` where it is not a single-input layer."""
    if isinstance(model, keras.Sequential):
        layer = model.layers[-1]
        inputs = keras.tree.flatten(layer.input)
    else:
        node = keras_graph.producer_node(model.outputs[0])
        layer, inputs = node.operation, node.input_tensors
    if _is_walkable(layer):
        return _final_layer(layer, (*path, layer))
    if not isinstance(layer, keras.layers.Layer) or len(inputs) != 1:
        return None, None, path
    return layer, inputs[0], path


def _linear_twin(layer, layer_input):
    """A copy of `layer` with a linear activation and the same weights; `None` where the
    layer cannot be re-created so (the output score is then used)."""
    try:
        config = dict(layer.get_config(), activation="linear")
        for key in ("kernel_initializer", "bias_initializer"):
            if key in config:  # overwritten below: leave the global random state alone
                config[key] = "zeros"
        twin = type(layer).from_config(config)
        twin.build(tuple(layer_input.shape))
        twin.set_weights(layer.get_weights())
    except (TypeError, ValueError, KeyError, NotImplementedError):
        return None
    return twin


def _gradients(model, plan, images, class_index):
    """`(feature maps, gradients of the class scores with respect to them, classes)` of
    one batch, as NumPy arrays."""
    import tensorflow as tf

    runner = _Runner(plan)
    with tf.GradientTape() as tape:
        runner.watch = tape.watch
        outputs = runner.run(model, [tf.convert_to_tensor(images)])
        scores = tf.cast(outputs[0], "float32")
        if class_index is None:
            class_index = tf.argmax(scores, axis=-1)
        class_index = tf.cast(class_index, "int64")
        picked = tf.gather(scores, class_index, axis=1, batch_dims=1)
        total = tf.reduce_sum(picked)  # each image's score depends on its own features only
    if runner.feature is None:
        raise ValueError(f"Layer {plan.target.name!r} was not reached when running the model.")
    grads = tape.gradient(total, runner.feature)
    if grads is None:
        raise ValueError(
            f"The model's output does not depend on layer {plan.target.name!r}; pick a layer "
            "on the path from the input to the classifier."
        )
    feature = tf.cast(runner.feature, "float32")
    return feature.numpy(), tf.cast(grads, "float32").numpy(), class_index.numpy()


class _Runner:
    """Runs a model layer by layer in inference mode, entering the planned nested models,
    watching the target layer's output and stopping short of a separable final softmax."""

    def __init__(self, plan):
        self.plan = plan
        self.watch = None
        self.feature = None

    def run(self, model, inputs):
        """`model`'s outputs (a flat list) on `inputs` (a flat list of tensors)."""
        if isinstance(model, keras.Sequential):
            x = inputs[0]
            for layer in model.layers:
                x = self.call(layer, (x,), {})
            return keras.tree.flatten(x)
        values = {id(t): v for t, v in zip(model.inputs, inputs, strict=True)}

        def fill(x):
            return values[id(x)] if isinstance(x, keras.KerasTensor) else x

        for node in keras_graph.graph_nodes(model):
            if node.is_input or any(id(t) not in values for t in node.input_tensors):
                continue
            args, kwargs = keras_graph.call_arguments(node)
            args = keras.tree.map_structure(fill, args)
            kwargs = keras.tree.map_structure(fill, kwargs)
            outputs = self.call(node.operation, args, kwargs)
            flat = keras.tree.flatten(outputs)
            values.update(zip((id(t) for t in node.outputs), flat, strict=True))
        return [values[id(t)] for t in model.outputs]

    def call(self, operation, args, kwargs):
        plan = self.plan
        if operation is plan.skip:
            return args[0]
        if id(operation) in plan.containers:
            return self.run(operation, keras.tree.flatten(args[0]))
        if operation is plan.head:
            operation = plan.linear_head
        if isinstance(operation, keras.layers.Layer) and "training" not in kwargs:
            if "training" in inspect.signature(operation.call).parameters:
                kwargs = {**kwargs, "training": False}
        outputs = operation(*args, **kwargs)
        if operation is plan.target:
            self.watch(outputs)
            self.feature = outputs
        return outputs


def pointing_hits(maps, boxes_or_masks):
    """Per image, whether the map's peak lies inside its box or mask (the pointing game).

    Args:
        maps: `(N, h, w)` maps (e.g. `GradCAMResult.upsampled`, or `.maps`).
        boxes_or_masks: boxes `(N, 4)` (or one box `(4,)` for all images) as
            `(y0, x0, y1, x1)` in the maps' pixel coordinates, half-open like slices
            (`y0 <= y < y1`, `x0 <= x < x1`); or boolean masks `(N, h, w)` (or one `(h, w)`).

    Returns:
        A bool array `(N,)`. The peak is the first maximum in row-major order; a constant
        map (no peak, e.g. all zeros) counts as a miss.
    """
    maps = np.asarray(maps)
    if maps.ndim != 3 or maps.shape[0] == 0:
        raise ValueError(f"maps must be an (N, h, w) array with N >= 1, got shape {maps.shape}.")
    count, height, width = maps.shape
    masks = _as_masks(boxes_or_masks, count, height, width)
    flat = maps.reshape(count, -1)
    peaks = flat.argmax(axis=1)
    has_peak = flat.max(axis=1) > flat.min(axis=1)
    return has_peak & masks.reshape(count, -1)[np.arange(count), peaks]


def pointing_game(maps, boxes_or_masks):
    """The fraction of maps whose peak lies inside their box or mask (see `pointing_hits`)."""
    return float(np.mean(pointing_hits(maps, boxes_or_masks)))


def _as_masks(boxes_or_masks, count, height, width):
    """Boolean masks `(count, height, width)` from boxes or masks."""
    array = np.asarray(boxes_or_masks)
    if array.dtype == bool:
        if array.shape == (height, width):
            array = np.broadcast_to(array, (count, height, width))
        if array.shape != (count, height, width):
            raise ValueError(
                f"masks must be boolean ({count}, {height}, {width}) like the maps (or one "
                f"({height}, {width})), got shape {array.shape}. Resize the masks to the maps' "
                "size, or compare against GradCAMResult.upsampled for image-sized masks."
            )
        return array
    if array.shape == (4,):
        array = np.broadcast_to(array, (count, 4))
    if array.shape != (count, 4) or not np.issubdtype(array.dtype, np.number):
        raise ValueError(
            f"boxes must be numbers of shape ({count}, 4) (or one box (4,)) as "
            f"(y0, x0, y1, x1), or boolean masks ({count}, {height}, {width}); got shape "
            f"{array.shape} and dtype {array.dtype}."
        )
    y0, x0, y1, x1 = (array[:, i, None, None] for i in range(4))
    if np.any(y1 <= y0) or np.any(x1 <= x0):
        raise ValueError("boxes must be (y0, x0, y1, x1) with y0 < y1 and x0 < x1.")
    rows = np.arange(height)[None, :, None]
    cols = np.arange(width)[None, None, :]
    return (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
