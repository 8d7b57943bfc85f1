"""Bad `chanattn analyze` command lines: each ends with one `chanattn: error:` line naming
the problem, before any image is run, and writes nothing (an earlier output stays as it was)."""

import keras
import pytest

import keras_chanattn
from keras_chanattn.cli import main


def _save(path, attention=True, head=True):
    """A tiny model on 8x8 images: conv (-> SE) (-> pooling and a 10-class Dense)."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    if attention:
        x = keras_chanattn.create_attention("se", reduction=2, name="se")(x)
    if head:
        x = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(x))
    keras.Model(inputs, x).save(path)
    return str(path)


@pytest.fixture
def models(tmp_path):
    return {
        "se": _save(tmp_path / "se.keras"),
        "plain": _save(tmp_path / "plain.keras", attention=False),
        "features": _save(tmp_path / "features.keras", head=False),
    }


# (models, extra arguments, what the one error line must say)
CASES = [
    (["plain"], ["--gates"], "No model given holds an attention block"),
    (["plain"], ["--block", "se"], "No model given holds an attention block"),
    (["se"], ["--layer", "nope"], "has no layer named 'nope'"),
    (
        ["se", "plain"],
        ["--layer", "sconv"],
        "no layer named 'sconv' (nested models included). Close matches: ['conv']",
    ),
    (["se"], ["--block", "sse"], "no attention block 'sse'; close matches: ['se']"),
    (["se"], ["--block", "se", "--no-gates"], "asks for the gate analysis that gates=False skips"),
    (["features"], [], "is not a classifier"),
    (["{tmp}/missing.keras"], [], "missing.keras` does not exist"),
    (["se", "{tmp}/missing.keras"], [], "missing.keras` does not exist"),
    (["{tmp}/notes.txt"], [], "notes.txt` is a .txt file, not a .keras model"),
]


@pytest.mark.parametrize("names, extra, message", CASES, ids=[c[2][:40] for c in CASES])
def test_bad_input_is_one_line_before_any_work(
    names, extra, message, models, tmp_path, capsys, unchanged
):
    (tmp_path / "notes.txt").write_text("not a model")
    paths = [models.get(name, name.format(tmp=tmp_path)) for name in names]
    with unchanged(tmp_path):
        assert main(["analyze", *paths, "--out", str(tmp_path / "out"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("chanattn: error: ") and message in err, err
    assert err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["se.keras", "plain.keras", "features.keras", "notes.txt"]
    )  # no staging folder either


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_with_files_is_refused(overwrite, models, tmp_path, capsys, unchanged):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.md").write_text("the user's own file")
    argv = ["analyze", models["se"], "--out", str(out)] + ["--overwrite"] * overwrite
    with unchanged(tmp_path):
        assert main(argv) == 2
    err = capsys.readouterr().err
    expected = "did not write (no analysis.json)" if overwrite else "already exists. Pass overwrite"
    assert expected in err and err.count("\n") == 1, err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--samples", "1"], "--samples: expected an integer >= 2"),
        (["--top-k", "0"], "--top-k: expected an integer >= 1"),
        (["--grad-cam-images", "-1"], "--grad-cam-images: expected an integer >= 0"),
        (["--image-size", "8"], "--image-size"),
    ],
)
def test_bad_numbers_are_refused_by_the_parser(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["analyze", "m.keras", "--out", "o", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_an_output_path_that_is_a_file_is_refused(models, tmp_path, capsys, unchanged):
    (tmp_path / "out").write_text("the user's file")
    with unchanged(tmp_path):
        assert main(["analyze", models["se"], "--out", str(tmp_path / "out"), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and err.count("\n") == 1, err
