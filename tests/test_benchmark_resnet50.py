"""The ResNet-50 benchmark script's argument checks and its models built from pretrained
weights on disk (at 32x32, with a weights file the test writes)."""

import dataclasses
import functools
import importlib.util
import os

import keras
import numpy as np
import pytest

from keras_chanattn.layers import AttentionLayer

SCRIPT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "export_resnet50.py"
)


@functools.cache
def script():
    spec = importlib.util.spec_from_file_location("export_resnet50", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _layers(layer)


def test_weights_must_be_a_file_and_need_fine_tuning(tmp_path, capsys):
    bench = script()
    with pytest.raises(SystemExit):
        bench.parse_args(["--weights", str(tmp_path / "missing.h5"), "--fine-tune-epochs", "1"])
    error = capsys.readouterr().err
    assert "no such file" in error and bench.PRETRAINED_FILE in error
    path = tmp_path / "weights.h5"
    path.write_bytes(b"")
    with pytest.raises(SystemExit):
        bench.parse_args(["--weights", str(path)])
    assert "--fine-tune-epochs" in capsys.readouterr().err


@pytest.mark.slow
def test_every_model_starts_from_the_weights_file(tmp_path):
    bench = script()
    keras.utils.set_random_seed(0)
    source = keras.applications.ResNet50(
        include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg"
    )
    path = tmp_path / "resnet50_notop.weights.h5"
    source.save_weights(path)
    argv = ["--weights", str(path), "--fine-tune-epochs", "1", "--image-size", "32"]
    models, skipped = bench.build_models(bench.parse_args(argv), ["se", "srm"])
    assert skipped == {}
    assert list(models) == ["plain", "floor", "se", "srm", "srm_scaled"]
    want = {
        name: source.get_layer(name).get_weights() for name in ("conv1_conv", "conv5_block3_3_bn")
    }
    for label, model in models.items():
        layers = list(_layers(model))
        blocks = [layer for layer in layers if isinstance(layer, AttentionLayer)]
        assert len(blocks) == (0 if label == "plain" else 16), label
        checked = [layer for layer in layers if layer.name in want]
        assert sorted(layer.name for layer in checked) == sorted(want), label
        for layer in checked:
            for got, expected in zip(layer.get_weights(), want[layer.name], strict=True):
                np.testing.assert_array_equal(got, expected, err_msg=f"{label} {layer.name}")
        assert model.output_shape == (None, 10)
    scaled = [b.scale_statistics for b in _layers(models["srm_scaled"]) if hasattr(b, "cfc")]
    assert scaled == [True] * 16
    # Each model owns its variables: fine-tuning one leaves the others alone.
    variables = [id(v) for model in models.values() for v in model.weights]
    assert len(variables) == len(set(variables))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--pretrain-epochs", "1"], "--fine-tune-epochs"),
        (["--pretrain-epochs", "-1", "--fine-tune-epochs", "1"], ">= 0"),
        (["--fine-tune-epochs", "-2"], ">= 0"),
        (["--fine-tune-epochs", "1", "--fine-tune-lr", "0"], "--fine-tune-lr must be > 0"),
        (["--extra-epochs", "sa=2"], "--extra-epochs needs --fine-tune-epochs"),
        (["--fine-tune-epochs", "1", "--extra-epochs", "sa=0"], "expected BLOCK=N with N >= 1"),
        (["--fine-tune-epochs", "1", "--extra-epochs", "sa"], "expected BLOCK=N with N >= 1"),
    ],
)
def test_pretrain_arguments_are_checked(argv, message, capsys):
    with pytest.raises(SystemExit):
        script().parse_args(argv)
    assert message in capsys.readouterr().err


def test_pretrain_and_weights_exclude_each_other(tmp_path, capsys):
    path = tmp_path / "weights.h5"
    path.write_bytes(b"")
    argv = ["--weights", str(path), "--pretrain-epochs", "1", "--fine-tune-epochs", "1"]
    with pytest.raises(SystemExit):
        script().parse_args(argv)
    assert "give one of them" in capsys.readouterr().err


def _tiny_digits(size, count):
    from keras_chanattn.data import digits_data

    data = digits_data(size)
    return dataclasses.replace(
        data, train=data.train.take(count), validation=data.validation.take(count)
    )


@pytest.mark.slow
def test_pretrained_weights_are_what_every_model_starts_from(tmp_path):
    """`--pretrain-epochs`: the trained backbone's weights land in the output folder, in the
    form `--weights` reads, and every model of the comparison is built from them."""
    bench = script()
    keras.utils.set_random_seed(0)
    argv = ["--pretrain-epochs", "1", "--fine-tune-epochs", "1", "--image-size", "32"]
    args = bench.parse_args(argv)
    path = bench.pretrain(args, str(tmp_path), data=_tiny_digits(32, 8))
    assert path == str(tmp_path / bench.DIGITS_PRETRAINED_FILE)
    assert sorted(os.listdir(tmp_path)) == [bench.DIGITS_PRETRAINED_FILE]  # no leftovers
    fresh = keras.applications.ResNet50(
        include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg"
    )
    loaded = keras.applications.ResNet50(
        include_top=False, weights=path, input_shape=(32, 32, 3), pooling="avg"
    )
    # The file's weights are read (not a fresh initialisation); that they are trained ones is
    # not checked here.
    assert not np.allclose(
        fresh.get_layer("conv1_conv").get_weights()[0],
        loaded.get_layer("conv1_conv").get_weights()[0],
    )
    args.weights = path
    models, _ = bench.build_models(args, ["se"])
    want = loaded.get_layer("conv5_block3_3_conv").get_weights()[0]
    for label, model in models.items():
        got = [layer for layer in _layers(model) if layer.name == "conv5_block3_3_conv"]
        assert len(got) == 1, label
        np.testing.assert_array_equal(got[0].get_weights()[0], want, err_msg=label)
    # A second run does not replace the file unless asked, and says so before training.
    with pytest.raises(FileExistsError):
        bench.pretrain(args, str(tmp_path), data=_tiny_digits(32, 8))


def test_agreement_is_a_goal_only_after_a_fine_tune():
    goal = script().goal
    row = {"partitions": 1, "top1_agreement": 0.985}
    assert goal("se", row, 1.0, fine_tuned=False) == "met"
    assert goal("se", row, 1.0, fine_tuned=True) == "MISSED: top-1 agr < 0.99"
    assert goal("se", {**row, "top1_agreement": 0.99}, 1.0, fine_tuned=True) == "met"
    assert goal("cbam", {**row, "top1_agreement": None}, 1.2, fine_tuned=True).startswith("MISSED")


def test_report_notes_name_the_failed_verification_checks():
    row_notes = script().row_notes
    row = {"undelegated_ops": [], "float_ops": [], "widened_ranges": [], "xnnpack": True,
           "failures": []}  # fmt: skip
    assert row_notes("se", row) == []
    failed = {**row, "failures": ["relative error 0.3 > 0.2", "top-1 agreement 0.9 < 0.98"]}
    assert row_notes("ge", failed) == [
        "ge: failed verification checks: relative error 0.3 > 0.2; top-1 agreement 0.9 < 0.98"
    ]
    kept = {**row, "float_ops": ["SQRT (a)", "SQRT (b)"], "xnnpack": False}
    (note,) = row_notes("srm", kept)
    assert "float ops kept: SQRT x2" in note and "XNNPACK refused" in note


def _record_fine_tunes(monkeypatch):
    """Replaces the training with a stub that records `{model name: epochs}` (in call
    order) and reports validation accuracy 0.5; returns that record."""
    import keras_chanattn.train as train

    epochs = {}

    def fit_classifier(build, data, config, verbose):
        model = build()
        epochs[model.name] = config.epochs
        return model, {"val_accuracy": 0.5}

    monkeypatch.setattr(train, "fit_classifier", fit_classifier)
    return epochs


def test_extra_epochs_go_to_the_named_model_only(monkeypatch, capsys):
    bench = script()
    args = bench.parse_args(
        ["--image-size", "8", "--fine-tune-epochs", "1", "--extra-epochs", "sa=2",
         "--no-recalibrate-bn"]
    )  # fmt: skip
    assert args.extra_epochs == {"sa": 2}
    epochs = _record_fine_tunes(monkeypatch)
    models = {label: keras.Sequential(name=label) for label in ("plain", "sa")}
    assert bench.fine_tune(models, args) == {"plain": (0.5, None), "sa": (0.5, None)}
    assert epochs == {"plain": 1, "sa": 3}
    with pytest.raises(SystemExit, match="not models of this run"):
        bench.main(["--fine-tune-epochs", "1", "--blocks", "se", "--extra-epochs", "sa=1"])


def test_untuned_baselines_fine_tune_the_blocks_models_only(monkeypatch, capsys):
    bench = script()
    with pytest.raises(SystemExit):
        bench.parse_args(["--untuned-baselines"])
    assert "--untuned-baselines needs --fine-tune-epochs" in capsys.readouterr().err
    argv = ["--image-size", "8", "--fine-tune-epochs", "1", "--no-recalibrate-bn"]
    args = bench.parse_args([*argv, "--untuned-baselines"])
    tuned = _record_fine_tunes(monkeypatch)
    models = {label: keras.Sequential(name=label) for label in ("plain", "floor", "se", "srm")}
    assert bench.fine_tune(models, args) == {"se": (0.5, None), "srm": (0.5, None)}
    assert list(tuned) == ["se", "srm"]
    assert "not fine-tuning plain" in capsys.readouterr().out
    tuned.clear()
    assert list(bench.fine_tune(models, bench.parse_args(argv))) == list(models)
    assert list(tuned) == list(models)


@pytest.mark.parametrize("recalibrate", [True, False])
def test_fine_tune_reports_accuracy_before_and_after_recalibration(recalibrate):
    bench = script()
    argv = ["--image-size", "8", "--fine-tune-epochs", "1", "--fine-tune-lr", "1e-3"]
    args = bench.parse_args(argv + ([] if recalibrate else ["--no-recalibrate-bn"]))
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(x))
    model = keras.Model(inputs, keras.layers.Dense(10)(x))
    accuracy = bench.fine_tune({"plain": model}, args)
    tuned, after = accuracy["plain"]
    assert 0.0 <= tuned <= 1.0
    if not recalibrate:
        assert after is None
        return
    # Independently: the recalibrated model's accuracy on the digits' validation split.
    from keras_chanattn.data import load_digits_images

    _, (images, labels) = load_digits_images(8, seed=args.seed)
    predicted = np.argmax(model.predict(images, verbose=0), 1)
    assert after == pytest.approx(np.mean(predicted == labels), abs=1e-9)


def _residual_models(bench):
    """plain, floor and se as the benchmark makes them, on a tiny residual network."""
    from keras_chanattn.models import add_attention

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Add(name="block1_add")([x, keras.layers.Conv2D(8, 3, padding="same")(x)])
    x = keras.layers.GlobalAveragePooling2D()(x)
    plain = keras.Model(inputs, keras.layers.Dense(10)(x), name="plain")
    floor = add_attention(plain, "ge", name="floor", **bench.FLOOR_GATE)
    se = add_attention(plain, "se", name="se", reduction=2)
    bench.randomize_blocks({"se": se}, seed=0)
    return {"plain": plain, "floor": floor, "se": se}


def test_saved_models_are_read_back_with_the_runs_settings(tmp_path, monkeypatch):
    bench = script()
    out = tmp_path / "run"
    argv = ["--image-size", "8", "--fine-tune-epochs", "1", "--no-recalibrate-bn", "--seed", "3"]
    args = bench.parse_args([*argv, "--untuned-baselines", "--save-models", "--out", str(out)])
    models = _residual_models(bench)
    # A trained model carries its optimizer's state; the saved file should not.
    models["se"].compile(optimizer="adamw", loss="sparse_categorical_crossentropy")
    models["se"].fit(np.zeros((2, 8, 8, 3)), np.zeros(2), verbose=0)
    folder = str(out / bench.MODELS_FOLDER)
    saver = bench.ModelSaver(folder, args, list(models))
    _record_fine_tunes(monkeypatch)
    accuracy = bench.fine_tune(models, args, saver)
    assert saver.saved == ["se"]  # saved as soon as it was tuned
    saver.save_rest(models, accuracy)
    assert sorted(os.listdir(folder)) == ["floor.keras", "plain.keras", "run.json", "se.keras"]

    # The files exist now: a second run stops before training unless --overwrite.
    with pytest.raises(FileExistsError, match="--overwrite"):
        bench.ModelSaver(folder, args, ["se"])
    bench.ModelSaver(folder, bench.parse_args([*argv, "--overwrite"]), ["se"])

    again = bench.parse_args(["--models-from", folder])
    assert again.image_size == 224  # the default until the saved settings are read
    loaded, loaded_accuracy = bench.load_models(again, None)
    assert list(loaded) == ["plain", "floor", "se"]
    assert loaded_accuracy == {"se": (0.5, None)}
    assert (again.image_size, again.fine_tune_epochs, again.seed) == (8, 1, 3)
    assert again.untuned_baselines and not again.recalibrate_bn
    images = np.random.default_rng(0).uniform(size=(4, 8, 8, 3)).astype("float32")
    for label, model in models.items():
        want = model.predict(images, verbose=0)
        np.testing.assert_allclose(loaded[label].predict(images, verbose=0), want, atol=1e-6)
    assert not loaded["se"].compiled
    # Without the optimizer's slots the file is about the size of the plain model's.
    sizes = {label: os.path.getsize(os.path.join(folder, f"{label}.keras")) for label in models}
    assert sizes["se"] < 1.5 * sizes["plain"]

    with pytest.raises(SystemExit, match="eca not saved there"):
        bench.load_models(bench.parse_args(["--models-from", folder]), ["eca"])


@pytest.mark.parametrize(
    ("folder", "extra", "message"),
    [
        (".", ["--fine-tune-epochs", "1"], "--fine-tune-epochs would make them"),
        (".", ["--save-models"], "--save-models would make them"),
        ("missing", [], "no run.json there"),
    ],
)
def test_models_from_takes_no_training_flags(folder, extra, message, tmp_path, capsys):
    bench = script()
    (tmp_path / bench.RUN_FILE).write_text("{}")
    with pytest.raises(SystemExit):
        bench.parse_args(["--models-from", str(tmp_path / folder), *extra])
    assert message in capsys.readouterr().err


def test_models_from_exports_and_times_the_saved_models(tmp_path):
    bench = script()
    folder = str(tmp_path / "saved")
    args = bench.parse_args(["--image-size", "8", "--fine-tune-epochs", "1", "--save-models"])
    models = _residual_models(bench)
    saver = bench.ModelSaver(folder, args, list(models))
    saver.save_rest(models, {"se": (0.25, 0.75)})
    out = tmp_path / "again"
    argv = ["--models-from", folder, "--out", str(out), "--runs", "2", "--warmup", "1",
            "--held-out", "20", "--calibration", "10"]  # fmt: skip
    bench.main(argv)
    text = (out / "resnet50_int8.txt").read_text()
    assert f"Models read from {folder}" in text
    assert "8x8" in text and "fine-tuned 1 epoch(s)" in text
    assert "se                0.250 -> 0.750" in text
    rows = [line.split()[0] for line in text.splitlines() if line[:6] in ("plain ", "floor ")]
    assert rows[:2] == ["plain", "floor"]
