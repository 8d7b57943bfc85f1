"""A float32 copy of a model trained under a mixed (or low) precision dtype policy, for export.

A model built under `mixed_float16` or `mixed_bfloat16` computes in half precision: its
SavedModel holds float16 ops that TFLite has no builtin kernel for, and its outputs are
rounded to half precision. Export rebuilds such a model from its config under a float32
policy and copies the weights, cast to float32, so every artefact comes from a float32
graph, and verifies against that copy.
"""

import contextlib

import keras

from keras_chanattn._compat.keras_graph import is_functional
from keras_chanattn.export.inference import _walk_layers

FLOAT32 = "float32"


@contextlib.contextmanager
def float32_policy():
    """Sets the global dtype policy to float32 for the block, restoring the previous one."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(FLOAT32)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _policy_name(layer):
    policy = getattr(layer, "dtype_policy", None)
    return getattr(policy, "name", FLOAT32) if policy is not None else FLOAT32


def precision_policies(model):
    """The names of the dtype policies of `model`'s layers (nested models included) that do
    not compute in float32, sorted; `[]` when the whole model is float32."""
    found = set()
    for layer in [model, *_walk_layers(model)]:
        policy = getattr(layer, "dtype_policy", None)
        if policy is None or isinstance(layer, keras.layers.InputLayer):
            continue
        if policy.compute_dtype != FLOAT32 or policy.variable_dtype != FLOAT32:
            found.add(_policy_name(layer))
    return sorted(found)


def _float32_layer(layer):
    """A new layer from `layer`'s config, with a float32 policy (clone_model's clone_function)."""
    config = layer.get_config()
    if "dtype" in config:
        config["dtype"] = FLOAT32
    return layer.__class__.from_config(config)


def _copy_weights(source, target):
    """Assigns each of `source`'s weights to `target`'s, cast to the target's dtype."""
    pairs = list(zip(source.weights, target.weights, strict=False))
    if len(source.weights) != len(target.weights) or any(
        tuple(a.shape) != tuple(b.shape) for a, b in pairs
    ):
        raise ValueError(
            f"Model {source.name!r}: its float32 copy for export has other weights than the "
            "model itself, so it cannot be exported from a float32 copy. Rebuild it under "
            "the float32 policy (keras.config.set_dtype_policy('float32')) and load its weights."
        )
    for a, b in pairs:
        b.assign(keras.ops.cast(a.value, b.dtype))


def float32_model(model):
    """`model` rebuilt to compute in float32, when any of its layers does not.

    The copy is made from the model's config (`keras.models.clone_model`, each layer from its
    config with `dtype="float32"`) under a float32 global policy, so that sublayers made in
    `build()` are float32 too; the weights are copied, cast to float32.

    Args:
        model: a Keras model.

    Returns:
        `(float32 model, policies)`: `model` itself and `[]` when it is float32 already;
        otherwise the copy and the policy names it was cast from (e.g. `["mixed_float16"]`).

    Raises:
        ValueError: a subclassed model (Keras cannot clone it with new layer dtypes), or a
            copy whose weights do not match the model's.
    """
    policies = precision_policies(model)
    if not policies:
        return model, []
    if not (isinstance(model, keras.Sequential) or is_functional(model)):
        raise ValueError(
            f"Model {model.name!r} computes in {', '.join(policies)} and is a subclassed model, "
            "which export cannot rebuild in float32. Rebuild it as a functional model, or "
            "build it under keras.config.set_dtype_policy('float32') and load its weights."
        )
    with float32_policy():
        copy = keras.models.clone_model(model, clone_function=_float32_layer, recursive=True)
    _copy_weights(model, copy)
    return copy, policies
