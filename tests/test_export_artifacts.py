"""`export_artifacts`' reports always describe the artefact beside them: a format that fails
where an earlier artefact exists keeps it and its report, and writes `<name>.failed.json`."""

import json

import numpy as np

from keras_chanattn.export import checks
from keras_chanattn.export import saved_model as saved_model_module
from keras_chanattn.export.artifacts import export_artifacts, failed_report_path
from tests.bad_inputs.conftest import snapshot
from tests.bad_inputs.test_export import SIZE, tiny_model

FORMATS = ["savedmodel", "float32"]


def _images():
    return np.random.default_rng(0).uniform(size=(8, SIZE, SIZE, 3)).astype("float32")


def _fail_every_check(monkeypatch):
    """float32 needs a top-1 agreement above 1, and the SavedModel reload check fails."""
    monkeypatch.setitem(
        checks.DEFAULT_THRESHOLDS,
        "float32",
        checks.default_thresholds("float32", min_top1_agreement=1.01),
    )
    original = saved_model_module.check_saved_model

    def failing(*args, **kwargs):
        samples, max_abs, relative, failures = original(*args, **kwargs)
        return samples, max_abs, relative, [*failures, "made to fail"]

    monkeypatch.setattr(saved_model_module, "check_saved_model", failing)


def _export(out, logs, **kwargs):
    return export_artifacts(
        tiny_model(), out, FORMATS, validation_data=_images(), log=logs.append, **kwargs
    )


def _report(path):
    with open(path) as f:
        return json.load(f)


def test_a_failure_keeps_the_earlier_artefact_and_its_report(tmp_path, monkeypatch):
    logs = []
    _export(tmp_path, logs)
    before = snapshot(tmp_path)
    names = ["tiny_saved_model", "tiny_float32.tflite"]
    reports = [tmp_path / "tiny_saved_model.json", tmp_path / "tiny_float32.json"]
    assert all(_report(r)["passed"] for r in reports)

    with monkeypatch.context() as patch:
        _fail_every_check(patch)
        logs.clear()
        failed = _export(tmp_path, logs, overwrite=True)
    assert not any(r.passed for r in failed.values())
    # The earlier artefacts and their reports, byte for byte; the failures beside them.
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if ".failed." not in k} == before
    for name, report in zip(names, reports, strict=True):
        failed_path = failed_report_path(str(report))
        assert not _report(failed_path)["passed"]
        assert any(
            f"kept the earlier {name} and its report; this failed report -> {failed_path}" in line
            for line in logs
        )
    assert "made to fail" in _report(tmp_path / "tiny_saved_model.failed.json")["failures"]

    # A later export that writes its artefact replaces it and drops the failed report.
    logs.clear()
    assert all(r.passed for r in _export(tmp_path, logs, overwrite=True).values())
    assert not list(tmp_path.glob("*.failed.json"))
    assert all(_report(r)["passed"] for r in reports)
    assert sum("removed the earlier failed report" in line for line in logs) == 2


def test_a_failure_with_no_earlier_artefact_leaves_its_report_alone(tmp_path, monkeypatch):
    _fail_every_check(monkeypatch)
    logs = []
    _export(tmp_path, logs)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "tiny_float32.json",
        "tiny_saved_model.json",
    ]
    assert not _report(tmp_path / "tiny_float32.json")["passed"]
    assert all("nothing written" in line and "kept the earlier" not in line for line in logs)


def test_a_failed_artefact_written_anyway_has_its_report_beside_it(tmp_path, monkeypatch):
    logs = []
    export_artifacts(
        tiny_model(), tmp_path, ["float32"], validation_data=_images(), log=logs.append
    )
    _fail_every_check(monkeypatch)
    reports = export_artifacts(
        tiny_model(), tmp_path, ["float32"], validation_data=_images(), overwrite=True,
        enforce=False, log=logs.append,
    )  # fmt: skip
    assert not reports["float32"].passed
    assert reports["float32"].path == str(tmp_path / "tiny_float32.tflite")
    assert not _report(tmp_path / "tiny_float32.json")[
        "passed"
    ]  # the file written is the failed one
    assert not (tmp_path / "tiny_float32.failed.json").exists()
