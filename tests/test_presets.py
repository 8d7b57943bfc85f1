"""`keras_chanattn.models.presets`: the one table of named models, and building from it."""

import keras
import pytest

from keras_chanattn.models import presets
from tests.marks import slow_unless


@pytest.fixture(autouse=True)
def _fresh_session():
    yield
    keras.backend.clear_session()


def _tiny_kwargs(name):
    """Arguments that make preset `name` small and quick to build: few channels, small input."""
    family = presets.get_preset(name).family
    if family == "mobilenet_v2":
        return {"alpha": 0.35, "input_shape": (32, 32, 3), "num_classes": 3}
    size = 32 if family == "resnet" else 16  # the ImageNet stem downsamples 4x
    return {"base_channels": 4, "input_shape": (size, size, 3), "num_classes": 3}


def _attention_layers(model):
    return [layer for layer in model.layers if layer.name.endswith("_attention")]


DEEP = ("resnet101", "resnet152", "resnet110", "resnet164")  # built by the full suite only


@pytest.mark.parametrize(
    "name", [slow_unless(name not in DEEP, name, id=name) for name in presets.list_presets()]
)
def test_every_preset_builds_a_tiny_model(name):
    model = presets.build_model(name, **_tiny_kwargs(name))
    assert model.name == name
    assert model.output_shape == (None, 3)
    assert not _attention_layers(model)


def test_presets_cover_the_imagenet_and_cifar_depths_and_mobilenet():
    names = presets.list_presets()
    for name in ("resnet18", "resnet50", "resnet152", "resnet20", "resnet164", "mobilenet_v2"):
        assert name in names
    assert presets.get_preset("resnet50").family == "resnet"
    assert presets.get_preset("resnet56").family == "cifar_resnet"


def test_a_family_name_builds_with_explicit_arguments():
    model = presets.build_model("cifar_resnet", "se", depth=8, **_tiny_kwargs("resnet20"))
    assert model.name == "se_resnet8"
    assert len(_attention_layers(model)) == 3  # one block per stage, 8 = 6 * 1 + 2
    model = presets.build_model("resnet", depth=18, **_tiny_kwargs("resnet18"))
    assert model.name == "resnet18"


def test_kwargs_merge_over_the_presets():
    kwargs = _tiny_kwargs("resnet20")
    # The preset's depth stays where the caller does not give one ...
    assert presets.build_model("resnet20", **kwargs).name == "resnet20"
    # ... and the caller's arguments win where both give one.
    assert presets.build_model("resnet20", depth=32, **kwargs).name == "resnet32"
    model = presets.build_model("resnet20", "se", **dict(kwargs, num_classes=7))
    assert (model.name, model.output_shape) == ("se_resnet20", (None, 7))


def test_attention_plain_is_the_plain_network():
    kwargs = _tiny_kwargs("resnet20")
    model = presets.build_model("resnet20", presets.PLAIN, **kwargs)
    assert model.name == "resnet20"
    assert not _attention_layers(model)


def test_paper_settings_add_the_papers_per_block_arguments():
    kwargs = _tiny_kwargs("resnet50")
    paper = presets.build_model("resnet50", "eca", paper_settings=True, **kwargs)
    kernels = {layer.name.split("_")[0]: layer.kernel_size for layer in _attention_layers(paper)}
    assert kernels == {"stage2": 3, "stage3": 5, "stage4": 5, "stage5": 7}
    default = presets.build_model("resnet50", "eca", **kwargs)
    assert {layer.kernel_size for layer in _attention_layers(default)} == {None}
    # The caller's arguments win over the papers' too.
    mine = presets.build_model("resnet50", "eca", paper_settings=True, stage_kwargs=None, **kwargs)
    assert {layer.kernel_size for layer in _attention_layers(mine)} == {None}


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="Unknown backbone 'resnet7'") as error:
        presets.build_model("resnet7")
    for name in presets.list_presets() + list(presets.FAMILIES):
        assert name in str(error.value)
    with pytest.raises(ValueError, match="known presets"):
        presets.builder("resnet7")  # checked when the builder is made, not when it is called


def test_builder_builds_the_preset():
    build = presets.builder("resnet20")
    assert build.__name__ == "resnet20"
    model = build("se", **_tiny_kwargs("resnet20"))
    assert model.name == "se_resnet20"


def test_the_model_name_passes_through_to_the_builder():
    model = presets.build_model("resnet20", name="mine", **_tiny_kwargs("resnet20"))
    assert model.name == "mine"
    assert presets.builder("resnet20")(None, name="plain_resnet20").name == "plain_resnet20"
