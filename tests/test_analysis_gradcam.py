"""Grad-CAM / Grad-CAM++ against NumPy computations of their formulas, on flat, Sequential,
nested and add_attention models; the pointing game, overlays, and every bad input."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_chanattn as kc
from keras_chanattn._compat import keras_graph
from keras_chanattn.analysis import gradcam
from keras_chanattn.analysis.gradcam import (
    cam_from_gradients,
    grad_cam,
    last_feature_layer,
    pointing_game,
    pointing_hits,
)
from keras_chanattn.analysis.overlay import overlay
from keras_chanattn.backend import BackendError

SIZE = 6


def _images(count=5, size=SIZE, channels=3, seed=0):
    return np.random.default_rng(seed).normal(size=(count, size, size, channels)).astype("f4")


def _dense_logits(features, dense):
    """NumPy logits of GlobalAveragePooling -> `dense` (its linear part) on `features`."""
    kernel, bias = dense.get_weights()
    return features.mean(axis=(1, 2)) @ kernel + bias


def _numpy_cam(features, grads, plus_plus=False):
    """Grad-CAM (++) from feature maps and gradients, written out per image and channel."""
    n, _, _, k = features.shape
    maps = []
    for i in range(n):
        weights = np.zeros(k)
        for c in range(k):
            a, g = features[i, :, :, c].astype("f8"), grads[i, :, :, c].astype("f8")
            if not plus_plus:
                weights[c] = g.mean()
                continue
            denominator = 2 * g**2 + a.sum() * g**3
            alpha = np.zeros_like(g)
            ok = denominator != 0
            alpha[ok] = g[ok] ** 2 / denominator[ok]
            weights[c] = (alpha * np.maximum(g, 0)).sum()
        maps.append(np.maximum((features[i] * weights).sum(axis=-1), 0))
    return np.stack(maps)


def _unit(maps):
    low = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - low
    return np.where(span > 0, (maps - low) / np.where(span > 0, span, 1), 0)


def _flat_model(ending="dense_softmax", square=False, seed=0):
    """Conv -> conv `feat` [-> feat * feat] -> GAP -> Dense(3) [-> softmax], and the
    sub-model giving `feat`'s output."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(inputs)
    feat = keras.layers.Conv2D(5, 3, padding="same", name="feat")(x)
    x = keras.layers.Multiply(name="square")([feat, feat]) if square else feat
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    activation = {"dense_softmax": "softmax", "sigmoid": "sigmoid"}.get(ending)
    x = keras.layers.Dense(3, activation=activation, name="predictions")(x)
    if ending == "activation_softmax":
        x = keras.layers.Activation("softmax", name="probs")(x)
    elif ending == "softmax_layer":
        x = keras.layers.Softmax(name="probs")(x)
    return keras.Model(inputs, x, name="flat"), keras.Model(inputs, feat)


@pytest.mark.parametrize("ending", ["dense_softmax", "activation_softmax", "softmax_layer"])
def test_grad_cam_is_relu_of_the_logit_weights_on_a_pooled_dense_head(ending):
    # d logit_c / dA_ijk = W[k, c] / (h w): the map is ReLU(sum_k W_kc / (hw) A_k).
    model, features_model = _flat_model(ending)
    images = _images()
    features = features_model.predict(images, verbose=0)
    dense = model.get_layer("predictions")
    predicted = _dense_logits(features, dense).argmax(axis=1)
    kernel = dense.get_weights()[0]
    expected = np.maximum(np.einsum("nhwk,kn->nhw", features, kernel[:, predicted]) / 36, 0)

    result = grad_cam(model, images)

    assert result.layer == "feat" and result.score == "logit"
    np.testing.assert_array_equal(result.class_index, predicted)
    assert result.maps.dtype == np.float32 and result.maps.shape == (5, SIZE, SIZE)
    np.testing.assert_allclose(result.maps, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(result.upsampled, _unit(expected), atol=1e-4)


@pytest.mark.parametrize("plus_plus", [False, True])
def test_grad_cam_matches_numpy_on_a_square_head(plus_plus):
    # logit_c = mean_ij(A^2) W[:, c] + b: g_ijk = 2 A_ijk W_kc / (hw), varying in space.
    model, features_model = _flat_model("linear", square=True)
    images = _images()
    features = features_model.predict(images, verbose=0).astype("f8")
    kernel = model.get_layer("predictions").get_weights()[0]
    classes = np.array([0, 2, 1, 1, 0])
    grads = 2 * features * kernel[:, classes].T[:, None, None, :] / 36

    result = grad_cam(model, images, layer="feat", class_index=classes, plus_plus=plus_plus)

    assert result.score == "output"  # no softmax: the output is the logit
    expected = _numpy_cam(features, grads, plus_plus)
    np.testing.assert_allclose(result.maps, expected, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(
        cam_from_gradients(features, grads, plus_plus), expected, rtol=1e-5, atol=1e-9
    )


def test_grad_cam_plus_plus_matches_numpy_on_a_pooled_dense_head():
    model, features_model = _flat_model("dense_softmax")
    images = _images()
    features = features_model.predict(images, verbose=0)
    kernel = model.get_layer("predictions").get_weights()[0]
    grads = np.broadcast_to(kernel[:, 1] / 36, features.shape)

    result = grad_cam(model, images, class_index=1, plus_plus=True)

    np.testing.assert_allclose(result.maps, _numpy_cam(features, grads, True), rtol=1e-4)


def test_a_sigmoid_output_is_differentiated_as_it_is():
    # Not separable from a softmax: d sigmoid(z_c) / dA = s (1 - s) W[:, c] / (hw).
    model, features_model = _flat_model("sigmoid")
    images = _images()
    features = features_model.predict(images, verbose=0)
    dense = model.get_layer("predictions")
    s = 1 / (1 + np.exp(-_dense_logits(features, dense)[:, 2]))
    weights = (s * (1 - s))[:, None] * dense.get_weights()[0][:, 2] / 36
    expected = np.maximum(np.einsum("nhwk,nk->nhw", features, weights), 0)

    result = grad_cam(model, images, class_index=2)

    assert result.score == "output"
    np.testing.assert_allclose(result.maps, expected, rtol=1e-4, atol=1e-8)


def test_sequential_batches_and_per_image_classes():
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input((SIZE, SIZE, 3)),
            keras.layers.Conv2D(4, 3, padding="same", name="feat"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3, activation="softmax", name="predictions"),
        ]
    )
    images = _images(7)
    features = keras.Model(model.inputs, model.get_layer("feat").output).predict(images, verbose=0)
    classes = np.array([2, 0, 1, 2, 2, 0, 1])
    kernel = model.get_layer("predictions").get_weights()[0]
    expected = np.maximum(np.einsum("nhwk,kn->nhw", features, kernel[:, classes]) / 36, 0)

    result = grad_cam(model, images, class_index=classes, batch_size=3)

    assert result.layer == "feat" and result.score == "logit"
    np.testing.assert_array_equal(result.class_index, classes)
    np.testing.assert_allclose(result.maps, expected, rtol=1e-4, atol=1e-6)


def _backbone(kind):
    """A backbone ending in conv `feat` -> BatchNorm (moved statistics) -> ReLU `out`."""
    layers = [
        keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1"),
        keras.layers.Conv2D(6, 3, strides=2, padding="same", name="feat"),
        keras.layers.BatchNormalization(name="bn"),
        keras.layers.ReLU(name="out"),
    ]
    if kind == "sequential":
        backbone = keras.Sequential([keras.Input((8, 8, 3)), *layers], name="backbone")
    else:
        x = inputs = keras.Input((8, 8, 3))
        for layer in layers:
            x = layer(x)
        backbone = keras.Model(inputs, x, name="backbone")
    bn = backbone.get_layer("bn")
    rng = np.random.default_rng(3)
    gamma, beta, mean = rng.uniform(0.5, 2, 6), rng.normal(size=6), rng.normal(size=6)
    bn.set_weights([gamma, beta, mean, np.full(6, 2.0)])
    return backbone


def _outer(backbone):
    inputs = keras.Input(backbone.inputs[0].shape[1:])
    x = keras.layers.GlobalAveragePooling2D(name="pool")(backbone(inputs))
    x = keras.layers.Dropout(0.5, name="drop")(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="outer")


def _tape_reference(outer, backbone, layer, images, plus_plus=False):
    """Grad-CAM through a GradientTape on an independently built two-output backbone model,
    the outer head's logits written out with TensorFlow ops."""
    two = keras.Model(backbone.inputs, [backbone.get_layer(layer).output, backbone.outputs[0]])
    kernel, bias = outer.get_layer("predictions").get_weights()
    x = tf.constant(images)
    with tf.GradientTape() as tape:
        features, out = two(x, training=False)
        logits = tf.reduce_mean(out, axis=(1, 2)) @ kernel + bias
        classes = tf.argmax(logits, axis=1)
        score = tf.reduce_sum(tf.gather(logits, classes, batch_dims=1))
    grads = tape.gradient(score, features)
    return _numpy_cam(features.numpy(), grads.numpy(), plus_plus), classes.numpy()


@pytest.mark.parametrize("kind", ["functional", "sequential"])
@pytest.mark.parametrize("plus_plus", [False, True])
def test_a_nested_backbone_gives_the_two_output_models_maps(kind, plus_plus):
    backbone = _backbone(kind)
    outer = _outer(backbone)
    images = _images(4, size=8)
    expected, classes = _tape_reference(outer, backbone, "feat", images, plus_plus)

    result = grad_cam(outer, images, layer="feat", plus_plus=plus_plus)

    np.testing.assert_array_equal(result.class_index, classes)
    assert result.maps.shape == (4, 4, 4) and result.upsampled.shape == (4, 8, 8)
    np.testing.assert_allclose(result.maps, expected, rtol=1e-4, atol=1e-6)


def test_the_default_layer_is_the_last_feature_map_inside_a_nested_backbone():
    backbone = _backbone("functional")
    outer = _outer(backbone)
    images = _images(3, size=8)
    expected, _ = _tape_reference(outer, backbone, "out", images)

    assert last_feature_layer(outer) is backbone.get_layer("out")
    result = grad_cam(outer, images)

    assert result.layer == "out"
    np.testing.assert_allclose(result.maps, expected, rtol=1e-4, atol=1e-6)


class _PooledDense(keras.Model):
    """A subclassed head (GlobalAveragePooling -> Dense(3)): run whole, as a layer."""

    def __init__(self):
        super().__init__()
        self.pool = keras.layers.GlobalAveragePooling2D()
        self.dense = keras.layers.Dense(3)

    def call(self, x):
        return self.dense(self.pool(x))


def test_a_nested_subclassed_head_is_run_whole():
    keras.utils.set_random_seed(4)
    inputs = keras.Input((SIZE, SIZE, 3))
    feat = keras.layers.Conv2D(4, 3, padding="same", name="feat")(inputs)
    head = _PooledDense()
    model = keras.Model(inputs, head(feat))
    images = _images()
    features = keras.Model(inputs, feat).predict(images, verbose=0)
    kernel = head.dense.get_weights()[0]
    expected = np.maximum(np.einsum("nhwk,k->nhw", features, kernel[:, 1]) / 36, 0)

    result = grad_cam(model, images, class_index=1)

    assert result.layer == "feat" and result.score == "output"
    np.testing.assert_allclose(result.maps, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_a_nested_keras_applications_backbone():
    keras.utils.set_random_seed(5)
    backbone = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None
    )
    outer = _outer(backbone)
    images = _images(2, size=32)
    expected, classes = _tape_reference(outer, backbone, "out_relu", images, plus_plus=True)

    result = grad_cam(outer, images, plus_plus=True)

    assert result.layer == "out_relu"
    np.testing.assert_array_equal(result.class_index, classes)
    np.testing.assert_allclose(result.maps, expected, rtol=1e-3, atol=1e-6)


def _layer_state(model):
    """Weights, config and call counts (graph nodes) of every layer, nested ones included."""
    state = []
    for layer in [model, *keras_graph.flatten_layers(model)]:
        calls = 0
        while keras_graph.inbound_node(layer, calls) is not None:
            calls += 1
        state.append((layer.name, calls, [w.copy() for w in layer.get_weights()]))
    return state, repr(model.get_config())


def test_an_add_attention_model_with_a_nested_backbone_is_explained_and_left_unchanged():
    inputs = keras.Input((8, 8, 3))
    stem = keras.layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    branch = keras.layers.Conv2D(8, 3, padding="same", name="branch")(stem)
    x = keras.layers.Add(name="block_add")([stem, branch])
    backbone = keras.Model(inputs, keras.layers.ReLU(name="block_out")(x), name="backbone")
    keras.utils.set_random_seed(2)
    model = kc.add_attention(_outer(backbone), "se", reduction=2)
    inner = model.get_layer("backbone")
    images = _images(4, size=8)
    expected, _ = _tape_reference(model, inner, "block_attention", images)
    before, config = _layer_state(model)
    predictions = model.predict(images, verbose=0)

    result = grad_cam(model, images, layer="block_attention")
    grad_cam(model, images, plus_plus=True)

    np.testing.assert_allclose(result.maps, expected, rtol=1e-4, atol=1e-6)
    after, config_after = _layer_state(model)
    assert config_after == config
    assert [(name, calls) for name, calls, _ in after] == [(n, c) for n, c, _ in before]
    for (_, _, weights), (_, _, weights_after) in zip(before, after, strict=True):
        for w, w_after in zip(weights, weights_after, strict=True):
            np.testing.assert_array_equal(w, w_after)
    np.testing.assert_array_equal(model.predict(images, verbose=0), predictions)


def _quadrant_data(count, seed=0):
    """Noise images whose top-left quadrant holds horizontal (class 0) or vertical (class 1)
    stripes."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, count)
    images = rng.normal(0, 0.3, (count, 16, 16, 1)).astype("float32")
    rows, cols = np.mgrid[0:8, 0:8]
    stripes = np.stack([rows % 2 == 0, cols % 2 == 0]).astype("float32")
    images[:, :8, :8, 0] += 1.5 * stripes[labels]
    return images, labels


def test_a_trained_cnn_points_at_the_quadrant_holding_the_evidence():
    keras.utils.set_random_seed(0)
    images, labels = _quadrant_data(160)
    inputs = keras.Input((16, 16, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="feat")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    model.fit(images[:96], labels[:96], epochs=4, batch_size=32, verbose=0)
    test, test_labels = images[96:], labels[96:]
    assert (model.predict(test, verbose=0).argmax(axis=1) == test_labels).mean() >= 0.9

    for plus_plus in (False, True):
        result = grad_cam(model, test, class_index=test_labels, plus_plus=plus_plus)
        assert pointing_game(result.upsampled, (0, 0, 8, 8)) >= 0.7
        # The quadrant holds most of the map's mass, too.
        assert (result.maps[:, :8, :8].sum() / result.maps.sum()) >= 0.7


def test_pointing_game_on_constructed_maps():
    maps = np.zeros((4, 5, 6))
    maps[0, 1, 2] = 1  # inside the box (1, 1, 3, 4)
    maps[1, 3, 4] = 1  # outside: the box ends before row 3 and column 4
    maps[2, 2, 3] = 5
    maps[2, 0, 0] = 4  # the peak is (2, 3): inside
    # maps[3] is constant: no peak, a miss
    boxes = np.array([[1, 1, 3, 4]] * 4)

    np.testing.assert_array_equal(pointing_hits(maps, boxes), [True, False, True, False])
    assert pointing_game(maps, boxes) == 0.5
    assert pointing_game(maps, (1, 1, 3, 4)) == 0.5
    masks = np.zeros((4, 5, 6), dtype=bool)
    masks[1, 3, 4] = masks[2, 0, 0] = True
    np.testing.assert_array_equal(pointing_hits(maps, masks), [False, True, False, False])
    assert pointing_game(maps, masks[1]) == 0.25


@pytest.mark.parametrize(
    ("maps", "target", "match"),
    [
        (np.zeros((2, 4)), (0, 0, 1, 1), r"maps must be an \(N, h, w\)"),
        (np.zeros((2, 4, 4)), np.zeros((3, 4)), r"boxes must be numbers of shape \(2, 4\)"),
        (np.zeros((2, 4, 4)), np.zeros((2, 3, 3), bool), r"Resize the masks"),
        (np.zeros((2, 4, 4)), (2, 0, 1, 3), "y0 < y1 and x0 < x1"),
    ],
)
def test_pointing_game_bad_input(maps, target, match):
    with pytest.raises(ValueError, match=match):
        pointing_game(maps, target)


def test_overlay_writes_a_png_grid(tmp_path):
    import matplotlib.image

    images = _images(5, size=12)
    maps = np.random.default_rng(1).uniform(size=(5, 3, 3))
    path = overlay(images, maps, tmp_path / "cam.png", columns=3, titles=list("abcde"))

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels[..., :3].std() > 0.05  # not blank
    figure = overlay(images[..., :1], maps)
    assert len(figure.axes) == 5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"images": np.zeros((2, 4, 4, 2))}, r"1, 3 or 4 channels"),
        ({"heatmaps": np.zeros((3, 2, 2))}, r"one map per image \(2\)"),
        ({"alpha": 1.5}, r"alpha must be a number in \[0, 1\]"),
        ({"columns": 0}, "columns must be a positive integer"),
        ({"cmap": "no_such_map"}, "not a matplotlib colormap"),
        ({"path": "missing/folder/cam.png"}, "is missing"),
        ({"titles": ["a"]}, r"one string per image \(2\)"),
    ],
)
def test_overlay_bad_input(kwargs, match, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    arguments = {"images": np.zeros((2, 4, 4, 3)), "heatmaps": np.zeros((2, 2, 2)), **kwargs}
    with pytest.raises(ValueError, match=match):
        overlay(**arguments)


@pytest.fixture
def no_gradients(monkeypatch):
    """Fails a test that reaches the gradient computation: bad input is refused before."""

    def fail(*args, **kwargs):
        raise AssertionError("gradient work started before the input was checked")

    monkeypatch.setattr(gradcam, "_gradients", fail)


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.conv = keras.layers.Conv2D(2, 3)
        self.pool = keras.layers.GlobalAveragePooling2D()

    def call(self, x):
        return self.pool(self.conv(x))


def _shared_conv_model():
    inputs = keras.Input((SIZE, SIZE, 3))
    shared = keras.layers.Conv2D(3, 3, padding="same", name="shared")
    x = keras.layers.GlobalAveragePooling2D()(shared(shared(inputs)))
    return keras.Model(inputs, keras.layers.Dense(2)(x))


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ({"layer": "faet"}, r"no layer named 'faet'.*Close matches: \['feat'\]"),
        ({"layer": "pool"}, r"'pool' outputs \(None, 5\), not a 4-D feature map.*'feat'"),
        ({"layer": keras.layers.Conv2D(2, 3, name="stray")}, "'stray' is not a layer of"),
        ({"layer": 3}, "layer must be a layer name"),
        ({"class_index": 3}, r"class_index 3 is out of range: the model has 3 classes"),
        ({"class_index": [0, 1, -1, 0, 0]}, "class_index -1 is out of range"),
        ({"class_index": [0, 1]}, r"one per image \(5\), got shape \(2,\)"),
        ({"class_index": 1.0}, "class_index must be None, an int"),
        ({"images": _images(5, size=7)}, r"shape \(N, 6, 6, 3\).*got an array of shape"),
        ({"images": _images(1)[0]}, r"image\[None\] for a single image"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
    ],
)
def test_grad_cam_bad_input(case, match, no_gradients):
    model, _ = _flat_model()
    arguments = {"images": _images(), **case}
    with pytest.raises(ValueError, match=match):
        grad_cam(model, **arguments)


def test_grad_cam_refuses_models_it_cannot_explain(no_gradients, monkeypatch):
    images = _images(2)
    inputs = keras.Input((SIZE, SIZE, 3))
    fcn = keras.Model(inputs, keras.layers.Conv2D(3, 1)(inputs))
    with pytest.raises(ValueError, match=r"not a classifier: it returns \[\(None, 6, 6, 3\)\]"):
        grad_cam(fcn, images)
    subclassed = _Subclassed()
    subclassed(images)
    with pytest.raises(ValueError, match=r"_Subclassed\) is a subclassed model"):
        grad_cam(subclassed, images)
    with pytest.raises(ValueError, match="'shared' is called 2 times"):
        grad_cam(_shared_conv_model(), images, layer="shared")
    with pytest.raises(ValueError, match="takes a keras.Model"):
        grad_cam(lambda x: x, images)
    model, _ = _flat_model()
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(BackendError, match="runs on 'jax': set KERAS_BACKEND=tensorflow"):
        grad_cam(model, images)
