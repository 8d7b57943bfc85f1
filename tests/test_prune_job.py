"""keras_chanattn.prune.job.prune_job: bad input refused before any work; one full run (slow)."""

import json

import keras
import numpy as np
import pytest

from keras_chanattn.data import load_digits_images
from keras_chanattn.models import cifar_resnet
from keras_chanattn.prune import job as job_module
from keras_chanattn.prune.job import prune_job

SIZE = 16


def _model(tmp_path, block="se", position="3x3", train=False):
    keras.utils.set_random_seed(0)
    model = cifar_resnet(
        8, block, position=position, input_shape=(SIZE, SIZE, 3), shortcut="projection",
        classifier_activation=None,
    )  # fmt: skip
    if train:
        (x, y), _ = load_digits_images(SIZE)
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        model.compile(keras.optimizers.Adam(1e-2), loss)
        model.fit(x, y, epochs=2, batch_size=64, verbose=0)
    path = tmp_path / f"{block}_{position}.keras"
    model.save(path)
    return path


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"ratio": 1.0}, ValueError, r"\[0, 1\)"),
        ({"criterion": "taylor"}, ValueError, "criterion"),
        ({"fine_tune_epochs": -1}, ValueError, "fine_tune_epochs"),
        ({"model_path": "missing.keras"}, FileNotFoundError, "No model file"),
        ({"divisor": 0}, ValueError, "divisor"),
    ],
)
def test_bad_arguments_are_refused_before_work(tmp_path, kwargs, error, match):
    arguments = {"model_path": _model(tmp_path), "ratio": 0.5, "out_dir": tmp_path / "out"}
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        prune_job(**arguments)
    assert not (tmp_path / "out").exists()


def test_unprunable_model_is_refused_before_work(tmp_path):
    path = _model(tmp_path, position="standard")
    with pytest.raises(ValueError, match="no prunable attention block"):
        prune_job(path, 0.5, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_non_empty_out_dir_needs_overwrite(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("x")
    with pytest.raises(FileExistsError, match="overwrite"):
        prune_job(_model(tmp_path), 0.5, out_dir=tmp_path / "out")
    # Even with overwrite, a folder that no prune job wrote is refused.
    with pytest.raises(FileExistsError, match=r"did not write \(no report.json\)"):
        prune_job(_model(tmp_path), 0.5, out_dir=tmp_path / "out", overwrite=True)
    assert [f.name for f in (tmp_path / "out").iterdir()] == ["old.txt"]


def test_a_failed_overwrite_puts_the_earlier_output_back(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text('{"earlier": true}')
    (out / "pruned.keras").write_text("earlier model")

    def fails(model, dataset, work, job, say):
        (work / "pruned.keras").write_text("half-written")
        raise KeyboardInterrupt

    monkeypatch.setattr(job_module, "_prune_and_report", fails)
    with pytest.raises(KeyboardInterrupt):
        prune_job(_model(tmp_path), 0.5, out_dir=out, overwrite=True, verbose=0)
    assert (out / "pruned.keras").read_text() == "earlier model"
    assert sorted(f.name for f in out.iterdir()) == ["pruned.keras", "report.json"]
    assert sorted(f.name for f in tmp_path.iterdir()) == ["out", "se_3x3.keras"]
    # A failed first job leaves no partial output that would block the next one.
    with pytest.raises(KeyboardInterrupt):
        prune_job(_model(tmp_path), 0.5, out_dir=tmp_path / "new", verbose=0)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["out", "se_3x3.keras"]


@pytest.mark.slow
def test_prune_job_writes_a_verified_report(tmp_path):
    path = _model(tmp_path, train=True)
    out = tmp_path / "out"
    report = prune_job(path, 0.5, fine_tune_epochs=1, out_dir=out, latency_runs=3, verbose=0)
    assert json.loads((out / "report.json").read_text()) == report
    assert (out / "pruned.keras").is_file() and (out / "report.md").is_file()
    assert report["pruned"]["params"] < report["unpruned"]["params"]
    assert report["pruned"]["flops"] < report["unpruned"]["flops"]
    assert report["pruned"]["int8_bytes"] < report["unpruned"]["int8_bytes"]
    assert report["unpruned"]["failures"] == report["pruned"]["failures"] == []
    assert 0.0 <= report["pruned"]["accuracy"] <= 1.0 and np.isfinite(report["latency_ratio"])
