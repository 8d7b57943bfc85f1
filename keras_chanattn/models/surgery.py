"""`add_attention`: insert an attention block before every residual add of an existing model.

The model's graph is rebuilt with `keras.models.clone_model`; every existing layer is
re-created from its config and given a copy of the original's weights (bit for bit), so the
original model is left untouched and shares nothing with the new one.

A residual `Add` is an `Add` of two 4-D tensors of the same shape whose inputs lie at
different depths of the graph: the deeper one is the residual branch, the other the
shortcut (identity, projection or pooled). The block goes on the residual branch just
before the add: the "standard" position of the SE paper. keras-hub blocks that add their
residual inside the layer are unrolled (`keras_hub_blocks`).
"""

import re

import keras
import numpy as np

from keras_chanattn._compat import keras_graph
from keras_chanattn.layers.common import check_channels_last
from keras_chanattn.models.keras_hub_blocks import keras_hub_kind, unroll_keras_hub_block
from keras_chanattn.models.placement import (
    AttentionSite,
    apply_attention,
    attention_label,
    check_attention,
    make_attention,
    resolve_site_kwargs,
)

_SUFFIXES = ("_add", "_out", "add", "out")


@keras.saving.register_keras_serializable(package="keras_chanattn")
class IdentityBlend(keras.layers.Layer):
    """Blends a block's input and output, starting from the input: `x + a * (f(x) - x)`.

    `a` is one trainable scalar, initialised to `initial_value` (0: the output equals
    the input, so a block inserted into a trained network does not change its outputs until
    training moves `a`; at `a = 1` it is the block itself). Called on `[x, f(x)]`.

    Args:
        initial_value: the starting value of `a`. Defaults to `0.0`.
        **kwargs: base `keras.layers.Layer` arguments.

    Input shape:
        A list of two tensors of the same shape, `[x, f(x)]`.

    Output shape:
        The shape of `x`.
    """

    def __init__(self, initial_value=0.0, **kwargs):
        super().__init__(**kwargs)
        self.initial_value = float(initial_value)

    def build(self, input_shape):
        self.alpha = self.add_weight(
            name="alpha",
            shape=(),
            initializer=keras.initializers.Constant(self.initial_value),
        )

    def call(self, inputs):
        x, y = inputs
        return x + keras.ops.cast(self.alpha, x.dtype) * (y - x)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def get_config(self):
        config = super().get_config()
        config.update({"initial_value": self.initial_value})
        return config


def add_attention(
    model,
    attention,
    *,
    select=None,
    site_kwargs=None,
    preserve_output=False,
    name=None,
    **attention_kwargs,
):
    """Returns a new functional model with an attention block before every residual add.

    Works on Keras functional models such as `keras.applications.ResNet50`, `ResNet101`,
    `ResNet50V2`, `MobileNetV2` (its inverted residuals with an add), keras-hub's
    `ResNetBackbone` and `MobileNetBackbone` (whose residual adds hide inside its block
    layers: those blocks are unrolled into their layers), and functional models that nest
    such a backbone as a layer.

    Every existing layer keeps a bit-for-bit copy of its weights (the original model is
    not modified). Inserted blocks are named after their add (`conv2_block1_add` gets
    `conv2_block1_attention`) and take the add's dtype policy. The result is a plain
    `keras.Model` (a keras-hub backbone's class and attributes such as
    `pyramid_outputs` are not carried over).

    Args:
        model: a functional `keras.Model`.
        attention: registered block name, layer class or layer instance (template).
        select: which residual adds get a block: `None` (all), a regular expression
            searched in the add's layer name (e.g. `"conv[45]_"`), or a callable taking
            the `AttentionSite` and returning a bool. Defaults to `None`.
        site_kwargs: a callable `site -> dict` of per-site block arguments overriding
            `**attention_kwargs` (e.g. a `groups` that divides `site.channels`).
            Defaults to `None`.
        preserve_output: make the new model compute exactly the original outputs until
            training changes it. A block that already starts as the identity (GC with
            additive fusion, whose last convolution starts at zero) goes in as it is; any
            other block (every sigmoid gate: `x * sigmoid(z)` cannot equal `x`, and
            Shuffle Attention also permutes channels) is wrapped as
            `x + a * (block(x) - x)` by an `IdentityBlend` layer whose scalar `a` starts at
            0 (+1 parameter per block). Defaults to `False`.
        name: name of the new model. Defaults to the original's name plus the block's.
        **attention_kwargs: constructor arguments of every block.

    Returns:
        A new functional `keras.Model`.

    Raises:
        ValueError: for a model that is not functional (subclassed, or Sequential), one
            without residual adds (or none that `select` keeps), or a block that cannot
            be built at some add (the message names it).

    Example:

    >>> base = keras.applications.ResNet50(weights=None)
    >>> model = add_attention(base, "srm", preserve_output=True)
    """
    selector = _check_arguments(model, attention, select, site_kwargs)
    plan, taken = _plan(model, selector)
    rebuilder = _Rebuilder(plan, taken, attention, attention_kwargs, site_kwargs, preserve_output)
    new_model = rebuilder.rebuild(model)
    label = attention_label(attention)
    return keras.Model(new_model.input, new_model.output, name=name or f"{model.name}_{label}")


def find_residual_adds(model):
    """The residual adds `add_attention` would use, as `AttentionSite`s (in graph order)."""
    _check_functional(model)
    found = []
    _plan_model(model, {}, found)
    return [entry["site"] for entry in found]


def _check_arguments(model, attention, select, site_kwargs):
    """Checks `add_attention`'s arguments; returns the site selector built from `select`."""
    if attention is None:
        raise ValueError("add_attention needs a block: a registered name such as 'se', or a layer.")
    check_channels_last("add_attention()")
    check_attention(attention)
    _check_functional(model)
    if site_kwargs is not None and not callable(site_kwargs):
        raise ValueError(
            "`site_kwargs` must be a callable taking an AttentionSite and returning a dict; "
            "arguments for every block go in as keyword arguments."
        )
    return _selector(select)


def _plan(model, selector):
    """Finds the residual adds; returns `(plan, taken)`: site info by operation id, and the
    names of the sites `selector` keeps."""
    plan = {}  # id(original add layer or unrollable block) -> site info
    found = []
    _plan_model(model, plan, found)
    if not found:
        raise ValueError(
            f"Model {model.name!r} has no residual Add that add_attention can find (an Add "
            "of two same-shape 4-D tensors, one of them on a deeper branch than the other)"
            ". Nothing was inserted. add_attention works on residual networks such as "
            "ResNet and MobileNetV2; build plain networks with the block in place instead."
        )
    taken = {entry["site"].name for entry in plan.values() if selector(entry["site"])}
    if not taken:
        names = ", ".join(e["site"].anchor for e in found[:6])
        raise ValueError(
            f"`select` kept none of the {len(found)} residual adds of {model.name!r} "
            f"({names}{', ...' if len(found) > 6 else ''}). Nothing was inserted."
        )
    existing = {layer.name for layer in _all_layers(model)}
    clash = sorted(taken & existing)
    if clash:
        raise ValueError(
            f"The model already has layers named {clash}; add_attention names its blocks "
            "so. Has attention been added to it already?"
        )
    return plan, taken


class _Rebuilder:
    """Clones a model with `keras.models.clone_model`, inserting a block at the planned adds."""

    def __init__(self, plan, taken, attention, attention_kwargs, site_kwargs, preserve_output):
        self.plan = plan
        self.taken = taken
        self.attention = attention
        self.attention_kwargs = attention_kwargs
        self.site_kwargs = site_kwargs
        self.preserve_output = preserve_output
        self.pairs = []  # (original, clone) for the weight copy
        self.clone_of = {}  # id(clone) -> original
        self.identity_cache = {}

    def rebuild(self, model):
        """The new functional model, every existing layer carrying a copy of its weights."""
        # New inputs named as the original input layers (clone_model would name them after
        # the symbolic tensors).
        input_tensors = keras.tree.map_structure(
            lambda t: keras.Input(
                batch_shape=t.shape, dtype=t.dtype, name=keras_graph.producer(t).name
            ),
            model.input,
        )
        new_model = keras.models.clone_model(
            model,
            input_tensors=input_tensors,
            clone_function=self.clone,
            call_function=self.call,
            recursive=True,
        )
        for original, clone in self.pairs:
            if isinstance(original, keras.Model):
                continue  # nested models: their own layers are in `pairs`
            weights = original.get_weights()
            if weights:
                clone.set_weights(weights)
        return new_model

    def clone(self, layer):
        if not isinstance(layer, keras.layers.Layer):
            return layer  # a stateless keras.ops operation
        clone = layer.__class__.from_config(layer.get_config())
        self.pairs.append((layer, clone))
        self.clone_of[id(clone)] = layer
        return clone

    def call(self, layer, *args, **kwargs):
        original = self.clone_of.get(id(layer), layer)
        entry = self.plan.get(id(original))
        if entry is None or entry["site"].name not in self.taken:
            return layer(*args, **kwargs)

        def attend(x, dtype):
            return self.attend(entry["site"], x, dtype)

        index = entry["residual_index"]
        if entry["kind"] == "add" and isinstance(layer, keras.layers.Layer):
            inputs = list(args[0])
            inputs[index] = attend(inputs[index], layer.dtype_policy)
            return layer(inputs, *args[1:], **kwargs)
        if entry["kind"] == "add":  # a keras.ops add, `x + y`: the tensors are the arguments
            inputs = list(args)
            inputs[index] = attend(inputs[index], None)
            return layer(*inputs, **kwargs)
        return unroll_keras_hub_block(layer, args[0], entry["kind"], attend)

    def attend(self, site, x, dtype):
        """The block (blended from the identity with `preserve_output`) applied to `x`."""
        kwargs = resolve_site_kwargs(self.attention_kwargs, self.site_kwargs, site)
        block = make_attention(self.attention, site, kwargs, dtype=dtype)
        hint = (
            "Give it other arguments with site_kwargs (a callable taking the "
            "AttentionSite), or leave this add out with `select`."
        )
        y = apply_attention(block, x, site, hint)
        if self.preserve_output and not _starts_as_identity(
            self.attention, kwargs, x, self.identity_cache
        ):
            y = IdentityBlend(name=f"{site.name}_blend", dtype=dtype)([x, y])
        return y


def _check_functional(model):
    if not isinstance(model, keras.Model):
        raise ValueError(f"add_attention takes a keras.Model, got {type(model).__name__}.")
    if isinstance(model, keras.Sequential):
        raise ValueError(
            f"{model.name!r} is a Sequential model: a stack of single-input layers has no "
            "residual Add to put a block before. If it wraps a functional backbone, call "
            "add_attention on the backbone and stack the result again."
        )
    if not keras_graph.is_functional(model):
        raise ValueError(
            f"{model.name!r} ({type(model).__name__}) is a subclassed model: its graph is "
            "Python code that add_attention cannot rewrite. Put the block in its call(), "
            "or build the network functionally (see keras_chanattn.models)."
        )


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def _selector(select):
    if select is None:
        return lambda site: True
    if isinstance(select, str):
        pattern = re.compile(select)
        return lambda site: bool(pattern.search(site.anchor))
    if callable(select):
        return lambda site: bool(select(site))
    raise ValueError(f"`select` must be None, a regular expression or a callable, got {select!r}.")


def _attention_name(anchor, used):
    stem = anchor
    for suffix in _SUFFIXES:
        if anchor.endswith(suffix) and len(anchor) > len(suffix):
            stem = anchor[: -len(suffix)]
            break
    if stem and stem[-1] not in "_/":
        stem += "_"
    name = f"{stem}attention"
    if name in used:
        name = f"{anchor}_attention"
    used.add(name)
    return name


def _node_levels(model):
    """Longest path (in operations) from the inputs to each node of `model`'s graph."""
    levels = {}
    for node in keras_graph.graph_nodes(model):
        parents = [levels.get(id(p), 0) for p in node.parent_nodes]
        levels[id(node)] = 1 + max(parents) if parents else 0
    return levels


def _is_add(operation):
    if isinstance(operation, keras.layers.Add):
        return True
    # `x + y` on symbolic tensors records a keras.ops `Add` operation.
    return type(operation).__name__ == "Add" and not isinstance(operation, keras.layers.Layer)


def _plan_model(model, plan, found, used=None):
    used = set() if used is None else used
    levels = _node_levels(model)
    for node in keras_graph.graph_nodes(model):
        operation = node.operation
        if isinstance(operation, keras.Model):
            if id(operation) not in plan:
                _plan_model(operation, plan, found, used)
            continue
        kind = keras_hub_kind(operation)
        if kind is not None:
            channels = int(node.outputs[0].shape[-1])
            _record(plan, found, used, operation, kind, None, channels)
            continue
        if not _is_add(operation):
            continue
        inputs = node.input_tensors
        if len(inputs) != 2 or len(inputs[0].shape) != 4:
            continue
        if tuple(inputs[0].shape) != tuple(inputs[1].shape):
            continue
        a, b = (levels.get(id(keras_graph.producer_node(t)), 0) for t in inputs)
        if a == b:
            continue
        _record(plan, found, used, operation, "add", int(a < b), int(inputs[0].shape[-1]))


def _record(plan, found, used, operation, kind, residual_index, channels):
    if id(operation) in plan:
        raise ValueError(
            f"Layer {operation.name!r} is called more than once in the model; add_attention "
            "cannot tell which call to put a block before."
        )
    site = AttentionSite(
        name=_attention_name(operation.name, used),
        channels=channels,
        position="standard",
        anchor=operation.name,
    )
    entry = {"site": site, "kind": kind, "residual_index": residual_index}
    plan[id(operation)] = entry
    found.append(entry)


def _starts_as_identity(attention, kwargs, x, cache):
    """Whether a fresh block of this kind maps its input to itself exactly (inference mode).

    Probes a throw-away twin of the block on random data of the site's shape: zero
    initialisation that makes a block the identity (GC's additive fusion) shows here, for
    any random seed of its other weights.
    """
    shape = tuple(8 if d is None else int(d) for d in x.shape[1:])
    config_key = repr(sorted((k, repr(v)) for k, v in kwargs.items()))
    template = repr(attention.get_config()) if isinstance(attention, keras.layers.Layer) else ""
    key = (repr(attention) if not template else template, config_key, shape)
    if key not in cache:
        site = AttentionSite(name="identity_probe", channels=shape[-1])
        twin = make_attention(attention, site, kwargs)
        probe = np.random.default_rng(0).normal(size=(2, *shape)).astype("float32")
        out = keras.ops.convert_to_numpy(twin(probe, training=False))
        cache[key] = bool(np.array_equal(out, probe))
    return cache[key]
