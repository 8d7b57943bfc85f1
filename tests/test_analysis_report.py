"""analyze_models and `chanattn analyze`: every file and figure the analysis lists is written,
its figures agree with gates computed independently (a sub-model up to each block, NumPy
statistics), and a replaced analysis is swapped in whole or not at all."""

import csv
import json
import re

import keras
import numpy as np
import pytest

import keras_chanattn
from keras_chanattn.analysis import analyze_models
from keras_chanattn.analysis import report as analysis_report
from keras_chanattn.cli import main
from keras_chanattn.data import load_digits_images
from keras_chanattn.models.presets import build_model
from keras_chanattn.testing import randomize_weights

SAMPLES = 24
FAST = {"samples": SAMPLES, "grid_channels": 2, "grad_cam_images": 2, "log": None}


def tiny_resnet(variant):
    """A CIFAR ResNet-8 (one block per stage: 16, 32, 64 channels) on 8x8 digits, random
    weights (as a trained one would have: no gate constant over the images)."""
    keras.utils.set_random_seed(0)
    model = build_model(
        "cifar_resnet", variant, depth=8, input_shape=(8, 8, 3), num_classes=10,
        classifier_activation=None, name=f"{variant}_tiny",
    )  # fmt: skip
    randomize_weights(model, seed=1)
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """`{variant: path}` of saved tiny ResNets: plain, SE and SRM."""
    folder = tmp_path_factory.mktemp("models")
    paths = {}
    for variant in ("plain", "se", "srm"):
        paths[variant] = folder / f"{variant}.keras"
        tiny_resnet(variant).save(paths[variant])
    return paths


def digits(count=SAMPLES):
    """The first `count` validation digits at 8x8, read independently of the analysis."""
    (_, _), (images, labels) = load_digits_images(8, 3, seed=0)
    return images[:count], labels[:count]


def block_weights(model, name, images):
    """A block's channel gate computed on its input from a sub-model, as NumPy."""
    layer = model.get_layer(name)
    block_input = keras.Model(model.inputs[0], layer.input)(images)
    return keras.ops.convert_to_numpy(layer.gates(block_input)["channel"]).astype("float64")


def mean_abs_corr(weights):
    """Mean |off-diagonal| of np.corrcoef over the channels that vary (std above 1e-6)."""
    varying = weights[:, weights.std(axis=0) > 1e-6 * np.maximum(1, np.abs(weights.mean(0)))]
    corr = np.corrcoef(varying, rowvar=False)
    return np.mean(np.abs(corr[~np.eye(len(corr), dtype=bool)]))


def test_every_listed_file_is_written_and_the_figures_agree(saved, tmp_path):
    out = tmp_path / "analysis"
    paths = [saved["plain"], saved["se"], saved["srm"]]
    summary = analyze_models(paths, "digits", out, **FAST)
    assert summary["report"] == str(out / "report.md")
    stages = [f"{kind}_stage{i}.png" for i in (1, 2, 3) for kind in ("correlation", "gates")]
    per_model = ["grad_cam.png", "statistics.csv", "statistics.json", "top_activating.png"]
    expected = {"report.md", "analysis.json", *stages, "plain_tiny/grad_cam.png"}
    expected |= {f"{m}_tiny/{name}" for m in ("se", "srm") for name in per_model}
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert written == expected
    assert not list(tmp_path.glob(".analysis*"))  # the staging folder was swapped in
    for png in (p for p in out.rglob("*.png")):
        assert png.read_bytes().startswith(b"\x89PNG")
    report = (out / "report.md").read_text()
    links = set(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report))
    assert links == {name for name in expected if name.endswith(".png")}
    assert json.loads((out / "analysis.json").read_text()) == {
        k: v for k, v in summary.items() if k != "report"
    }

    plain, se, srm = summary["models"]
    assert plain["gates"] == "no attention block" and plain["statistics"] == []
    assert "| plain_tiny | no attention block |" in report
    assert se["stages"] == {f"stage{i}": f"stage{i}_block1_attention" for i in (1, 2, 3)}
    assert se["grad_cam"]["layer"] == "stage3_block1_out" and se["grad_cam"]["images"] == 2
    images, _ = digits()
    model = keras.saving.load_model(saved["se"])
    for row in se["statistics"]:
        weights = block_weights(model, row["layer"], images)
        assert row["images"] == SAMPLES and row["channels"] == weights.shape[1]
        assert row["mean_abs_offdiagonal"] == pytest.approx(mean_abs_corr(weights), abs=1e-4)
        top = np.argsort(-weights, axis=0, kind="stable")[:5]
        assert row["distinct_top_images"] == len(np.unique(top))
        assert row["near_zero"] == pytest.approx(np.mean(weights <= 0.1))
    top = se["top_activating"]
    assert top["block"] == "stage3_block1_attention" and top["k"] == 5
    assert top["distinct_images"] == se["statistics"][-1]["distinct_top_images"]
    with open(out / "se_tiny" / "statistics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [r["layer"] for r in rows] == [r["layer"] for r in se["statistics"]]
    assert json.loads((out / "srm_tiny" / "statistics.json").read_text()) == srm["statistics"]


def functional_model(name="handmade", head=True):
    """Conv 8 -> SE -> SRM -> conv 16 -> SE (-> classifier): stages of 8 and 16 channels."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv1")(inputs)
    x = keras_chanattn.create_attention("se", reduction=2, name="se1")(x)
    x = keras_chanattn.create_attention("srm", name="srm1")(x)
    x = keras.layers.Conv2D(16, 3, padding="same", name="conv2")(x)
    x = keras_chanattn.create_attention("se", reduction=2, name="se2")(x)
    if head:
        x = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, x, name=name)
    randomize_weights(model, seed=2)
    return model


def test_arrays_a_chosen_block_stages_by_width_and_labels_of_alike_names(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(12, 8, 8, 3)).astype("float32")
    classes = rng.integers(0, 3, 12)
    model = functional_model()
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        model.save(tmp_path / folder / "model.keras")
    paths = [tmp_path / "a" / "model.keras", tmp_path / "b" / "model.keras"]
    summary = analyze_models(paths, (images, classes), tmp_path / "out", block="se1", **FAST)
    first, second = summary["models"]
    assert (first["label"], second["label"]) == ("a_model", "b_model")
    assert first["stages"] == {"stage1": "srm1", "stage2": "se2"}  # se1, srm1: one width
    assert first["top_activating"]["block"] == "se1"
    assert [row["stage"] for row in first["statistics"]] == ["stage1", "stage1", "stage2"]
    assert summary["figures"]["stage1"]["blocks"] == {"a_model": "srm1", "b_model": "srm1"}
    weights = block_weights(model, "srm1", images)
    assert first["statistics"][1]["layer"] == "srm1"
    assert first["statistics"][1]["mean_abs_offdiagonal"] == pytest.approx(
        mean_abs_corr(weights), abs=1e-4
    )
    assert summary["data"] == "arrays" and first["grad_cam"]["layer"] == "se2"


def test_gates_of_a_model_that_is_not_a_classifier_without_grad_cam(tmp_path):
    images = np.random.default_rng(1).uniform(size=(6, 8, 8, 3)).astype("float32")
    model = functional_model("features", head=False)
    summary = analyze_models(
        [model], (images, np.zeros(6, int)), tmp_path / "out", samples=6, grid_channels=2,
        grad_cam_images=0, log=None,
    )  # fmt: skip
    (result,) = summary["models"]
    assert result["grad_cam"] is None and result["source"] == "<features>"
    assert [row["layer"] for row in result["statistics"]] == ["se1", "srm1", "se2"]
    assert not (tmp_path / "out" / "features" / "grad_cam.png").exists()


def test_no_gates_skips_them(saved, tmp_path):
    summary = analyze_models([saved["se"]], "digits", tmp_path / "out", gates=False, **FAST)
    (result,) = summary["models"]
    assert result["statistics"] == [] and result["top_activating"] is None
    assert result["gates"].startswith("not analysed") and summary["figures"] == {}


def test_overwrite_swaps_the_new_analysis_in_and_a_failure_keeps_the_old(tmp_path, monkeypatch):
    out = tmp_path / "out"
    data = (np.random.default_rng(2).uniform(size=(6, 8, 8, 3)).astype("float32"), [0] * 6)
    settings = {**FAST, "samples": 6, "grad_cam_images": 0}
    first, second = functional_model("first"), functional_model("second")
    analyze_models([first], data, out, **settings)
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(FileExistsError, match="already exists. Pass overwrite=True \\(--overwrite"):
        analyze_models([second], data, out, **settings)

    def fails(summary):
        raise RuntimeError("the report could not be drawn")

    monkeypatch.setattr(analysis_report, "_report_text", fails)
    with pytest.raises(RuntimeError, match="could not be drawn"):
        analyze_models([second], data, out, overwrite=True, **settings)
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left
    monkeypatch.undo()
    analyze_models([second], data, out, overwrite=True, **settings)
    names = {p.name for p in out.iterdir()}
    assert {"analysis.json", "report.md", "second"} <= names and "first" not in names
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.slow
def test_the_command_writes_the_report_and_ends_with_its_path(saved, tmp_path, capsys):
    out = tmp_path / "analysis"
    argv = ["analyze", str(saved["se"]), str(saved["plain"]), "--out", str(out)]
    assert main([*argv, "--samples", "16", "--grad-cam-images", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == f"Report: {out / 'report.md'}"
    assert lines[0].startswith("se_tiny: 3 blocks") and "no attention block" in lines[1]
    summary = json.loads((out / "analysis.json").read_text())
    assert summary["samples"] == 16 and summary["top_k"] == 5
    assert (out / "se_tiny" / "top_activating.png").is_file()
