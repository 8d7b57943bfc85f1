"""Where attention blocks go in a network: sites, per-site arguments, and making the block.

Models know blocks only through the registry. An `attention` argument is one of:

- a registered name, e.g. `"srm"` (see `keras_chanattn.list_attention()`);
- a layer class, e.g. `keras_chanattn.SqueezeExcite`;
- a layer instance, used as a template: every site gets a new layer built from the
  template's config (its weights are not shared or copied), named after the site;
- `None`: no block (the plain network).

Keyword arguments given with it reach every block; per-site arguments (e.g. ECA's
per-stage kernel sizes) override them.
"""

import dataclasses

import keras

from keras_chanattn.layers.registry import get_attention_class


@dataclasses.dataclass(frozen=True)
class AttentionSite:
    """One place in a network that carries an attention block.

    Attributes:
        name: the name the block's layer gets, e.g. `"stage2_block1_attention"`.
        channels: channel count of the tensor the block sees.
        stage: stage number in the network (`None` where the network has no stages, e.g.
            in `add_attention`).
        block: block number within the stage, from 1 (`None` where unknown).
        position: where in the residual block it sits (`"standard"`, `"pre"`, `"post"`,
            `"identity"` or `"3x3"`).
        anchor: the name of the layer the block's output feeds or follows (the residual
            `Add` for `add_attention`), or `None`.
    """

    name: str
    channels: int
    stage: int | None = None
    block: int | None = None
    position: str = "standard"
    anchor: str | None = None


def check_attention(attention, attention_kwargs=None):
    """Validates an `attention` argument early; returns the layer class it names, or None.

    Raises:
        ValueError: for an unknown registry name, a value of another type, or keyword
            arguments given without a block.
    """
    if attention is None:
        if attention_kwargs:
            raise ValueError(
                f"Keyword arguments {sorted(attention_kwargs)} are meant for the attention "
                "block, but `attention` is None. Name a block (e.g. attention='se'), or "
                "drop the arguments (a misspelt builder argument also lands here)."
            )
        return None
    if isinstance(attention, str):
        return get_attention_class(attention)
    if isinstance(attention, type) and issubclass(attention, keras.layers.Layer):
        return attention
    if isinstance(attention, keras.layers.Layer):
        return type(attention)
    raise ValueError(
        "`attention` must be a registered name (one of "
        f"{', '.join(_registered_names())}), a keras Layer class or instance, or None; "
        f"got {attention!r}."
    )


def attention_label(attention):
    """A short lower-case label for an `attention` argument (for model names)."""
    if attention is None:
        return None
    if isinstance(attention, str):
        return attention.lower()
    cls = attention if isinstance(attention, type) else type(attention)
    return getattr(cls, "registry_name", cls.__name__.lower())


def make_attention(attention, site, kwargs, dtype=None):
    """Builds a new attention layer for `site`.

    Args:
        attention: a registered name, a layer class or a layer instance (template).
        site: the `AttentionSite`; the layer is named `site.name`.
        kwargs: constructor arguments; for a template they override its config.
        dtype: dtype policy for the block when `kwargs` does not give one (the surgery
            passes the host layer's policy, so a mixed-precision model gets mixed blocks).

    Returns:
        A new, unbuilt layer.
    """
    cls = check_attention(attention)
    config = attention.get_config() if isinstance(attention, keras.layers.Layer) else {}
    config.update(kwargs)
    config["name"] = site.name
    if dtype is not None and "dtype" not in kwargs:
        config["dtype"] = dtype
    try:
        return cls.from_config(config)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"Cannot create {cls.__name__} for {site.name} with the arguments {kwargs}: {error}"
        ) from error


def apply_attention(layer, x, site, hint):
    """Calls the block `layer` on `x`, naming the site and the fix if it cannot build there."""
    try:
        return layer(x)
    except ValueError as error:
        where = f"stage {site.stage}, " if site.stage is not None else ""
        raise ValueError(
            f"Cannot place {type(layer).__name__} at {site.name} ({where}{site.channels} "
            f"channels, input shape {tuple(x.shape)}): {error} {hint}"
        ) from error


def resolve_site_kwargs(common, per_site, site):
    """The keyword arguments of the block at `site`: `common`, then the per-site overrides.

    Args:
        common: arguments for every block.
        per_site: `None`; a dict mapping stage numbers to argument dicts; or a callable
            `per_site(site) -> dict`.
        site: the `AttentionSite`.
    """
    kwargs = dict(common)
    if per_site is None:
        return kwargs
    extra = per_site(site) if callable(per_site) else per_site.get(site.stage, {})
    if extra is None:
        extra = {}
    if not isinstance(extra, dict):
        raise ValueError(
            f"Per-site attention arguments must be a dict, got {extra!r} for {site.name}."
        )
    kwargs.update(extra)
    return kwargs


def check_stage_kwargs(stage_kwargs, valid_stages):
    """Validates `stage_kwargs`: None, a callable, or a dict keyed by valid stage numbers."""
    if stage_kwargs is None or callable(stage_kwargs):
        return stage_kwargs
    if not isinstance(stage_kwargs, dict):
        raise ValueError(
            "`stage_kwargs` must map stage numbers to dicts of block arguments, e.g. "
            f"{{{valid_stages[0]}: {{'kernel_size': 3}}}}, or be a callable taking an "
            f"AttentionSite; got {stage_kwargs!r}."
        )
    for stage, kwargs in stage_kwargs.items():
        if stage not in valid_stages:
            raise ValueError(
                f"`stage_kwargs` has the key {stage!r}, which is not a stage of this network "
                f"(stages are {list(valid_stages)}). To give every block an argument, pass "
                "it as a keyword argument of the builder instead, e.g. reduction=8."
            )
        if not isinstance(kwargs, dict):
            raise ValueError(
                f"`stage_kwargs[{stage}]` must be a dict of block arguments, got {kwargs!r}."
            )
    return stage_kwargs


def check_stages(stages, valid_stages):
    """Returns the selected stages as a tuple: `"all"` or an iterable of stage numbers."""
    if isinstance(stages, str):
        if stages != "all":
            raise ValueError(f"`stages` must be 'all' or stage numbers, got {stages!r}.")
        return tuple(valid_stages)
    if isinstance(stages, int):
        stages = (stages,)
    try:
        selected = tuple(stages)
    except TypeError:
        raise ValueError(f"`stages` must be 'all' or stage numbers, got {stages!r}.") from None
    bad = [s for s in selected if s not in valid_stages]
    if bad:
        raise ValueError(
            f"`stages` has {bad}, which are not stages of this network; its stages are "
            f"{list(valid_stages)}."
        )
    if not selected:
        raise ValueError("`stages` is empty; pass attention=None for the plain network.")
    return tuple(sorted(set(selected)))


def _registered_names():
    from keras_chanattn.layers.registry import list_attention

    return list_attention()
