"""keras_chanattn.prune on tiny ResNets (blocks at "3x3") and a tiny MobileNetV2.

The pruned model is checked against an independent computation: the ORIGINAL model, its
weights copied, with the BatchNorm just before each block giving zero for the removed
channels (gamma and beta zeroed; a ReLU keeps them zero), run in inference mode. Parameter
counts are checked against the formula for the kept channels, written from the original
layers' shapes.
"""

import keras
import numpy as np
import pytest

from keras_chanattn import prune
from keras_chanattn.data import load_digits_images
from keras_chanattn.models import cifar_resnet, mobilenet_v2
from keras_chanattn.testing import randomize_weights
from tests.marks import slow_unless

SIZE = 16
TOLERANCE = 1e-4


def _randomized(model, seed=0):
    """`model` with every weight random (BatchNorm variances positive), inference-visible."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if layer.weights:
            randomize_weights(layer, scale=0.3, rng=rng)
    return model


def resnet(block="se", position="3x3", **kwargs):
    keras.utils.set_random_seed(0)
    model = cifar_resnet(8, block, position=position, input_shape=(SIZE, SIZE, 3), **kwargs)
    return _randomized(model)


def images(n=6, seed=1):
    return np.random.default_rng(seed).random((n, SIZE, SIZE, 3)).astype("float32")


def weights_of(model):
    return [np.array(w) for w in model.get_weights()]


def zeroed_reference(model, keep):
    """The original model's outputs with the removed channels zeroed at their last BN."""
    twin = keras.models.clone_model(model)
    twin.set_weights(model.get_weights())
    sites, _ = prune.find_prune_sites(model)
    for name, kept in keep.items():
        bn_name = [n for n in sites[name].before if n.endswith("_bn")][-1]
        bn = twin.get_layer(bn_name)
        removed = np.setdiff1d(np.arange(sites[name].channels), kept)
        for variable in (bn.gamma, bn.beta):
            value = np.array(variable)
            value[removed] = 0.0
            variable.assign(value)
    return lambda x: twin.predict(x, verbose=0)


def removed_params(model, site, block_per_channel, kept):
    """Parameters removed at `site` with `kept` of its channels: from the original shapes."""
    gone = site.channels - kept
    producer = model.get_layer(site.producer).kernel.shape  # (kh, kw, in, C)
    consumer = model.get_layer(site.consumer).kernel.shape  # (kh, kw, C, out)
    per_channel = producer[0] * producer[1] * producer[2]  # one filter
    per_channel += 4  # its BatchNorm: gamma, beta, moving mean and variance
    per_channel += consumer[0] * consumer[1] * consumer[3]  # one input channel of the consumer
    return gone * (per_channel + block_per_channel)


@pytest.mark.parametrize(
    "block", [slow_unless(b in ("se", "srm"), b, id=b) for b in ("se", "srm", "cbam", "ge")]
)
def test_pruned_equals_original_with_channels_zeroed(block):
    model = resnet(
        block, **({"extent": 2, "use_mlp": True, "reduction": 4} if block == "ge" else {})
    )
    before = weights_of(model)
    x = images()
    np.testing.assert_allclose(
        prune.prune_by_l1(model, 0.0).predict(x, verbose=0), model.predict(x, verbose=0), atol=0
    )
    scores = prune.random_scores(model, seed=3)
    keep = prune.plan_pruning(model, scores, 0.5)
    assert {k: len(v) for k, v in keep.items()} == {
        "stage1_block1_attention": 8,
        "stage2_block1_attention": 16,
        "stage3_block1_attention": 32,
    }
    pruned = prune.prune_by_scores(model, scores, 0.5)
    expected = zeroed_reference(model, keep)(x)
    got = pruned.predict(x, verbose=0)
    np.testing.assert_allclose(got, expected, atol=TOLERANCE)
    assert np.abs(got - model.predict(x, verbose=0)).max() > 100 * TOLERANCE  # not a no-op
    for got, want in zip(weights_of(model), before, strict=True):
        np.testing.assert_array_equal(got, want)  # the original is untouched


def test_parameter_count_follows_the_kept_channels():
    model = resnet("se")
    sites, _ = prune.find_prune_sites(model)
    pruned = prune.prune_by_random(model, 0.25, seed=0)
    expected = model.count_params()
    for name, site in sites.items():
        hidden = model.get_layer(name).reduce.units
        kept = prune.kept_channels(site.channels, 0.25)
        # SE: a row of the reduce kernel, a column of the expand kernel, an expand bias.
        expected -= removed_params(model, site, 2 * hidden + 1, kept)
    assert pruned.count_params() == expected < model.count_params()


@pytest.mark.slow
def test_mobilenet_v2_expanded_channels():
    """The chain runs from the 1x1 expansion through the depthwise conv to the projection."""
    keras.utils.set_random_seed(0)
    model = mobilenet_v2("srm", alpha=0.35, input_shape=(SIZE, SIZE, 3), num_classes=4)
    _randomized(model)
    x = images(4)
    sites, _ = prune.find_prune_sites(model)
    assert sites["stage2_block1_attention"].producer == "stage2_block1_expand_conv"
    assert "stage2_block1_depthwise_conv" in sites["stage2_block1_attention"].before
    pruned = prune.prune_by_attention(model, x, 0.5)
    keep = prune.plan_pruning(model, prune.attention_scores(model, x), 0.5)
    expected = zeroed_reference(model, keep)(x)
    np.testing.assert_allclose(pruned.predict(x, verbose=0), expected, atol=TOLERANCE)
    depthwise = pruned.get_layer("stage2_block1_depthwise_conv")
    assert depthwise.kernel.shape[2] == len(keep["stage2_block1_attention"]) == 24


def test_saves_reloads_and_trains(tmp_path):
    model = resnet("srm")
    pruned = prune.prune_by_l1(model, 0.5)
    x = images(8)
    path = tmp_path / "pruned.keras"
    pruned.save(path)
    reloaded = keras.saving.load_model(path)  # no custom_objects: the blocks are registered
    np.testing.assert_allclose(
        reloaded.predict(x, verbose=0), pruned.predict(x, verbose=0), atol=1e-6
    )
    reloaded.compile("sgd", "sparse_categorical_crossentropy")
    before = weights_of(reloaded)
    loss = reloaded.train_on_batch(x, np.arange(8) % 10)
    assert np.isfinite(loss)
    assert any(not np.array_equal(a, b) for a, b in zip(before, weights_of(reloaded), strict=True))


def test_attention_scores_are_the_mean_channel_gate():
    model = resnet("se")
    x = images(5)
    scores = prune.attention_scores(model, x)
    block = model.get_layer("stage2_block1_attention")
    feature = keras.Model(model.input, block.input)
    h = feature.predict(x, verbose=0).astype(np.float64)
    pooled = h.mean(axis=(1, 2))
    hidden = np.maximum(pooled @ np.array(block.reduce.kernel) + np.array(block.reduce.bias), 0)
    gate = 1 / (1 + np.exp(-(hidden @ np.array(block.expand.kernel) + np.array(block.expand.bias))))
    np.testing.assert_allclose(scores["stage2_block1_attention"], gate.mean(axis=0), atol=1e-5)


def test_l1_scores_and_per_block_ratio():
    model = resnet("se")
    conv = np.array(model.get_layer("stage1_block1_1_conv").kernel)
    scores = prune.l1_scores(model)
    np.testing.assert_allclose(scores["stage1_block1_attention"], np.abs(conv).sum(axis=(0, 1, 2)))
    keep = prune.plan_pruning(model, scores, 0.0, per_block_ratio={"stage3_block1_attention": 0.75})
    assert [len(v) for v in keep.values()] == [16, 32, 16]
    top = np.sort(np.argsort(-scores["stage3_block1_attention"])[:16])
    np.testing.assert_array_equal(keep["stage3_block1_attention"], top)


@pytest.mark.parametrize(
    "channels, ratio, min_channels, divisor, kept",
    [(64, 0.5, 8, 8, 32), (64, 0.75, 8, 8, 16), (16, 0.75, 8, 8, 8), (24, 0.5, 8, 8, 16),
     (64, 0.9, 16, 8, 16), (6, 0.5, 8, 8, 6), (64, 0.3, 1, 1, 45), (64, 0.0, 8, 8, 64)],
)  # fmt: skip
def test_kept_channel_counts(channels, ratio, min_channels, divisor, kept):
    assert prune.kept_channels(channels, ratio, min_channels, divisor) == kept


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, float("nan"), "0.5", True, None])
def test_bad_ratio(ratio):
    model = resnet("se")
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        prune.prune_by_l1(model, ratio)


def _refuses(call, model, match):
    before = weights_of(model)
    layers = [layer.name for layer in model.layers]
    with pytest.raises(ValueError, match=match):
        call(model)
    assert [layer.name for layer in model.layers] == layers
    for got, want in zip(weights_of(model), before, strict=True):
        np.testing.assert_array_equal(got, want)


def test_standard_position_is_refused_naming_the_prunable_positions():
    _refuses(
        lambda m: prune.prune_by_attention(m, images(2), 0.5),
        resnet("se", position="standard"),
        r'residual add .*Prunable positions: "3x3"',
    )


def test_model_without_blocks_is_refused():
    _refuses(lambda m: prune.prune_by_l1(m, 0.5), resnet(None), "holds no attention block")


def test_unsliceable_block_is_refused():
    _refuses(
        lambda m: prune.prune_by_random(m, 0.5),
        resnet("eca"),
        r"cannot be sliced: its 1-D convolution .*Prunable blocks: .*se",
    )


def test_constraints_that_remove_nothing_are_refused():
    _refuses(lambda m: prune.prune_by_l1(m, 0.05), resnet("se"), "No channel can be removed")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"min_channels": 0}, "min_channels"),
        ({"divisor": 2.0}, "divisor"),
        ({"per_block_ratio": {"stem_conv": 0.5}}, "not prunable"),
        ({"per_block_ratio": {"stage1_block1_attention": 1.0}}, "per_block_ratio"),
    ],
)
def test_bad_constraints(kwargs, match):
    _refuses(lambda m: prune.prune_by_l1(m, 0.5, **kwargs), resnet("se"), match)


@pytest.mark.parametrize(
    "scores, match",
    [
        ({}, "no entry"),
        ({"nope": np.ones(3)}, "not prunable"),
        ("scores", "must be a dict"),
    ],
)
def test_bad_scores(scores, match):
    _refuses(lambda m: prune.prune_by_scores(m, scores, 0.5), resnet("se"), match)


def test_scores_of_the_wrong_shape():
    model = resnet("se")
    scores = prune.l1_scores(model)
    scores["stage1_block1_attention"] = np.ones(15)
    _refuses(lambda m: prune.prune_by_scores(m, scores, 0.5), model, "16 finite numbers")


def test_not_functional():
    with pytest.raises(TypeError, match="keras.Model"):
        prune.prune_by_l1("model.keras", 0.5)
    sequential = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(8, 3)])
    with pytest.raises(ValueError, match="not a functional model"):
        prune.prune_by_l1(sequential, 0.5)


@pytest.mark.slow
def test_pruned_model_exports_to_verified_int8(tmp_path):
    from keras_chanattn.export import export_tflite

    (x, y), (xt, _) = load_digits_images(SIZE)
    keras.utils.set_random_seed(0)
    # A projection shortcut and logits out, as the main job's models (XNNPACK runs the
    # whole graph: no strided-slice shortcut, no softmax).
    model = cifar_resnet(
        8, "se", position="3x3", input_shape=(SIZE, SIZE, 3), shortcut="projection",
        classifier_activation=None,
    )  # fmt: skip
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(1e-2), loss)
    model.fit(x, y, epochs=2, batch_size=64, verbose=0)
    pruned = prune.prune_by_attention(model, x[:128], 0.5)
    pruned.compile(keras.optimizers.Adam(1e-3), loss)
    pruned.fit(x, y, epochs=1, batch_size=64, verbose=0)
    report = export_tflite(pruned, tmp_path / "pruned.tflite", "int8", x[:200], xt[:128])
    assert report.passed, report.summary()
    assert report.xnnpack_partitions == 1
    assert (tmp_path / "pruned.tflite").stat().st_size == report.size_bytes


def test_layers_also_called_in_another_model_are_not_shared():
    """Calling the model's layers in another graph (as an export's inference-form rebuild
    does) adds nodes to them; only calls inside the pruned model's graph count."""
    model = resnet("se")
    block = model.get_layer("stage2_block1_attention")
    block(model.get_layer("stage2_block1_1_conv")(keras.Input((8, 8, 16))))
    assert len(block._inbound_nodes) == 2  # (private: only to show the setup took)
    sites, refused = prune.find_prune_sites(model)
    assert len(sites) == 3 and not refused
    pruned = prune.prune_by_l1(model, 0.5)
    assert pruned.get_layer("stage2_block1_2_conv").kernel.shape[2] == 16
