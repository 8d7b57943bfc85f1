"""The one table of model presets: a name -> a builder and its arguments.

The pipeline, the parameter table (`chanattn params`) and the bench all read this table,
so a preset added here is available everywhere. A builder family name (`"resnet"`,
`"cifar_resnet"`, `"mobilenet_v2"`) is accepted too, with the arguments given by the caller.
"""

import dataclasses

PLAIN = "plain"  # the label of a backbone built without attention


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named model: a builder family and its default arguments.

    Attributes:
        family: `"resnet"`, `"cifar_resnet"` or `"mobilenet_v2"`.
        kwargs: the builder's arguments (e.g. `{"depth": 50}`).
        paper_kwargs: per-block arguments that reproduce a paper's configuration,
            `{block: {arg: value}}` (ECA's official kernel sizes on ResNet-50).
    """

    family: str
    kwargs: dict = dataclasses.field(default_factory=dict)
    paper_kwargs: dict = dataclasses.field(default_factory=dict)


def _families():
    # Imported lazily: the builder functions shadow their modules' names in `models`.
    from keras_chanattn.models.mobilenet_v2 import mobilenet_v2
    from keras_chanattn.models.resnet import cifar_resnet, resnet

    return {"resnet": resnet, "cifar_resnet": cifar_resnet, "mobilenet_v2": mobilenet_v2}


FAMILIES = ("resnet", "cifar_resnet", "mobilenet_v2")


def _table():
    from keras_chanattn.models.resnet import ECA_RESNET50_KERNELS, IMAGENET_DEPTHS

    table = {f"resnet{d}": Preset("resnet", {"depth": d}) for d in IMAGENET_DEPTHS}
    table["resnet50"] = Preset(
        "resnet", {"depth": 50}, {"eca": {"stage_kwargs": ECA_RESNET50_KERNELS}}
    )
    for depth in (20, 32, 44, 56, 110, 164):
        table[f"resnet{depth}"] = Preset("cifar_resnet", {"depth": depth})
    table["mobilenet_v2"] = Preset("mobilenet_v2")
    return table


PRESETS = _table()


def list_presets():
    """The preset names, e.g. `["resnet18", ..., "resnet20", ..., "mobilenet_v2"]`."""
    return list(PRESETS)


def get_preset(name):
    """The `Preset` called `name`, or a family name as a preset with no arguments."""
    if name in PRESETS:
        return PRESETS[name]
    if name in FAMILIES:
        return Preset(name)
    raise ValueError(
        f"Unknown backbone {name!r}; known presets: {', '.join(PRESETS)}; "
        f"or a builder family: {', '.join(FAMILIES)}."
    )


def build_model(name, /, attention=None, *, paper_settings=False, **kwargs):
    """Builds preset (or family) `name` with `attention` (a block name or `None`).

    `kwargs` are merged over the preset's arguments (they do not replace them);
    `paper_settings=True` adds the papers' per-block arguments where the preset has them.
    """
    preset = get_preset(name)
    if attention == PLAIN:
        attention = None
    merged = dict(preset.kwargs)
    if paper_settings and attention in preset.paper_kwargs:
        merged.update(preset.paper_kwargs[attention])
    merged.update(kwargs)
    return _families()[preset.family](attention=attention, **merged)


def builder(name, paper_settings=False):
    """A function `f(attention=None, **kwargs)` building preset `name` (checked now)."""
    get_preset(name)

    def build(attention=None, **kwargs):
        return build_model(name, attention, paper_settings=paper_settings, **kwargs)

    build.__name__ = name
    return build
