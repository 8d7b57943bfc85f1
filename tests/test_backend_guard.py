"""The TensorFlow-only entry points stop before any work on another Keras backend.

Here the backend's name is patched, so the checks run in the TensorFlow suite; the JAX
suite (tests/test_on_jax.py) calls the same entry points on a real JAX backend.
"""

import keras
import pytest

from keras_chanattn import cli, export
from keras_chanattn.analysis import grad_cam
from keras_chanattn.backend import BackendError, require_tensorflow
from keras_chanattn.export.artifacts import export_artifacts
from keras_chanattn.models.params import count_flops
from keras_chanattn.train import TrainConfig, fit_classifier

MESSAGE = r"needs KERAS_BACKEND=tensorflow, but Keras runs on 'jax'"


@pytest.fixture
def on_jax(monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")


def test_require_tensorflow_names_the_backend_and_the_fix(on_jax):
    with pytest.raises(BackendError, match=r"^TFLite export " + MESSAGE):
        require_tensorflow("TFLite export")


def test_require_tensorflow_is_silent_on_tensorflow():
    assert keras.backend.backend() == "tensorflow"
    require_tensorflow("anything")


@pytest.mark.parametrize(
    "call",
    [
        lambda out: export.export_saved_model(None, out / "sm"),
        lambda out: export.export_tflite(None, out / "m.tflite", "float32"),
        lambda out: export.convert_tflite(None, "float32"),
        lambda out: export.verify_tflite(b"", None, "float32"),
        lambda out: export_artifacts(None, out / "artifacts"),
        lambda out: export.PreparedModel(None),
        lambda out: count_flops(None),
        lambda out: grad_cam(None, None),
    ],
    ids=[
        "export_saved_model",
        "export_tflite",
        "convert_tflite",
        "verify_tflite",
        "export_artifacts",
        "PreparedModel",
        "count_flops",
        "grad_cam",
    ],
)
def test_tensorflow_only_entry_points_refuse_before_any_work(call, tmp_path, on_jax):
    # `None` for the model: any work before the check would fail differently.
    with pytest.raises(BackendError, match=MESSAGE):
        call(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_fit_classifier_refuses_a_strategy_or_sync_batch_norm(tmp_path, on_jax):
    def build():
        raise AssertionError("the model was built before the check")

    with pytest.raises(BackendError, match="tf.distribute strategy.*" + MESSAGE):
        fit_classifier(build, None, out_dir=tmp_path / "run", strategy=object())
    with pytest.raises(BackendError, match=MESSAGE):
        fit_classifier(build, None, TrainConfig(sync_batch_norm=True), tmp_path / "run")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", cli.TENSORFLOW_COMMANDS)
def test_cli_tensorflow_commands_stop_with_one_line(command, tmp_path, capsys, on_jax):
    out = ["--out", str(tmp_path / "out")]
    argv = {
        "run": [command],
        "params": [command],
        "export": [command, "m.keras", *out],
        "analyze": [command, "m.keras", *out],
        "prune": [command, "m.keras", "--ratio", "0.5", *out],
    }.get(command, [command, *out])
    cli.build_parser().parse_args(argv)  # the argv is complete: only the backend stops it
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"`chanattn {command}` " in err and "KERAS_BACKEND" in err
    assert list(tmp_path.iterdir()) == []
