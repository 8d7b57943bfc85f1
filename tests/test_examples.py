"""The examples run as documented (with tiny settings): they must not rot."""

import importlib.util
import pathlib

import numpy as np
import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_finetune_tfds_example_on_mock_data(tmp_path, capsys):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
        load("finetune_tfds").main(
            ["--dataset", "cifar10", "--data-dir", str(tmp_path), "--download", "--epochs", "1",
             "--batch-size", "8", "--out", str(tmp_path / "run")]
        )  # fmt: skip
    assert "validation accuracy" in capsys.readouterr().out
    assert (tmp_path / "run" / "last.keras").exists()


@pytest.mark.slow
def test_finetune_folder_example(tmp_path, capsys):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(5):
            pixels = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
            (tmp_path / "images" / name / f"{i}.png").write_bytes(tf.io.encode_png(pixels).numpy())
    load("finetune_folder").main(
        [str(tmp_path / "images"), "--image-size", "32", "--epochs", "1", "--batch-size", "4",
         "--out", str(tmp_path / "run")]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "2 classes: a, b" in out and "validation accuracy" in out


@pytest.mark.slow
def test_distributed_example_on_one_device(tmp_path, capsys):
    load("distributed").main(["--epochs", "1", "--out", str(tmp_path / "run")])
    assert "validation accuracy" in capsys.readouterr().out


@pytest.mark.slow
def test_add_attention_example(tmp_path, capsys):
    load("add_attention_pretrained").main(
        ["--limit", "32", "--epochs", "1", "1", "--image-size", "32", "--out", str(tmp_path)]
    )
    out = capsys.readouterr().out
    assert "32 new layers" in out and "after fine-tuning everything" in out
