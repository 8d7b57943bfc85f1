"""The command line's own behaviour: argument parsing and how a usage error ends a command.

Each command's work is tested beside its room (test_bench, test_export, test_params, ...).
"""

import numpy as np
import pytest

from keras_chanattn.cli import build_parser, main
from keras_chanattn.images import load_image_file


def test_usage_error_is_one_line_and_exit_status_2(capsys):
    assert main(["params", "resnet7"]) == 2
    err = capsys.readouterr().err
    assert "chanattn: error: unknown backbone 'resnet7'" in err and "resnet20" in err
    assert "Traceback" not in err
    assert main(["params", "resnet7", "--verbose"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_missing_file_is_a_usage_error(tmp_path, capsys):
    assert main(["int8-limits", str(tmp_path / "missing.tflite")]) == 2
    assert "missing.tflite" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing.keras"), "--out", str(tmp_path)]) == 2
    assert "chanattn: error:" in capsys.readouterr().err


def test_run_flags_left_out_keep_the_config_values():
    parser = build_parser()
    args = parser.parse_args(["run"])
    assert args.include_plain is None and args.overwrite is None and args.blocks is None
    args = parser.parse_args(["run", "--no-plain", "--overwrite", "--blocks", "se, sa"])
    assert args.include_plain is False and args.overwrite is True and args.blocks == ["se", "sa"]


def test_export_formats_and_batch_size():
    parser = build_parser()
    args = parser.parse_args(["export", "m.keras", "--out", "o"])
    assert args.formats is None and args.batch_size == 1
    argv = ["export", "m.keras", "--out", "o", "--format", "int8,float32", "--format", "savedmodel"]
    args = parser.parse_args([*argv, "--batch-size", "dynamic"])
    assert args.formats == [["int8", "float32"], ["savedmodel"]] and args.batch_size is None


def test_load_image_file(tmp_path):
    images = np.arange(24, dtype="float32").reshape(2, 2, 2, 3)
    np.save(tmp_path / "a.npy", images)
    np.savez(tmp_path / "b.npz", labels=np.arange(2), images=images)
    np.savez(tmp_path / "c.npz", anything=images)
    np.savez(tmp_path / "empty.npz")
    for name in ("a.npy", "b.npz", "c.npz"):
        np.testing.assert_array_equal(load_image_file(tmp_path / name), images)
    with pytest.raises(ValueError, match="holds no arrays"):
        load_image_file(tmp_path / "empty.npz")


def test_train_makes_the_strategy_before_the_data_loads(monkeypatch, capsys):
    # MultiWorkerMirroredStrategy refuses to start once TensorFlow has run anything.
    import keras_chanattn.data as data
    import keras_chanattn.train as train

    calls = []

    def strategy(name):
        calls.append(("strategy", name))
        return None

    def load_data(*args, **kwargs):
        calls.append(("data", args[0]))
        raise ValueError("stop here")

    monkeypatch.setattr(train, "distribution_strategy", strategy)
    monkeypatch.setattr(data, "load_data", load_data)
    argv = ["train", "--data", "digits", "--distribute", "multi-worker", "--out", "unused"]
    assert main(argv) == 2
    assert calls == [("strategy", "multi-worker"), ("data", "digits")]
    assert "stop here" in capsys.readouterr().err
