"""The main job end to end on a reduced configuration, and its configuration file."""

import csv
import dataclasses
import json
import pathlib

import pytest

import keras_chanattn
from keras_chanattn.cli import main
from keras_chanattn.pipeline import PipelineConfig, default_train_config, run_pipeline

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_shipped_config_file_is_the_default():
    shipped = PipelineConfig.from_file(ROOT / "export" / "pipeline.json")
    assert dataclasses.asdict(shipped) == dataclasses.asdict(PipelineConfig())


def test_config_errors():
    with pytest.raises(ValueError, match="Unknown blocks"):
        PipelineConfig(blocks=["nope"])
    with pytest.raises(ValueError, match="Unknown backbone 'vgg'.*resnet20"):
        PipelineConfig(backbone="vgg")
    with pytest.raises(ValueError, match="Nothing to run"):
        PipelineConfig(blocks=[], include_plain=False)
    with pytest.raises(ValueError, match="Unknown training keys \\['epoch'\\]"):
        PipelineConfig(train={"epoch": 3})


def test_config_holds_a_train_config_and_reads_all_blocks(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"blocks": "all", "train": {"epochs": 2, "optimizer": "sgd"}}))
    config = PipelineConfig.from_file(path, include_plain=False)
    assert config.train.epochs == 2 and config.train.optimizer == "sgd"
    assert config.train.deterministic is False  # a train dict is a whole TrainConfig
    assert config.variants() == keras_chanattn.list_attention()
    assert PipelineConfig().variants() == ["plain", "se", "srm", "sa"]
    assert PipelineConfig().train == default_train_config()


@pytest.mark.slow
def test_main_job_end_to_end_reduced(tmp_path):
    config = PipelineConfig(
        blocks=["se"],
        train=dataclasses.replace(default_train_config(), epochs=1),
        image_size=16,
        formats=["float32", "int8"],
        out_dir=str(tmp_path),
        run_name="tiny",
        calibration_samples=32,
        latency_runs=3,
    )
    rows, run_dir = run_pipeline(config, verbose=0, log=lambda *_: None)
    assert [r["variant"] for r in rows] == ["plain", "se"]
    for row in rows:
        assert row["params"] > 0 and 0.0 <= row["val_accuracy"] <= 1.0
        for fmt in config.formats:
            path = run_dir / row["variant"] / f"model_{fmt}.tflite"
            report = json.loads(path.with_suffix(".json").read_text())
            assert report["quantization"] == fmt and report["size_bytes"] == path.stat().st_size
        assert (run_dir / row["variant"] / "saved_model" / "saved_model.pb").exists()
    bench = json.loads((run_dir / "bench" / "bench.json").read_text())
    measured = {(r["model"], r["format"]): r for r in bench["rows"]}
    assert set(measured) == {(v, f) for v in ("plain", "se") for f in config.formats}
    for (variant, fmt), r in measured.items():
        size = (run_dir / variant / f"model_{fmt}.tflite").stat().st_size
        assert r["size_bytes"] == size and r["latency_median_ms"] > 0
        report = json.loads((run_dir / variant / f"model_{fmt}.json").read_text())
        assert r["partitions"] == report["xnnpack_partitions"]
        if fmt == "float32":
            assert r["partitions"] == 1
    assert measured[("plain", "float32")]["ratio_vs_plain"] == 1.0
    for plot in ("latency_overhead.png", "cost_vs_fidelity.png"):
        assert (run_dir / "bench" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (run_dir / "report.md").read_text()
    assert "| plain |" in report and "| se |" in report and "latency_overhead.png" in report
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
