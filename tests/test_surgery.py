"""`add_attention`: blocks inserted before the residual adds of existing Keras models."""

import keras
import numpy as np
import pytest

import keras_chanattn
from keras_chanattn import models
from keras_chanattn._compat import keras_graph

SE_RESNET50_DELTA = 2_530_992  # docs/blocks.md; tests/test_models.py checks the builder gives it


def trainable_count(model):
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def inbound(model, name):
    node = keras_graph.inbound_node(model.get_layer(name))
    return [keras_graph.producer(t).name for t in node.input_tensors]


def attention_layers(model):
    return [layer for layer in model.layers if layer.name.endswith("_attention")]


def predict(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def random_images(shape, seed=0):
    return np.random.default_rng(seed).normal(size=(2, *shape)).astype("float32")


@pytest.fixture(scope="module")
def resnet50():
    return keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3))


@pytest.fixture(scope="module")
def se_resnet50(resnet50):
    return keras_chanattn.add_attention(resnet50, "se")


def test_resnet50_delta_equals_the_builders_and_weights_are_kept(resnet50, se_resnet50):
    model = se_resnet50
    assert trainable_count(model) - trainable_count(resnet50) == SE_RESNET50_DELTA
    blocks = attention_layers(model)
    assert len(blocks) == 16
    assert all(isinstance(b, keras_chanattn.SqueezeExcite) for b in blocks)
    # Standard position: after the last BN of the residual branch, into the add.
    assert inbound(model, "conv2_block1_attention") == ["conv2_block1_3_bn"]
    assert sorted(inbound(model, "conv2_block1_add")) == [
        "conv2_block1_0_bn",
        "conv2_block1_attention",
    ]
    assert inbound(model, "conv3_block2_add") == ["conv3_block1_out", "conv3_block2_attention"]

    for layer in resnet50.layers:
        new = model.get_layer(layer.name)
        assert new is not layer
        old_weights, new_weights = layer.get_weights(), new.get_weights()
        assert len(old_weights) == len(new_weights)
        for old, copied in zip(old_weights, new_weights, strict=True):
            assert old.dtype == copied.dtype and np.array_equal(old, copied), layer.name


def test_original_model_is_left_untouched(resnet50, se_resnet50):
    before = [w.copy() for w in resnet50.get_layer("conv2_block1_1_conv").get_weights()]
    conv = se_resnet50.get_layer("conv2_block1_1_conv")
    copied = conv.get_weights()
    conv.set_weights([w + 1.0 for w in copied])
    after = resnet50.get_layer("conv2_block1_1_conv").get_weights()
    conv.set_weights(copied)  # the module's fixture, as it was
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    assert not attention_layers(resnet50)


@pytest.mark.parametrize("block", ["srm", "sa"])
def test_preserve_output_gives_the_original_outputs(resnet50, block):
    x = random_images((32, 32, 3))
    # Random BN statistics and biases, so that the outputs are not trivially equal.
    _randomize(resnet50)
    kwargs = {"groups": 8} if block == "sa" else {}
    model = keras_chanattn.add_attention(resnet50, block, preserve_output=True, **kwargs)
    blends = [layer for layer in model.layers if isinstance(layer, models.IdentityBlend)]
    assert len(blends) == 16
    assert inbound(model, "conv2_block1_attention_blend") == [
        "conv2_block1_3_bn",
        "conv2_block1_attention",
    ]
    np.testing.assert_array_equal(predict(model, x), predict(resnet50, x))
    if block == "srm":
        # Without the option, the gate changes the outputs.
        changed = keras_chanattn.add_attention(resnet50, block)
        assert np.max(np.abs(predict(changed, x) - predict(resnet50, x))) > 1e-6
        # +1 trainable scalar per block over the plain insertion.
        assert trainable_count(model) - trainable_count(changed) == 16


@pytest.mark.slow
def test_preserve_output_needs_no_blend_for_a_block_that_starts_as_identity(resnet50):
    x = random_images((32, 32, 3), seed=3)
    model = keras_chanattn.add_attention(resnet50, "gc", preserve_output=True)
    assert not any(isinstance(layer, models.IdentityBlend) for layer in model.layers)
    assert len(attention_layers(model)) == 16
    np.testing.assert_array_equal(predict(model, x), predict(resnet50, x))
    # GC with multiplicative fusion is a sigmoid gate: it gets the blend.
    gated = keras_chanattn.add_attention(resnet50, "gc", preserve_output=True, fusion="mul")
    assert sum(isinstance(layer, models.IdentityBlend) for layer in gated.layers) == 16


@pytest.mark.slow
def test_select_and_site_kwargs(resnet50):
    model = keras_chanattn.add_attention(resnet50, "se", select="conv4_")
    assert sorted(b.name for b in attention_layers(model)) == [
        f"conv4_block{i}_attention" for i in range(1, 7)
    ]
    seen = []

    def kwargs_for(site):
        seen.append(site)
        return {"groups": site.channels // 32}

    model = keras_chanattn.add_attention(
        resnet50, "sa", select=lambda site: site.channels >= 1024, site_kwargs=kwargs_for
    )
    assert {s.anchor for s in seen} == {f"conv4_block{i}_add" for i in range(1, 7)} | {
        f"conv5_block{i}_add" for i in range(1, 4)
    }
    assert {b.groups for b in attention_layers(model)} == {32, 64}


@pytest.mark.slow
def test_resnet101_delta_equals_the_builders():
    base = keras.applications.ResNet101(weights=None, input_shape=(32, 32, 3))
    inserted = trainable_count(keras_chanattn.add_attention(base, "srm")) - trainable_count(base)
    keras.backend.clear_session()
    plain = trainable_count(models.resnet101(include_top=False))
    assert inserted == trainable_count(models.srm_resnet101(include_top=False)) - plain
    assert inserted == 4 * (256 * 3 + 512 * 4 + 1024 * 23 + 2048 * 3)


@pytest.mark.slow
def test_resnet50v2_and_mobilenetv2():
    x = random_images((32, 32, 3))
    v2 = keras.applications.ResNet50V2(weights=None, input_shape=(32, 32, 3))
    model = keras_chanattn.add_attention(v2, "srm", preserve_output=True)
    assert len(attention_layers(model)) == 16
    assert inbound(model, "conv2_block1_attention") == ["conv2_block1_3_conv"]
    np.testing.assert_array_equal(predict(model, x), predict(v2, x))
    keras.backend.clear_session()

    mobile = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), alpha=0.35)
    model = keras_chanattn.add_attention(mobile, "eca", preserve_output=True)
    # MobileNetV2 has 10 inverted residuals with an add (stride 1, same width).
    assert [s.anchor for s in models.find_residual_adds(mobile)][:2] == [
        "block_2_add",
        "block_4_add",
    ]
    assert len(attention_layers(model)) == 10
    assert inbound(model, "block_2_attention") == ["block_2_project_BN"]
    np.testing.assert_array_equal(predict(model, x), predict(mobile, x))


@pytest.mark.slow
def test_round_trip_through_keras_file(tmp_path):
    mobile = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), alpha=0.35)
    model = keras_chanattn.add_attention(mobile, "srm", preserve_output=True)
    _randomize(model)
    x = random_images((32, 32, 3))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(predict(loaded, x), predict(model, x), rtol=1e-6, atol=1e-6)
    assert sum(isinstance(layer, models.IdentityBlend) for layer in loaded.layers) == 10


def test_nested_backbone_and_ops_add():
    backbone = keras.applications.MobileNetV2(
        weights=None, input_shape=(32, 32, 3), alpha=0.35, include_top=False
    )
    inputs = keras.Input((32, 32, 3))
    features = keras.layers.GlobalAveragePooling2D()(backbone(inputs))
    outer = keras.Model(inputs, keras.layers.Dense(3)(features))
    model = keras_chanattn.add_attention(outer, "se", preserve_output=True)
    inner = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    assert len(inner) == 1 and len(attention_layers(inner[0])) == 10
    x = random_images((32, 32, 3))
    np.testing.assert_array_equal(predict(model, x), predict(outer, x))

    # A residual written as `x + y` (a keras.ops add, not an Add layer).
    inputs = keras.Input((8, 8, 4))
    y = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    y = keras.layers.BatchNormalization()(y)
    toy = keras.Model(inputs, inputs + y)
    model = keras_chanattn.add_attention(toy, "se", reduction=2, min_channels=1)
    assert len(attention_layers(model)) == 1
    assert trainable_count(model) - trainable_count(toy) == 2 * 4 * 2 + 2 + 4


def test_blocks_take_the_add_layers_dtype_policy():
    inputs = keras.Input((8, 8, 16))
    y = keras.layers.Conv2D(16, 3, padding="same", dtype="mixed_float16")(inputs)
    out = keras.layers.Add(dtype="mixed_float16", name="res_add")([inputs, y])
    model = keras_chanattn.add_attention(keras.Model(inputs, out), "srm")
    assert model.get_layer("res_attention").dtype_policy.name == "mixed_float16"


# --- errors ---------------------------------------------------------------------------


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.conv = keras.layers.Conv2D(4, 3, padding="same")

    def call(self, x):
        return x + self.conv(x)


def _plain_cnn():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3)]), "Sequent"),
        (_Subclassed, "subclassed"),
        (_plain_cnn, "no residual Add"),
        (lambda: keras.layers.Dense(3), "takes a keras.Model"),
    ],
    ids=["sequential", "subclassed", "no_add", "not_a_model"],
)  # fmt: skip
def test_models_it_cannot_rewrite_get_a_clear_error(make, message):
    with pytest.raises(ValueError, match=message):
        keras_chanattn.add_attention(make(), "se")


def test_other_errors(resnet50):
    with pytest.raises(ValueError, match="kept none of the 16"):
        keras_chanattn.add_attention(resnet50, "se", select="nothing_matches")
    with pytest.raises(ValueError, match="Unknown attention"):
        keras_chanattn.add_attention(resnet50, "nope")
    with pytest.raises(ValueError, match="needs a block"):
        keras_chanattn.add_attention(resnet50, None)
    with pytest.raises(ValueError, match="site_kwargs"):
        keras_chanattn.add_attention(resnet50, "se", site_kwargs={"reduction": 4})
    # 256 channels cannot be split into 2 * 48 groups: the first add is named.
    with pytest.raises(ValueError, match="conv2_block1_attention.*site_kwargs"):
        keras_chanattn.add_attention(resnet50, "sa", groups=48)


def test_adding_twice_is_refused():
    inputs = keras.Input((8, 8, 4))
    toy = keras.Model(inputs, inputs + keras.layers.Conv2D(4, 3, padding="same")(inputs))
    once = keras_chanattn.add_attention(toy, "eca")
    with pytest.raises(ValueError, match="already has layers named"):
        keras_chanattn.add_attention(once, "eca")


def _randomize(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, gamma.shape).astype("float32"),
                    rng.normal(0, 0.1, beta.shape).astype("float32"),
                    rng.normal(0, 0.1, mean.shape).astype("float32"),
                    rng.uniform(0.5, 1.5, var.shape).astype("float32"),
                ]
            )
