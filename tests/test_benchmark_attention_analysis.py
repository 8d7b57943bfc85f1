"""benchmarks/attention_analysis.py: its canvases hold each digit inside its box, and the
script runs end to end on tiny settings, printing both parts' figures."""

import importlib.util
import pathlib
import re

import numpy as np
import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "attention_analysis.py"


def _script():
    spec = importlib.util.spec_from_file_location("attention_analysis", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_canvases_place_each_digit_inside_its_box():
    rng = np.random.default_rng(0)
    digits = rng.uniform(0.1, 1.0, (20, 8, 8, 3)).astype("float32")  # no zero pixel
    canvases, boxes = _script().canvases(digits, canvas=20, size=6, seed=3)
    assert canvases.shape == (20, 20, 20, 3) and boxes.shape == (20, 4)
    assert np.all(boxes[:, 2:] - boxes[:, :2] == 6)
    assert boxes.min() >= 0 and boxes.max() <= 20
    for canvas, (y0, x0, y1, x1) in zip(canvases, boxes, strict=True):
        inside = np.zeros((20, 20), bool)
        inside[y0:y1, x0:x1] = True
        assert np.all(canvas[inside] > 0) and np.all(canvas[~inside] == 0)
    assert len({tuple(b) for b in boxes[:, :2]}) > 10  # positions vary


@pytest.mark.slow
def test_the_benchmark_runs_on_tiny_settings(tmp_path, capsys):

    from keras_chanattn.models.presets import build_model

    run = tmp_path / "run"
    for variant in ("se", "srm"):
        (run / variant).mkdir(parents=True)
        model = build_model(
            "cifar_resnet", variant, depth=8, input_shape=(8, 8, 3), num_classes=10,
            classifier_activation=None,
        )  # fmt: skip
        model.save(run / variant / "model.keras")
    argv = ["--run", str(run), "--depth", "8", "--samples", "8", "--blocks", "se",
            "--canvas", "12", "--digit-size", "6", "--canvas-epochs", "1", "--canvases", "8",
            "--limit", "64", "--out", str(tmp_path / "analysis")]  # fmt: skip
    _script().main(argv)
    out = capsys.readouterr().out
    assert out.startswith("settings: run=")
    stages = re.findall(r"^stage(\d)\s+(se|srm)\s+1\s", out, flags=re.MULTILINE)
    assert sorted(stages) == [(s, v) for s in "123" for v in ("se", "srm")]
    assert re.search(r"^se: top-5 grid of stage3_block1_attention: \d+ distinct", out, re.M)
    row = re.search(r"^se\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+stage3_block1_out$", out, re.M)
    assert row and all(0 <= float(v) <= 1 for v in row.groups())
    assert (tmp_path / "analysis" / "report.md").is_file()
