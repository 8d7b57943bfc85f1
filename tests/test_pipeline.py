"""The main job end to end on a reduced configuration, and its configuration file."""

import csv
import dataclasses
import json
import pathlib

import pytest

from keras_chanattn.cli import main
from keras_chanattn.pipeline import PipelineConfig, run_pipeline

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_shipped_config_file_is_the_default():
    shipped = PipelineConfig.from_file(ROOT / "export" / "pipeline.json")
    assert dataclasses.asdict(shipped) == dataclasses.asdict(PipelineConfig())


def test_config_errors():
    with pytest.raises(ValueError, match="Unknown blocks"):
        PipelineConfig(blocks=["nope"])
    with pytest.raises(ValueError, match="backbone"):
        PipelineConfig(backbone="vgg")


@pytest.mark.slow
def test_main_job_end_to_end_reduced(tmp_path):
    config = PipelineConfig(
        blocks=["se"],
        epochs=1,
        image_size=16,
        formats=["float32", "int8"],
        out_dir=str(tmp_path),
        run_name="tiny",
        calibration_samples=32,
    )
    rows, run_dir = run_pipeline(config, verbose=0, log=lambda *_: None)
    assert [r["variant"] for r in rows] == ["plain", "se"]
    for row in rows:
        assert row["params"] > 0 and 0.0 <= row["val_accuracy"] <= 1.0
        for fmt in config.formats:
            size = (run_dir / row["variant"] / f"model_{fmt}.tflite").stat().st_size
            assert row[f"{fmt}_kb"] == pytest.approx(size / 1024)
            assert row[f"{fmt}_partitions"] >= 1
            report = json.loads((run_dir / row["variant"] / f"model_{fmt}.json").read_text())
            assert report["quantization"] == fmt
        assert (run_dir / row["variant"] / "saved_model" / "saved_model.pb").exists()
    assert rows[0]["float32_max_abs"] < 1e-3
    report = (run_dir / "report.md").read_text()
    assert "| plain |" in report and "| se |" in report
    with open(run_dir / "results.csv") as f:
        assert [r["variant"] for r in csv.DictReader(f)] == ["plain", "se"]
    assert json.loads((run_dir / "results.json").read_text())[1]["variant"] == "se"
    # A second run of the same name refuses to overwrite.
    with pytest.raises(FileExistsError, match="overwrite"):
        run_pipeline(config, verbose=0, log=lambda *_: None)


@pytest.mark.slow
def test_cli_run_without_export(tmp_path, capsys):
    code = main(
        ["run", "--blocks", "eca", "--no-plain", "--epochs", "1", "--image-size", "16",
         "--out", str(tmp_path), "--name", "cli", "--quiet", "--formats", "none"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "| eca |" in out
    assert (tmp_path / "cli" / "eca" / "model.keras").exists()
