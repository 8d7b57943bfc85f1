"""The models a bench compares: a backbone plain and with each block, or any labelled set."""

import os
import pathlib

from keras_chanattn.layers.registry import list_attention
from keras_chanattn.models import presets
from keras_chanattn.models.presets import PLAIN


def backbone_models(
    backbone,
    blocks=None,
    *,
    include_plain=True,
    attention_kwargs=None,
    paper_settings=True,
    **builder_kwargs,
):
    """Builds a backbone plain and with each attention block, for `bench`.

    Args:
        backbone: a preset name from `keras_chanattn.models.presets` (`"resnet50"`,
            `"resnet20"`, `"mobilenet_v2"`, ...), or a builder `f(attention, **kwargs)`
            returning a Keras model.
        blocks: registered block names. Defaults to `None`: every registered block.
        include_plain: also build the backbone without attention, labelled `"plain"`.
            Defaults to `True`.
        attention_kwargs: per-block constructor arguments, `{block: {arg: value}}`.
            Defaults to `None`.
        paper_settings: use the papers' per-block settings where the preset has them
            (ECA's kernel sizes on ResNet-50). Defaults to `True`.
        **builder_kwargs: arguments of every build (e.g. `input_shape`, `num_classes`).

    Returns:
        `(models, skipped)`: `{label: model}` (`"plain"` first, then the blocks by name), and
        `{block: reason}` for blocks the builder refused with these arguments (e.g. more
        groups than channels), so that one block's limits do not stop a comparison.
    """
    if callable(backbone):
        build, name = backbone, getattr(backbone, "__name__", "model")
    else:
        build, name = presets.builder(backbone, paper_settings=paper_settings), backbone
    blocks = _checked_blocks(blocks)
    attention_kwargs = attention_kwargs or {}
    models, skipped = {}, {}
    if include_plain:
        models[PLAIN] = build(None, name=f"{PLAIN}_{name}", **builder_kwargs)
    for block in blocks:
        kwargs = {**builder_kwargs, **attention_kwargs.get(block, {})}
        try:
            models[block] = build(block, name=f"{block}_{name}", **kwargs)
        except ValueError as error:
            skipped[block] = str(error)
    return models, skipped


def preset_input_shape(backbone, image_size=None, **builder_kwargs):
    """The input shape a bench of preset `backbone` runs at, before its data is loaded.

    Args:
        backbone: a preset name from `keras_chanattn.models.presets`.
        image_size: a square input size (3 channels). Defaults to `None`: the shape the
            builder gives with `builder_kwargs` (which may hold `input_shape`).
        **builder_kwargs: the builder's arguments.

    Returns:
        `(height, width, channels)`.
    """
    presets.get_preset(backbone)  # an unknown name raises, listing the known ones
    if image_size:
        return (image_size, image_size, 3)
    return tuple(presets.build_model(backbone, None, **builder_kwargs).input_shape[1:])


def load_model_files(paths):
    """`{label: model}` from `.keras` files, each labelled by its file name without extension.

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: a file is not a readable `.keras` model (`model_files.load_model_file`).
    """
    from keras_chanattn.model_files import load_model_file

    return {pathlib.Path(path).stem: load_model_file(path) for path in paths}


def _checked_blocks(blocks):
    registered = list_attention()
    blocks = registered if blocks is None else list(blocks)
    unknown = sorted(set(blocks) - set(registered))
    if unknown:
        raise ValueError(f"Unknown blocks {unknown}; registered: {', '.join(registered)}.")
    return blocks


def label_models(models):
    """`{label: model}` from a dict, or from a list labelled by the models' names (distinct)."""
    if isinstance(models, dict):
        labelled = dict(models)
    else:
        labelled = {}
        for model in models:
            if model.name in labelled:
                raise ValueError(
                    f"Two models are named {model.name!r}; give them distinct names, or pass "
                    "a dict {label: model}."
                )
            labelled[model.name] = model
    if not labelled:
        raise ValueError("bench needs at least one model.")
    for label in labelled:
        if not isinstance(label, str) or not label or os.sep in label:
            raise ValueError(f"Model labels must be non-empty file names; got {label!r}.")
    return labelled
