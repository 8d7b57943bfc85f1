"""Model builders: parameter counts against docs/blocks.md and the reference networks, every
builder x every registered block (forward pass and `.keras` round trip), placements."""

import keras
import numpy as np
import pytest

import keras_chanattn
from keras_chanattn import models
from keras_chanattn._compat import keras_graph
from keras_chanattn.layers.registry import small_network_kwargs
from keras_chanattn.models.mobilenet_v2 import MOBILENET_V2_STAGES
from keras_chanattn.models.resnet import CIFAR_STAGES, IMAGENET_STAGES
from tests.marks import slow_unless

NAMES = keras_chanattn.list_attention()

# docs/blocks.md: ResNet-50, bottlenecks, standard position, every stage: trainable-parameter
# delta over the plain network. ECA with the official per-stage kernels (3, 5, 5, 7).
SPEC_RESNET50_DELTAS = {
    "se": 2_530_992,
    "srm": 60_416,
    "sa": 708,
    "sge": 2_048,
    "triplet": 4_800,
    "cbam": 2_532_592,
    "eca": 80,
}


def trainable_count(model):
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def inbound(model, name):
    """Names of the layers feeding layer `name` (its first call)."""
    node = keras_graph.inbound_node(model.get_layer(name))
    return [keras_graph.producer(t).name for t in node.input_tensors]


def consumers(model, name):
    """Names of the layers that take layer `name`'s output."""
    return [layer.name for layer in model.layers if name in _safe_inbound(model, layer)]


def _safe_inbound(model, layer):
    node = keras_graph.inbound_node(layer)
    if node is None:
        return []
    return [keras_graph.producer(t).name for t in node.input_tensors]


def attention_layers(model):
    return [layer for layer in model.layers if layer.name.endswith("_attention")]


@pytest.fixture(autouse=True)
def _fresh_session():
    yield
    keras.backend.clear_session()


@pytest.fixture(scope="module")
def plain_resnet50():
    """(total, trainable) parameters of the plain ResNet-50 without its top."""
    model = models.resnet50(include_top=False)
    counts = model.count_params(), trainable_count(model)
    keras.backend.clear_session()
    return counts


# --- parameter counts -----------------------------------------------------------------


def test_every_spec_block_is_registered():
    missing = sorted(set(SPEC_RESNET50_DELTAS) - set(NAMES))
    assert not missing, f"blocks of docs/blocks.md's ResNet-50 table not registered: {missing}"


@pytest.mark.parametrize(
    "block", [slow_unless(b in ("se", "sa"), b, id=b) for b in sorted(SPEC_RESNET50_DELTAS)]
)
def test_resnet50_trainable_delta_matches_spec(block, plain_resnet50):
    if block == "eca":
        model = models.eca_resnet50(include_top=False)
        kernels = {
            stage: {
                layer.effective_kernel_size
                for layer in attention_layers(model)
                if layer.name.startswith(f"stage{stage}_")
            }
            for stage in IMAGENET_STAGES
        }
        assert kernels == {2: {3}, 3: {5}, 4: {5}, 5: {7}}  # the official checkpoint's
    else:
        model = models.resnet(50, block, include_top=False)
    assert len(attention_layers(model)) == 16
    delta = trainable_count(model) - plain_resnet50[1]
    assert delta == SPEC_RESNET50_DELTAS[block]


def test_gc_resnet50_total_delta_matches_spec(plain_resnet50):
    # docs/blocks.md counts GC's +2,548,000 with the (non-trainable) bias of its logit conv.
    assert "gc" in NAMES, "GC is not registered"
    assert models.gc_resnet50(include_top=False).count_params() - plain_resnet50[0] == 2_548_000


@pytest.mark.parametrize(
    ("builder", "trainable"),
    [
        # torchvision's parameter counts (1000 classes).
        (lambda: models.resnet18(), 11_689_512),
        (lambda: models.resnet50(), 25_557_032),
        (lambda: models.resnet101(), 44_549_160),
        # The ResNet paper's CIFAR networks with option-A shortcuts: 0.27M, 0.85M.
        (lambda: models.resnet20(), 269_722),
        (lambda: models.resnet56(), 853_018),
    ],
    ids=["resnet18", "resnet50", "resnet101", "cifar_resnet20", "cifar_resnet56"],
)
def test_plain_parameter_counts(builder, trainable):
    assert trainable_count(builder()) == trainable


def test_plain_mobilenet_v2_matches_keras_applications():
    # keras.applications.MobileNetV2(weights=None).count_params() at alpha 1.0 and 0.35.
    assert models.mobilenet_v2().count_params() == 3_538_984
    assert models.mobilenet_v2(alpha=0.35).count_params() == 1_691_208


# --- every builder x every block ------------------------------------------------------

BUILDERS = {
    # A narrow ResNet-18 (16 base channels): same graph, 17x smaller `.keras` file.
    "resnet18": lambda attention, **kw: models.resnet(
        18, attention, input_shape=(32, 32, 3), num_classes=5, base_channels=16, **kw
    ),
    "cifar_resnet8": lambda attention, **kw: models.cifar_resnet(
        8, attention, input_shape=(16, 16, 3), num_classes=5, **kw
    ),
    "mobilenet_v2_035": lambda attention, **kw: models.mobilenet_v2(
        attention, alpha=0.35, input_shape=(32, 32, 3), num_classes=5, **kw
    ),
}
EXPECTED_SITES = {"resnet18": 8, "cifar_resnet8": 3, "mobilenet_v2_035": 17}


@pytest.mark.parametrize(
    ("builder", "block"),
    [
        slow_unless(builder == "cifar_resnet8", builder, block, id=f"{builder}-{block}")
        for builder in sorted(BUILDERS)
        for block in NAMES
    ],
)
def test_builder_with_block_runs_and_round_trips(builder, block, tmp_path):
    # The small networks' 8- to 128-channel maps: each block's own small-network arguments.
    model = BUILDERS[builder](block, **small_network_kwargs(block, channels=8))
    blocks = attention_layers(model)
    assert len(blocks) == EXPECTED_SITES[builder]
    expected_class = keras_chanattn.layers.get_attention_class(block)
    assert all(type(layer) is expected_class for layer in blocks)

    x = np.random.default_rng(0).normal(size=(2, *model.input_shape[1:])).astype("float32")
    y = keras.ops.convert_to_numpy(model(x, training=False))
    assert y.shape == (2, 5) and np.all(np.isfinite(y))
    np.testing.assert_allclose(y.sum(axis=-1), 1.0, rtol=1e-5)

    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert [type(layer) for layer in attention_layers(loaded)] == [type(b) for b in blocks]
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x, training=False)), y, rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("builder", sorted(BUILDERS))
def test_plain_builder_has_no_attention(builder):
    model = BUILDERS[builder](None)
    assert attention_layers(model) == []
    assert model.name.startswith(("resnet", "mobilenet"))


def test_named_constructors_name_the_model_and_block():
    model = models.srm_resnet56()
    assert model.name == "srm_resnet56"
    assert len(attention_layers(model)) == 27
    assert all(isinstance(b, keras_chanattn.StyleRecalibration) for b in attention_layers(model))
    mobile = models.se_mobilenet_v2(alpha=0.35, input_shape=(32, 32, 3))
    assert mobile.name == "se_mobilenet_v2"
    assert all(isinstance(b, keras_chanattn.SqueezeExcite) for b in attention_layers(mobile))


def test_cifar_bottleneck_164_and_block_layout():
    from keras_chanattn.models.resnet import cifar_block_layout

    assert cifar_block_layout(164) == ("bottleneck", (18, 18, 18))
    assert cifar_block_layout(110) == ("basic", (18, 18, 18))
    assert cifar_block_layout(1202) == ("basic", (200, 200, 200))
    with pytest.raises(ValueError, match="6n \\+ 2"):
        cifar_block_layout(21)


# --- positions and stages -------------------------------------------------------------


def small_resnet(position, block="basic", **kwargs):
    depth = 8 if block == "basic" else 11
    return models.cifar_resnet(
        depth, "se", block=block, position=position, input_shape=(16, 16, 3), **kwargs
    )


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_standard_position_is_after_the_last_bn_before_the_add(block):
    model = small_resnet("standard", block)
    last_bn = "stage1_block1_2_bn" if block == "basic" else "stage1_block1_3_bn"
    assert inbound(model, "stage1_block1_attention") == [last_bn]
    assert "stage1_block1_attention" in inbound(model, "stage1_block1_add")
    assert consumers(model, last_bn) == ["stage1_block1_attention"]


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_pre_position_is_before_the_first_conv_and_off_the_shortcut(block):
    model = small_resnet("pre", block)
    # Stage 2, block 1: input from stage 1; the shortcut is a projection or a pad.
    assert inbound(model, "stage2_block1_attention") == ["stage1_block1_out"]
    # A basic block's first conv is the strided 3x3, behind its padding layer.
    first_conv = "stage2_block1_1_pad" if block == "basic" else "stage2_block1_1_conv"
    assert inbound(model, first_conv) == ["stage2_block1_attention"]
    shortcut = [n for n in inbound(model, "stage2_block1_add") if "shortcut" in n]
    assert len(shortcut) == 1
    first = "stage2_block1_shortcut_pad" if block == "basic" else "stage2_block1_shortcut_conv"
    assert inbound(model, first) == ["stage1_block1_out"]


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_post_position_is_after_the_add_and_relu(block):
    model = small_resnet("post", block)
    assert inbound(model, "stage1_block1_attention") == ["stage1_block1_out"]
    assert inbound(model, "stage1_block1_out") == ["stage1_block1_add"]
    # The next block (strided) takes the attention's output on both of its paths.
    branch = "stage2_block1_1_pad" if block == "basic" else "stage2_block1_1_conv"
    shortcut = "stage2_block1_shortcut_pad" if block == "basic" else "stage2_block1_shortcut_conv"
    assert sorted(consumers(model, "stage1_block1_attention")) == sorted([branch, shortcut])


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_identity_position_is_on_the_shortcut(block):
    model = small_resnet("identity", block)
    last_bn = "stage2_block1_2_bn" if block == "basic" else "stage2_block1_3_bn"
    assert sorted(inbound(model, "stage2_block1_add")) == sorted(
        ["stage2_block1_attention", last_bn]
    )
    projection = "stage2_block1_shortcut_pad" if block == "basic" else "stage2_block1_shortcut_bn"
    assert inbound(model, "stage2_block1_attention") == [projection]
    if block == "basic":  # stage 1 keeps the shape: the shortcut is the block's input
        assert inbound(model, "stage1_block1_attention") == ["stem_relu"]


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_3x3_position_is_after_the_spatial_conv(block):
    model = small_resnet("3x3", block)
    after = "stage1_block1_1_relu" if block == "basic" else "stage1_block1_2_relu"
    following = "stage1_block1_2_conv" if block == "basic" else "stage1_block1_3_conv"
    assert inbound(model, "stage1_block1_attention") == [after]
    assert inbound(model, following) == ["stage1_block1_attention"]


def test_3x3_position_costs_fewer_parameters_on_bottlenecks(plain_resnet50):
    se_3x3 = models.resnet(50, "se", position="3x3", include_top=False)
    delta = trainable_count(se_3x3) - plain_resnet50[1]
    # The SE blocks see the bottleneck width w = C / 4, with a hidden layer of
    # max(8, w / 16) units (SE's min_channels): 2 * w * h + h + w per block.
    widths = [64] * 3 + [128] * 4 + [256] * 6 + [512] * 3
    assert delta == sum(2 * w * max(8, w // 16) + max(8, w // 16) + w for w in widths)


def test_mobilenet_v2_positions():
    model = models.mobilenet_v2("se", alpha=0.35, input_shape=(32, 32, 3))
    assert inbound(model, "stage2_block2_attention") == ["stage2_block2_depthwise_relu6"]
    assert inbound(model, "stage2_block2_project_conv") == ["stage2_block2_attention"]
    standard = models.mobilenet_v2("se", alpha=0.35, position="standard", input_shape=(32, 32, 3))
    assert inbound(standard, "stage2_block2_attention") == ["stage2_block2_project_bn"]
    assert "stage2_block2_attention" in inbound(standard, "stage2_block2_add")


def _resnet18(**kwargs):
    return models.resnet(18, "srm", input_shape=(32, 32, 3), **kwargs)


def _cifar_resnet14(**kwargs):
    return models.cifar_resnet(14, "srm", input_shape=(16, 16, 3), **kwargs)


def _mobilenet_v2(**kwargs):
    return models.mobilenet_v2("srm", alpha=0.35, input_shape=(32, 32, 3), **kwargs)


@pytest.mark.parametrize(
    ("builder", "stages", "valid"),
    [
        (_resnet18, (3, 5), IMAGENET_STAGES),
        (_cifar_resnet14, (2,), CIFAR_STAGES),
        (_mobilenet_v2, (1, 7), MOBILENET_V2_STAGES),
    ],
)
def test_stage_selection_puts_blocks_only_in_those_stages(builder, stages, valid):
    everywhere = {int(b.name[5]) for b in attention_layers(builder())}
    assert everywhere == set(valid)
    model = builder(stages=stages)
    assert {int(b.name[5]) for b in attention_layers(model)} == set(stages)
    for layer in attention_layers(model):
        add = layer.name.replace("_attention", "_add")
        if add in {x.name for x in model.layers}:
            assert layer.name in inbound(model, add)


def test_stage_kwargs_dict_and_callable():
    model = models.resnet(
        18, "se", input_shape=(32, 32, 3), reduction=4, stage_kwargs={5: {"reduction": 32}}
    )
    reductions = {b.name: b.reduction for b in attention_layers(model)}
    assert reductions["stage2_block1_attention"] == 4
    assert reductions["stage5_block2_attention"] == 32

    seen = []

    def per_site(site):
        seen.append(site)
        return {"groups": site.channels // 16}

    model = models.resnet(18, "sa", input_shape=(32, 32, 3), stage_kwargs=per_site)
    assert [(s.stage, s.block, s.channels) for s in seen[:3]] == [
        (2, 1, 64),
        (2, 2, 64),
        (3, 1, 128),
    ]
    assert {b.groups for b in attention_layers(model)} == {4, 8, 16, 32}


def test_layer_instance_is_a_template_and_class_works():
    template = keras_chanattn.SqueezeExcite(reduction=4, gate_activation="hard_sigmoid")
    model = models.cifar_resnet(8, template, input_shape=(16, 16, 3), min_channels=2)
    blocks = attention_layers(model)
    assert len({id(b) for b in blocks}) == 3 and template not in blocks
    assert all(b.reduction == 4 and b.gate_activation == "hard_sigmoid" for b in blocks)
    assert all(b.min_channels == 2 for b in blocks)
    assert model.name == "se_resnet8"
    by_class = models.cifar_resnet(8, keras_chanattn.StyleRecalibration, input_shape=(16, 16, 3))
    assert all(isinstance(b, keras_chanattn.StyleRecalibration) for b in attention_layers(by_class))


# --- errors ---------------------------------------------------------------------------


def test_block_that_cannot_take_a_site_names_it_and_the_fix():
    with pytest.raises(ValueError, match="stage2_block1_attention.*stage_kwargs"):
        models.resnet(18, "sa", input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match="stage1_block1_attention.*16 channels"):
        models.mobilenet_v2("sge", alpha=0.35, input_shape=(32, 32, 3))
    # GE's parametric gather needs the spatial size: no silent fallback at unknown sizes.
    with pytest.raises(ValueError, match="stage2_block1_attention.*known height and width"):
        models.resnet(18, "ge", parametric=True, input_shape=(None, None, 3))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: models.resnet(50, "nope"), "Unknown attention 'nope'.*se"),
        (lambda: models.resnet(50, None, reduction=8), "attention` is None"),
        (lambda: models.resnet(50, 3), "registered name"),
        (lambda: models.resnet(42), "18, 34, 50, 101, 152.*cifar_resnet"),
        (lambda: models.resnet(18, "se", position="middle"), "position"),
        (lambda: models.resnet(18, "se", stages=(1,)), "not stages of this network"),
        (lambda: models.resnet(18, "se", stages=()), "empty"),
        (lambda: models.resnet(18, "se", stage_kwargs={"reduction": 8}), "not a stage"),
        (lambda: models.resnet(18, "se", stage_kwargs={2: 8}), "must be a dict"),
        (lambda: models.resnet(18, "se", bogus=1), "Cannot create SqueezeExcite.*bogus"),
        (lambda: models.resnet(18, pooling="mean"), "pooling"),
        (lambda: models.resnet(18, input_shape=(32, 32)), "input_shape"),
        (lambda: models.cifar_resnet(20, shortcut="conv"), "shortcut"),
        (lambda: models.mobilenet_v2("se", position="pre"), "position"),
        (lambda: models.mobilenet_v2(alpha=0), "alpha"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
