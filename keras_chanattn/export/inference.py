"""Inference forms: swap every layer that has one for it, in a clone of the model.

A layer offers an inference form by defining `inference_layer()`, returning a layer that
computes the same outputs in inference mode with a cheaper or more portable graph (every
`keras_chanattn.layers.AttentionLayer` has the method; `StyleRecalibration` returns its
BatchNorm folded into the CFC). Export uses the clone and knows nothing of block types.

A layer may also declare, with a class attribute `export_float_ops`, the TFLite builtin ops
of its per-channel gate path that full-int8 export keeps in float (for example
`export_float_ops = ("SQRT",)`); see `keras_chanattn.export.verify`.
"""

import keras

from keras_chanattn._compat.keras_graph import is_functional


def _walk_layers(model):
    """Every layer of `model` once, descending into nested models (not into layers' sublayers)."""
    seen, stack = set(), list(reversed(model.layers))
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        yield layer
        if isinstance(layer, keras.Model):
            stack.extend(reversed(layer.layers))


def has_inference_form(layer):
    return callable(getattr(layer, "inference_layer", None))


def inference_model(model):
    """Returns a clone of `model` in which each layer is replaced by its inference form.

    Every layer (in nested models too) with an `inference_layer()` method is replaced by what
    that method returns; all other layers are reused as they are (shared, not copied: the
    clone computes with the very same weights and costs no memory). The original model is
    not modified. A replacement layer owns its weights (the block copies or folds them).

    Args:
        model: a functional or sequential `keras.Model`. A subclassed model is returned
            unchanged when none of its layers has a different inference form.

    Returns:
        `(model_for_export, replacements)`: the clone (or `model` itself when nothing is
        replaced), and one line per replaced layer, `"name (Class) -> name (Class)"`.

    Raises:
        ValueError: a subclassed model has layers with a different inference form (Keras
            cannot clone it); or a layer's `inference_layer()` does not return a layer.

    Example:

    >>> export_model, replaced = inference_model(model)
    >>> replaced[0]
    'srm (StyleRecalibration) -> srm_folded (FoldedStyleRecalibration)'
    """
    replacements = []

    def clone_function(layer):
        if not has_inference_form(layer):
            return layer
        form = layer.inference_layer()
        if not isinstance(form, keras.layers.Layer):
            raise ValueError(
                f"{type(layer).__name__}.inference_layer() must return a keras Layer, got "
                f"{type(form).__name__} for layer {layer.name!r}."
            )
        if form is not layer:
            replacements.append(
                f"{layer.name} ({type(layer).__name__}) -> {form.name} ({type(form).__name__})"
            )
        return form

    if not any(has_inference_form(layer) for layer in _walk_layers(model)):
        return model, []
    if not (isinstance(model, keras.Sequential) or is_functional(model)):
        changed = [
            layer.name
            for layer in _walk_layers(model)
            if has_inference_form(layer) and layer.inference_layer() is not layer
        ]
        if changed:
            raise ValueError(
                f"Model {model.name!r} is a subclassed model, which Keras cannot clone, and its "
                f"layers {changed} have inference forms that must replace them for export. "
                "Rebuild it as a functional model (keras.Model(inputs, outputs))."
            )
        return model, []
    clone = keras.models.clone_model(model, clone_function=clone_function, recursive=True)
    return clone, replacements


def declared_float_ops(model):
    """The ops each layer of `model` keeps in float in full int8: `{layer name: (op, ...)}`.

    Read from the layers' `export_float_ops` attributes (TFLite builtin op names, such as
    `"SQRT"`); layers that declare none are left out.
    """
    declared = {}
    for layer in _walk_layers(model):
        ops = getattr(layer, "export_float_ops", ())
        if not ops:
            continue
        if isinstance(ops, str) or not all(isinstance(op, str) for op in ops):
            raise ValueError(
                f"{type(layer).__name__}.export_float_ops must be a tuple of TFLite op names "
                f"such as ('SQRT',), got {ops!r}."
            )
        declared[layer.name] = tuple(op.upper() for op in ops)
    return declared


def export_hints(model, quantization):
    """Advice from the layers of `model` for an export to `quantization` that failed.

    Read from the layers' `export_hint(quantization)` methods (a sentence, or `None`).
    """
    hints = []
    for layer in _walk_layers(model):
        hint = getattr(layer, "export_hint", None)
        hint = hint(quantization) if callable(hint) else None
        if hint:
            hints.append(hint)
    return hints


def layer_names(model):
    """Names of every layer of `model` (nested models included), for attributing TFLite ops."""
    return [layer.name for layer in _walk_layers(model)]
