"""The fine-tuning recipe: weight-decay groups, resume, schedule, and tf.distribute parity."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_chanattn
from keras_chanattn._compat import tensorflow as tf_config
from keras_chanattn.data import digits_data
from keras_chanattn.train import (
    TrainConfig,
    fit_classifier,
    no_decay_variables,
    recalibrate_batch_norm,
)


def tiny_classifier(attention="srm", shape=(8, 8, 3), classes=10):
    inputs = keras.Input(shape)
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = keras.layers.BatchNormalization(momentum=0.9, name="bn")(x)
    x = keras.layers.ReLU()(x)
    if attention:
        x = keras_chanattn.create_attention(attention, name="attention")(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(classes, name="head")(x))


def small_digits():
    data = digits_data(image_size=8, test_fraction=0.5)
    data.train = data.train.take(256)
    data.validation = data.validation.take(128)
    return data


def test_weight_decay_skips_biases_norms_and_attention():
    model = tiny_classifier("srm")
    exempt = {id(v) for v in no_decay_variables(model)}
    by_path = {v.path: id(v) in exempt for v in model.trainable_weights}
    assert by_path == {
        "conv/kernel": False,
        "bn/gamma": True,
        "bn/beta": True,
        "attention/cfc": True,
        "attention/bn/gamma": True,
        "attention/bn/beta": True,
        "head/kernel": False,
        "head/bias": True,
    }, by_path
    # Without the attention exemption, the CFC is decayed; norms and biases still are not.
    exempt = {v.path for v in no_decay_variables(model, include_attention=False)}
    assert "attention/cfc" not in exempt and {"bn/gamma", "head/bias"} <= exempt


def test_fit_learns_digits_and_reports(tmp_path):
    config = TrainConfig(epochs=3, batch_size=32, learning_rate=0.1, warmup_epochs=0)
    model, summary = fit_classifier(
        tiny_classifier, small_digits(), config, out_dir=tmp_path, verbose=0
    )
    assert summary["epochs_run"] == 3 and summary["steps"] == 3 * 8
    assert summary["val_accuracy"] > 0.5  # 10 classes: chance is 0.1
    assert summary["seconds_per_epoch"] > 0
    assert json.loads((tmp_path / "config.json").read_text())["epochs"] == 3
    assert len((tmp_path / "log.csv").read_text().strip().splitlines()) == 1 + 3
    assert keras.saving.load_model(tmp_path / "last.keras").count_params() == model.count_params()
    finished = json.loads((tmp_path / "summary.json").read_text())
    assert finished["epochs"] == 3 and finished["val_accuracy"] == summary["val_accuracy"]
    assert not (tmp_path / "backup").exists()


def tiny_digits_run(tmp_path):
    """Digits on 32 images, and a finished 1-epoch run of them in `tmp_path`."""
    data = small_digits()
    data.train, data.validation = data.train.take(32), data.validation.take(32)
    config = TrainConfig(epochs=1, batch_size=32, warmup_epochs=0)
    fit_classifier(tiny_classifier, data, config, tmp_path, verbose=0)
    return data


def test_overwrite_replaces_a_finished_run(tmp_path):
    from tests.bad_inputs.conftest import snapshot

    data = tiny_digits_run(tmp_path)
    old = snapshot(tmp_path)
    config = TrainConfig(epochs=2, batch_size=32, learning_rate=0.01, warmup_epochs=0)
    _, summary = fit_classifier(tiny_classifier, data, config, tmp_path, verbose=0, overwrite=True)
    assert summary["epochs_run"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json", "last.keras", "log.csv", "summary.json"
    ]  # fmt: skip
    assert json.loads((tmp_path / "config.json").read_text())["learning_rate"] == 0.01
    assert json.loads((tmp_path / "summary.json").read_text())["epochs"] == 2
    assert len((tmp_path / "log.csv").read_text().strip().splitlines()) == 1 + 2
    assert snapshot(tmp_path)["last.keras"] != old["last.keras"]


@pytest.mark.slow
def test_an_interrupted_overwrite_keeps_the_old_run(tmp_path):
    from tests.bad_inputs.conftest import snapshot

    data = tiny_digits_run(tmp_path)
    old = snapshot(tmp_path)
    config = TrainConfig(epochs=2, batch_size=32, learning_rate=0.01, warmup_epochs=0)
    with pytest.raises(KeyboardInterrupt):  # after one epoch: the staged run had a backup
        fit_classifier(tiny_classifier, data, config, tmp_path, verbose=0, overwrite=True,
                       callbacks=[_StopAtEpoch(1)])  # fmt: skip
    assert snapshot(tmp_path) == old  # the staging folder is gone too


class _StopAtEpoch(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt


def test_interrupted_training_resumes_with_the_same_step_count(tmp_path):
    config = TrainConfig(epochs=3, batch_size=32)
    data = small_digits()
    with pytest.raises(KeyboardInterrupt):
        fit_classifier(tiny_classifier, data, config, tmp_path, verbose=0,
                       callbacks=[_StopAtEpoch(2)])  # fmt: skip
    _, resumed = fit_classifier(tiny_classifier, data, config, tmp_path, verbose=0)
    _, straight = fit_classifier(tiny_classifier, data, config, tmp_path / "straight", verbose=0)
    assert resumed["epochs_run"] == 1  # only the epoch that was left
    assert resumed["steps"] == straight["steps"] == 3 * 8


class _DeterminismProbe(keras.callbacks.Callback):
    """Records whether TensorFlow's op determinism is on while the model trains."""

    def on_train_begin(self, logs=None):
        self.enabled = tf_config.is_op_determinism_enabled()


@pytest.mark.slow
def test_deterministic_training_repeats_its_weights_and_restores_the_setting():
    data = small_digits()
    config = TrainConfig(epochs=2, batch_size=32, deterministic=True)
    weights = []
    for _ in range(2):
        probe = _DeterminismProbe()
        model, _ = fit_classifier(tiny_classifier, data, config, verbose=0, callbacks=[probe])
        assert probe.enabled and not tf_config.is_op_determinism_enabled()
        weights.append(model.get_weights())
    for first, second in zip(*weights, strict=True):
        np.testing.assert_array_equal(first, second)
    # Off by default, and put back when training is interrupted.
    probe = _DeterminismProbe()
    fit_classifier(tiny_classifier, data, TrainConfig(epochs=1, batch_size=32), verbose=0,
                   callbacks=[probe])  # fmt: skip
    assert probe.enabled is False
    with pytest.raises(KeyboardInterrupt):
        fit_classifier(tiny_classifier, data, config, verbose=0, callbacks=[_StopAtEpoch(1)])
    assert not tf_config.is_op_determinism_enabled()


@pytest.mark.parametrize(
    "kwargs", [{"optimizer": "rmsprop"}, {"label_smoothing": 1.0}, {"mixed_precision": "fp8"}]
)
def test_bad_config_is_a_clear_error(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        TrainConfig(**kwargs)


MIRRORED_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, numpy as np
    import keras_chanattn
    from keras_chanattn.train import TrainConfig, fit_classifier

    blocks = sys.argv[1].split(",")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 8, 8, 8)).astype("float32")
    y = (np.arange(32) % 4).astype("int32")

    class Data:
        train = tf.data.Dataset.from_tensor_slices((x, y))
        validation = tf.data.Dataset.from_tensor_slices((x[:16], y[:16]))
        num_classes = 4

    def build(block):
        def make():
            inputs = keras.Input((8, 8, 8))
            h = inputs
            for name in block.split("+"):
                h = keras_chanattn.create_attention(name)(h)
            h = keras.layers.GlobalAveragePooling2D()(h)
            return keras.Model(inputs, keras.layers.Dense(4)(h))
        return make

    config = TrainConfig(epochs=2, batch_size=16, augment=False, sync_batch_norm=True,
                         weight_decay=0.0, learning_rate=0.05, warmup_epochs=0)
    # One strategy of each kind for the whole run: several MirroredStrategy objects in one
    # process can clash in their collective-op keys.
    strategies = (tf.distribute.OneDeviceStrategy("/cpu:0"),
                  tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    out = {}
    for block in blocks:
        losses = []
        for strategy in strategies:
            model, summary = fit_classifier(build(block), Data, config, strategy=strategy,
                                            verbose=0)
            losses.append([summary["val_loss"], summary["replicas"]])
        out[block] = losses
    print(json.dumps(out))
    """
)


def bn_blocks():
    """Registered blocks that carry BatchNorm (their statistics must sync across replicas)."""
    names = []
    for name in keras_chanattn.list_attention():
        layer = keras_chanattn.create_attention(name)
        try:
            layer.build((None, 8, 8, 8))
        except ValueError:
            continue  # needs other hyper-parameters at 8 channels (e.g. groups)
        if any("moving_mean" in v.path for v in layer.weights):
            names.append(name)
    return names


@pytest.mark.slow
def test_mirrored_strategy_matches_single_device(tmp_path):
    blocks = bn_blocks()
    assert "srm" in blocks
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT, ",".join(blocks)],
        capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    for block, ((single, one), (mirrored, two)) in out.items():
        assert (one, two) == (1, 2)
        assert np.isfinite(single)
        assert abs(single - mirrored) <= 1e-4 * max(1.0, abs(single)), (block, single, mirrored)


def bn_probe(momentum=0.99):
    """Images straight into a BatchNorm: its batch statistics are the images' own."""
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.BatchNormalization(momentum=momentum, name="bn")(inputs)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(2, name="head")(x))


def test_recalibration_averages_batch_statistics_like_numpy():
    import tensorflow as tf

    rng = np.random.default_rng(0)
    images = rng.normal(2.0, 3.0, (70, 4, 4, 3)).astype("float32")
    model = bn_probe()
    head = model.get_layer("head").kernel.numpy()
    labelled = tf.data.Dataset.from_tensor_slices((images, np.zeros(70, "int64")))
    assert recalibrate_batch_norm(model, labelled, batch_size=16) == 1
    # NumPy: 4 full batches of 16 (the short last one left out), biased variance, averaged.
    batches = images[:64].reshape(4, 16 * 4 * 4, 3)
    bn = model.get_layer("bn")
    np.testing.assert_allclose(bn.moving_mean.numpy(), batches.mean(1).mean(0), rtol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), batches.var(1).mean(0), rtol=1e-5)
    assert bn.momentum == 0.99  # restored
    np.testing.assert_array_equal(model.get_layer("head").kernel.numpy(), head)

    first = bn_probe()
    recalibrate_batch_norm(first, images, batch_size=16, max_batches=1)
    np.testing.assert_allclose(
        first.get_layer("bn").moving_mean.numpy(), batches[0].mean(0), rtol=1e-5
    )


@pytest.mark.parametrize("attention", ["srm", "cbam"])
def test_recalibration_reaches_batch_norms_inside_blocks_and_nested_models(attention):
    # One batch: afterwards every moving statistic is that batch's, so inference mode
    # computes what training mode computes on it (it did not before).
    inner = tiny_classifier(attention)
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, inner(inputs))
    batch = np.random.default_rng(1).uniform(0, 1, (8, 8, 8, 3)).astype("float32")
    assert not np.allclose(model(batch, training=False), model(batch, training=True), atol=1e-3)
    count = recalibrate_batch_norm(model, batch, batch_size=8)
    assert count == 2  # the network's and the block's own
    np.testing.assert_allclose(
        model(batch, training=False), model(batch, training=True), rtol=1e-4, atol=1e-4
    )


def test_recalibration_leaves_frozen_batch_norms_alone():
    model = bn_probe()
    model.get_layer("bn").trainable = False
    with pytest.raises(ValueError, match="no trainable BatchNormalization"):
        recalibrate_batch_norm(model, np.ones((4, 4, 4, 3), "float32"))
    # Beside a trainable one (SRM's own), the frozen network BN keeps its statistics.
    model = tiny_classifier("srm")
    frozen = model.get_layer("bn")
    frozen.trainable = False
    frozen.moving_mean.assign(np.full(8, 0.5, "float32"))
    block_bn = model.get_layer("attention").bn
    images = np.random.default_rng(3).uniform(0, 1, (8, 8, 8, 3)).astype("float32")
    assert recalibrate_batch_norm(model, images, batch_size=8) == 1
    np.testing.assert_array_equal(frozen.moving_mean.numpy(), np.full(8, 0.5, "float32"))
    assert not np.allclose(block_bn.moving_variance.numpy(), 1.0)


def test_recalibration_errors_keep_the_statistics():
    model = bn_probe()
    bn = model.get_layer("bn")
    bn.moving_mean.assign([1.0, 2.0, 3.0])
    images = np.random.default_rng(2).normal(size=(8, 4, 4, 3)).astype("float32")

    def interrupted():
        yield images
        yield images
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        recalibrate_batch_norm(model, interrupted(), batch_size=8)
    np.testing.assert_array_equal(bn.moving_mean.numpy(), [1.0, 2.0, 3.0])
    assert bn.momentum == 0.99
    with pytest.raises(ValueError, match="holds no images"):
        recalibrate_batch_norm(model, iter([]))
    with pytest.raises(ValueError, match="NHWC images"):
        recalibrate_batch_norm(model, np.ones((4, 3), "float32"))
    with pytest.raises(ValueError, match="batch_size"):
        recalibrate_batch_norm(model, images, batch_size=1)
    with pytest.raises(ValueError, match="max_batches"):
        recalibrate_batch_norm(model, images, max_batches=0)
    np.testing.assert_array_equal(bn.moving_mean.numpy(), [1.0, 2.0, 3.0])


@pytest.mark.slow
def test_train_command_passes_seed_and_determinism(tmp_path, capsys):
    from keras_chanattn.cli import main

    argv = ["train", "--attention", "se", "--epochs", "1", "--image-size", "8"]
    assert main([*argv, "--seed", "4", "--deterministic", "--out", str(tmp_path)]) == 0
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["seed"] == 4 and saved["deterministic"] is True
    assert "validation accuracy" in capsys.readouterr().out
    assert (tmp_path / "last.keras").is_file()
