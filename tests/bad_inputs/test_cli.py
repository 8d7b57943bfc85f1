"""Bad command lines: each ends with one `chanattn: error:` line naming the argument, before
any work, and leaves the user's files as they were."""

import types

import numpy as np
import pytest

from keras_chanattn import cli, pipeline
from keras_chanattn.cli import main

# Rejected by the argument parser itself: (argv, what the message must name).
PARSE_ERRORS = [
    (["train", "--out", "o", "--batch-size", "abc"], "--batch-size: expected an integer"),
    (["train", "--out", "o", "--batch-size", "0"], "--batch-size: expected an integer >= 1"),
    (["train", "--out", "o", "--epochs", "0"], "--epochs: expected an integer >= 1"),
    (["train", "--out", "o", "--learning-rate", "nan"], "--learning-rate: expected a finite"),
    (["train", "--out", "o", "--learning-rate", "inf"], "--learning-rate: expected a finite"),
    (["train", "--out", "o", "--weight-decay", "x"], "--weight-decay: expected a number"),
    (["train", "--out", "o", "--image-size", "-3"], "--image-size: expected an integer >= 1"),
    (["train", "--out", "o", "--backbone-args", "[8]"], "--backbone-args: expected a JSON object"),
    (["train", "--out", "o", "--backbone-args", "{depth: 8}"], "--backbone-args: not valid JSON"),
    (["train"], "--out"),
    (["export", "m.keras", "--out", "o", "--threads", "0"], "--threads: expected an integer"),
    (["export", "m.keras", "--out", "o", "--batch-size", "abc"], "--batch-size"),
    (["export", "m.keras", "--out", "o", "--num-calibration", "0"], "--num-calibration"),
    (["export", "m.keras", "--out", "o", "--image-size", "32"], "--image-size"),
    (["run", "--blocks", ""], "--blocks: expected comma-separated names"),
    (["run", "--blocks", " , "], "--blocks: expected comma-separated names"),
    (["run", "--formats", ""], "--formats: expected comma-separated names"),
    (["run", "--epochs", "0"], "--epochs: expected an integer >= 1"),
    (["bench", "--out", "o", "--warmup", "-1"], "--warmup: expected an integer >= 0"),
    (["bench", "--out", "o", "--runs", "0"], "--runs: expected an integer >= 1"),
    (["bench", "--out", "o", "--attention-args", '"se"'], "--attention-args: expected a JSON"),
    (["params", "--input-size", "0"], "--input-size: expected an integer >= 1"),
    (["params", "--alpha", "nan"], "--alpha: expected a finite number"),
    (["prune", "m.keras", "--out", "o", "--ratio", "1"], "--ratio: must be in [0, 1)"),
    (["prune", "m.keras", "--out", "o", "--ratio", "x"], "--ratio: expected a number"),
    (["prune", "m.keras", "--out", "o"], "--ratio"),
    (["prune", "m.keras", "--ratio", "0.5", "--criterion", "taylor", "--out", "o"], "taylor"),
    (["frobnicate"], "invalid choice"),
]


@pytest.mark.parametrize("argv, message", PARSE_ERRORS, ids=[" ".join(a) for a, _ in PARSE_ERRORS])
def test_bad_argument_is_refused_by_the_parser(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


# Rejected by the room before any work: (argv, what the message must name).
ROOM_ERRORS = [
    (["run", "--formats", "int4"], "`formats` must be distinct TFLite formats"),
    (["run", "--formats", "int8,int8"], "`formats` must be distinct"),
    (["run", "--blocks", "nope"], "Unknown blocks ['nope']"),
    (["run", "--backbone", "vgg"], "Unknown backbone 'vgg'"),
    (["run", "--image-size", "4"], "`image_size` must be at least 8"),
    (["run", "--no-plain", "--blocks", "all", "--name", "a/b"], "`run_name` must be a plain"),
    (["train", "--attention", "nope", "--out", "{tmp}/t"], "Unknown attention 'nope'"),
    (["train", "--backbone", "vgg", "--out", "{tmp}/t"], "Unknown backbone 'vgg'"),
    (["export", "{tmp}/missing.keras", "--out", "{tmp}/e"], "missing.keras"),
    (["export", "{tmp}/m.keras", "--out", "{tmp}/e", "--format", "int4"], "Unknown export format"),
    (["export", "{tmp}/m.keras", "--out", "{tmp}/e"], "m.keras"),  # not a zip: named
    (["export", "{tmp}/m.keras", "--out", "{tmp}/e", "--calibration", "{tmp}/c.npy"], "m.keras"),
    (["params", "resnet7"], "unknown backbone 'resnet7'"),
    (["params", "resnet20", "--blocks", "nope"], "nope"),
    (["bench", "vgg", "--out", "{tmp}/b", "--data", "none"], "vgg"),
    (["prune", "{tmp}/missing.keras", "--ratio", "0.5", "--out", "{tmp}/p"], "missing.keras"),
]


@pytest.mark.parametrize("argv, message", ROOM_ERRORS, ids=[" ".join(a) for a, _ in ROOM_ERRORS])
def test_bad_value_is_one_line_before_any_work(argv, message, tmp_path, capsys, unchanged):
    (tmp_path / "m.keras").write_bytes(b"not looked at: the format is checked first")
    argv = [a.format(tmp=tmp_path) for a in argv]
    if argv[0] == "run":
        argv += ["--out", str(tmp_path / "runs")]
    with unchanged(tmp_path):
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("chanattn: error: ") and message in err
    assert err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()  # nothing written, not even the run folder


def test_failed_work_is_exit_status_1_and_one_line(monkeypatch, capsys):
    def fails(args):
        raise RuntimeError("the converter crashed\nwith a second line")

    monkeypatch.setitem(cli.COMMANDS, "list", (fails, "", ()))
    assert main(["list"]) == 1
    err = capsys.readouterr().err
    assert err == (
        "chanattn: error: RuntimeError: the converter crashed with a second line "
        "(--verbose shows the traceback)\n"
    )
    assert main(["list", "--verbose"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_interrupt_is_exit_status_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "list", (interrupted, "", ()))
    assert main(["list"]) == 130
    assert capsys.readouterr().err.startswith("chanattn: interrupted")


def test_unwritable_output_is_a_usage_error(monkeypatch, capsys, tmp_path):
    def unwritable(args):
        raise PermissionError(13, "Permission denied", str(tmp_path / "ro"))

    monkeypatch.setitem(cli.COMMANDS, "list", (unwritable, "", ()))
    assert main(["list"]) == 2
    err = capsys.readouterr().err
    assert "Permission denied" in err and str(tmp_path / "ro") in err and err.count("\n") == 1


def _finished_run(root, name="r"):
    run = root / name
    (run / "plain").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "plain" / "model.keras").write_bytes(b"weights")
    (run / pipeline.REPORT).write_text("# the user's finished run\n")
    return run


def _one_image_data(*args, **kwargs):
    import tensorflow as tf

    return types.SimpleNamespace(validation=tf.data.Dataset.range(1))


def _config(root, **kwargs):
    return pipeline.PipelineConfig(out_dir=str(root), run_name="r", blocks=[], formats=[], **kwargs)


def test_run_refuses_a_finished_run_without_overwrite(tmp_path, unchanged):
    _finished_run(tmp_path)
    with unchanged(tmp_path), pytest.raises(FileExistsError, match="finished run.*--overwrite"):
        pipeline.run_pipeline(_config(tmp_path))


@pytest.mark.parametrize("fault", [RuntimeError("training diverged"), KeyboardInterrupt()])
def test_a_failed_replace_puts_the_finished_run_back(tmp_path, monkeypatch, unchanged, fault):
    _finished_run(tmp_path)

    def phases(config, data, run_dir, *args):
        (run_dir / "config.json").write_text('{"new": true}')
        assert not (run_dir / pipeline.REPORT).exists()  # the new run starts empty
        raise fault

    monkeypatch.setattr(pipeline, "_run_phases", phases)
    monkeypatch.setattr("keras_chanattn.data.load_data", _one_image_data)
    with unchanged(tmp_path), pytest.raises(type(fault)):
        pipeline.run_pipeline(_config(tmp_path, overwrite=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]  # nothing left aside


def test_a_successful_replace_drops_the_old_run(tmp_path, monkeypatch):
    _finished_run(tmp_path)

    def phases(config, data, run_dir, *args):
        (run_dir / pipeline.REPORT).write_text("new")
        return []

    monkeypatch.setattr(pipeline, "_run_phases", phases)
    monkeypatch.setattr("keras_chanattn.data.load_data", _one_image_data)
    pipeline.run_pipeline(_config(tmp_path, overwrite=True))
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["r", pipeline.REPORT]


def test_an_unfinished_run_is_rerun_without_overwrite(tmp_path, monkeypatch):
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.json").write_text("{}")  # a run that failed before its report
    monkeypatch.setattr(pipeline, "_run_phases", lambda config, data, run_dir, *a: [])
    monkeypatch.setattr("keras_chanattn.data.load_data", _one_image_data)
    pipeline.run_pipeline(_config(tmp_path))
    assert list(run.iterdir()) == []


def test_a_folder_that_is_not_a_run_is_refused(tmp_path, unchanged):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "notes.txt").write_text("mine")
    with unchanged(tmp_path), pytest.raises(FileExistsError, match="not a run"):
        pipeline.run_pipeline(_config(tmp_path))


def test_train_refuses_a_finished_run_without_overwrite(tmp_path, capsys, unchanged):
    out = tmp_path / "srm"
    out.mkdir()
    (out / "last.keras").write_bytes(b"the user's trained model")
    (out / "summary.json").write_text('{"epochs": 3, "val_accuracy": 0.9}')
    argv = ["train", "--attention", "srm", "--image-size", "8", "--out", str(out)]
    with unchanged(tmp_path):
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert "finished run" in err and "--overwrite" in err and err.count("\n") == 1


def test_run_without_validation_images_is_refused_before_any_work(tmp_path, unchanged):
    import keras

    for label in ("a", "b"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(2):
            image = np.full((8, 8, 3), 60 * i + (label == "b") * 100, "uint8")
            keras.utils.save_img(tmp_path / "images" / label / f"{i}.png", image)
    config = pipeline.PipelineConfig(
        data=str(tmp_path / "images"),
        data_kwargs={"validation_fraction": 0.0},
        out_dir=str(tmp_path / "runs"),
        image_size=8,
    )
    with unchanged(tmp_path), pytest.raises(ValueError, match="no validation images"):
        pipeline.run_pipeline(config)
    assert not (tmp_path / "runs").exists()
