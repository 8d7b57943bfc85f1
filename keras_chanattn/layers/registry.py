"""The attention registry: names to layer classes, and the `create_attention` factory."""

import keras

_REGISTRY = {}


def register_attention(name):
    """Class decorator: registers an attention layer under `name` and with Keras saving.

    The class becomes loadable from `.keras` files without `custom_objects`, and
    `create_attention(name)` builds it, so every model builder and test sees it.
    """

    def decorator(cls):
        if name in _REGISTRY:
            raise ValueError(f"Attention name {name!r} is already registered to {_REGISTRY[name]}.")
        cls = keras.saving.register_keras_serializable(package="keras_chanattn")(cls)
        cls.registry_name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def unregister_attention(name):
    """Removes `name` from the registry and its class from Keras' saving registry.

    For blocks defined at run time (a test, a notebook cell run twice); the package's
    own blocks stay registered for the life of the process.
    """
    cls = _REGISTRY.pop(name)
    keras.saving.get_custom_objects().pop(keras.saving.get_registered_name(cls), None)
    del cls.registry_name


def list_attention():
    """Returns the registered attention names, sorted."""
    return sorted(_REGISTRY)


def sliceable_attention():
    """The registered names whose block declares `slice_channels` (what pruning can slice)."""
    return [name for name in list_attention() if _REGISTRY[name].slice_refusal is None]


def get_attention_class(name):
    """Returns the layer class registered under `name`; unknown names raise `ValueError`."""
    key = name.lower() if isinstance(name, str) else name
    if key not in _REGISTRY:
        raise ValueError(
            f"Unknown attention {name!r}. Valid names are: {', '.join(list_attention())}."
        )
    return _REGISTRY[key]


def small_network_kwargs(name, channels=16):
    """Constructor arguments that fit block `name` on maps of `channels` channels or more.

    Reads the class's `small_network_kwargs` declaration: `{}` for most blocks, fewer
    groups for the grouped ones (SA, SGE), whose papers' 64 groups need 64 or 128
    channels.

    Example:

    >>> small_network_kwargs("sa")
    {'groups': 8}
    """
    return dict(get_attention_class(name).small_network_kwargs(channels))


def paper_figures(backbone):
    """The papers' figures on `backbone`, `{name: figures}` for the blocks that declare them.

    Each class declares its own paper's figures in `paper_figures` (see `AttentionLayer`);
    a subclass does not inherit them.
    """
    figures = {}
    for name in list_attention():
        declared = vars(_REGISTRY[name]).get("paper_figures", {})
        if backbone in declared:
            figures[name] = dict(declared[backbone])
    return figures


def create_attention(name, /, **kwargs):
    """Builds a new attention layer by registry name.

    Args:
        name: a registered name (see `list_attention()`), e.g. `"se"` or `"srm"`; case
            does not matter.
        **kwargs: constructor arguments of that layer (`name=` included: the registry name
            is positional-only).

    Returns:
        A new, unbuilt `keras.layers.Layer`.

    Example:

    >>> layer = create_attention("se", reduction=8)
    """
    return get_attention_class(name)(**kwargs)
