"""Bad inputs to export and to the model-file loader: each is refused up front with a message
naming the input, the problem and the fix, and leaves the user's files as they were; and a
fuzz of damaged `.keras` files, which load as the model they were or raise ValueError."""

import functools
import io
import json
import os
import zipfile

import keras
import numpy as np
import pytest

from keras_chanattn.export import PreparedModel, export_saved_model, export_tflite
from keras_chanattn.export.artifacts import export_artifacts
from keras_chanattn.export.tflite import convert_tflite
from keras_chanattn.model_files import load_model_file

SIZE = 16


@functools.cache
def tiny_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3)(x), name="tiny")


@functools.cache
def saved_bytes():
    """The bytes of `tiny_model()` saved as a `.keras` file."""
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "tiny.keras")
        tiny_model().save(path)
        with open(path, "rb") as f:
            return f.read()


def _members(data):
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _zipped(members):
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, value in members.items():
            archive.writestr(name, value)
    return out.getvalue()


def _with_config(edit):
    """The saved tiny model with its config.json text replaced by `edit(text)`."""
    members = _members(saved_bytes())
    members["config.json"] = edit(members["config.json"].decode()).encode()
    return _zipped(members)


def _flip_in_weights(data):
    """`data` with one bit flipped inside the weights member's stored bytes."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = archive.getinfo("model.weights.h5")
    # The member's data follow its 30-byte local header, name and extra field.
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    flipped = bytearray(data)
    flipped[start + info.compress_size // 2] ^= 0x10
    return bytes(flipped)


def _saved_model_dir(root):
    root.mkdir()
    (root / "saved_model.pb").write_bytes(b"not really")
    return root


# --- the model-file loader -------------------------------------------------------------------

# name -> (what to put at tmp_path/<file> (bytes, a callable of the folder, or None),
#          the file name, the error, the message)
LOAD_CASES = {
    "missing": (None, "gone.keras", FileNotFoundError, r"gone\.keras` does not exist"),
    "legacy_h5": (b"\x89HDF\r\n", "model.h5", ValueError, r"legacy HDF5 .*reads Keras 3 `\.keras`"),
    "weights_only": (b"x", "m.weights.h5", ValueError, r"weights-only file.*\.keras"),
    "tflite": (b"xxxxTFL3", "model.tflite", ValueError, r"TFLite flatbuffer.*\.keras"),
    "no_extension": (b"x", "model", ValueError, r"extension-less file.*\.keras"),
    "saved_model_dir": (_saved_model_dir, "sm", ValueError, r"SavedModel directory.*\.keras"),
    "dir_named_keras": (lambda p: p.mkdir(), "d.keras", ValueError, r"is a directory"),
    "text_file": (b"hello", "m.keras", ValueError, r"readable \.keras model \(not a zip archive"),
    "empty_file": (b"", "m.keras", ValueError, r"readable \.keras model \(not a zip archive"),
    "truncated": (
        lambda p: p.write_bytes(saved_bytes()[: len(saved_bytes()) * 2 // 3]),
        "m.keras",
        ValueError,
        r"m\.keras` is not a readable \.keras model \(.*\): re-save it with model\.save",
    ),
    "bit_flip_in_weights": (
        lambda p: p.write_bytes(_flip_in_weights(saved_bytes())),
        "m.keras",
        ValueError,
        r"'model\.weights\.h5' fails its CRC-32 check",
    ),
    "config_not_json": (
        lambda p: p.write_bytes(_with_config(lambda t: t[: len(t) // 2])),
        "m.keras",
        ValueError,
        r"config\.json is not valid JSON",
    ),
    "unknown_layer_class": (
        lambda p: p.write_bytes(_with_config(lambda t: t.replace('"Conv2D"', '"NoSuchLayer"'))),
        "m.keras",
        ValueError,
        r"names a class Keras does not know, .*NoSuchLayer.*custom_objects",
    ),
    "no_config": (
        lambda p: p.write_bytes(
            _zipped({k: v for k, v in _members(saved_bytes()).items() if k != "config.json"})
        ),
        "m.keras",
        ValueError,
        r"holds no config\.json",
    ),
}


@pytest.mark.parametrize("name", sorted(LOAD_CASES))
def test_a_bad_model_file_is_refused(name, tmp_path, unchanged):
    content, file_name, error, message = LOAD_CASES[name]
    path = tmp_path / file_name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        content(path)
    with unchanged(tmp_path), pytest.raises(error, match=message) as info:
        load_model_file(path)
    assert "\n" not in str(info.value)  # one line


@pytest.mark.parametrize("path", [None, 3, b"m.keras"])
def test_a_path_that_is_no_path_is_refused(path):
    with pytest.raises(ValueError, match="`path` must be a file path"):
        load_model_file(path)


def test_a_sound_file_loads_the_same_model(tmp_path):
    path = tmp_path / "tiny.keras"
    path.write_bytes(saved_bytes())
    images = np.random.default_rng(0).uniform(size=(2, SIZE, SIZE, 3)).astype("float32")
    loaded = load_model_file(path)
    np.testing.assert_array_equal(loaded.predict(images, verbose=0), tiny_model()(images))


def _variant(rng, data, kind):
    """One damaged copy of `data`: truncated, bit-flipped, or with its config.json mangled."""
    if kind == "truncate":
        return data[: int(rng.integers(0, len(data)))]
    if kind == "flip":
        flipped = bytearray(data)
        for _ in range(int(rng.integers(1, 4))):
            flipped[int(rng.integers(0, len(data)))] ^= 1 << int(rng.integers(0, 8))
        return bytes(flipped)

    def mangle(text):
        at = int(rng.integers(0, len(text)))
        how = int(rng.integers(0, 4))
        if how == 0:
            return text[:at]
        if how == 1:
            return text[:at] + chr(int(rng.integers(32, 127))) + text[at + 1 :]
        if how == 2:
            return text[:at] + text[at + int(rng.integers(1, 40)) :]
        config = json.loads(text)
        layer = config["config"]["layers"][int(rng.integers(1, 4))]
        layer["config"].pop(sorted(layer["config"])[int(rng.integers(0, len(layer["config"])))])
        return json.dumps(config)

    return _with_config(mangle)


@pytest.mark.parametrize("kind", ["truncate", "flip", "config"])
def test_fuzzed_model_files_load_as_they_were_or_raise_value_error(kind, tmp_path):
    """Truncated and bit-flipped files either load the very same model (a flip in a field
    nothing reads) or raise ValueError; a mangled config (a valid archive) either loads some
    model or raises ValueError. Never another exception type."""
    rng = np.random.default_rng({"truncate": 1, "flip": 2, "config": 3}[kind])
    images = np.random.default_rng(0).uniform(size=(2, SIZE, SIZE, 3)).astype("float32")
    want = keras.ops.convert_to_numpy(tiny_model()(images))
    path = tmp_path / "fuzzed.keras"
    refused = 0
    for _ in range(100):
        path.write_bytes(_variant(rng, saved_bytes(), kind))
        try:
            model = load_model_file(path)
        except ValueError as error:
            assert str(error).startswith(f"`{path}` is not a readable .keras model (")
            refused += 1
            continue
        if kind != "config":
            np.testing.assert_array_equal(model.predict(images, verbose=0), want)
    assert refused >= 50  # most variants are damaged beyond loading


# --- export's arguments and outputs ----------------------------------------------------------


def _images(count=4):
    return np.random.default_rng(0).uniform(size=(count, SIZE, SIZE, 3)).astype("float32")


def _existing_artefact(tmp_path):
    (tmp_path / "tiny_float32.tflite").write_bytes(b"the user's model")


def _failed_report_is_a_folder(tmp_path):
    (tmp_path / "tiny_float32.failed.json").mkdir()
    (tmp_path / "tiny_float32.failed.json" / "keep.txt").write_bytes(b"mine")


def _mixed_subclassed_model():
    class Tiny(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.conv = keras.layers.Conv2D(2, 3)

        def call(self, x):
            return self.conv(x)

    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = Tiny(name="tiny_subclassed")
        model(_images(1))
    finally:
        keras.config.set_dtype_policy("float32")
    return model


# name -> (setup of tmp_path or None, call(tmp_path), error, message)
EXPORT_CASES = {
    "unknown_format": (
        None,
        lambda p: export_artifacts(tiny_model(), p, ["float32", "int4"]),
        ValueError,
        r"Unknown export format\(s\) \['int4'\]; valid formats are",
    ),
    "existing_artefact": (
        _existing_artefact,
        lambda p: export_artifacts(tiny_model(), p, ["float32"]),
        FileExistsError,
        r"tiny_float32\.tflite already exists\. Pass overwrite=True",
    ),
    "failed_report_path_is_a_folder": (
        _failed_report_is_a_folder,
        lambda p: export_artifacts(tiny_model(), p, ["float32"], overwrite=True),
        IsADirectoryError,
        r"tiny_float32\.failed\.json is a directory",
    ),
    "negative_output_margin": (
        None,
        lambda p: export_tflite(
            tiny_model(), p / "m.tflite", "int8", _images(), output_margin=-0.1
        ),
        ValueError,
        r"`output_margin` must be a finite number >= 0 .*got -0\.1",
    ),
    "nan_output_margin": (
        None,
        lambda p: export_tflite(
            tiny_model(), p / "m.tflite", "int8", _images(), output_margin=float("nan")
        ),
        ValueError,
        r"`output_margin` must be a finite number >= 0 .*got nan",
    ),
    "text_output_margin": (
        None,
        lambda p: convert_tflite(tiny_model(), "int8", _images(), output_margin="0.2"),
        ValueError,
        r"`output_margin` must be a finite number >= 0 .*got '0\.2'",
    ),
    "int8_without_calibration": (
        None,
        lambda p: export_tflite(tiny_model(), p / "m.tflite", "int8"),
        ValueError,
        r"quantization='int8' needs representative_data",
    ),
    "unknown_threshold": (
        None,
        lambda p: export_tflite(tiny_model(), p / "m.tflite", thresholds={"max_error": 1}),
        ValueError,
        r"Unknown thresholds \['max_error'\]",
    ),
    "zero_batch_size": (
        None,
        lambda p: export_saved_model(tiny_model(), p / "sm", batch_size=0),
        ValueError,
        r"batch_size must be a positive integer",
    ),
    "mixed_precision_subclassed_model": (
        None,
        lambda p: PreparedModel(_mixed_subclassed_model()),
        ValueError,
        r"computes in mixed_float16 and is a subclassed model.*functional model",
    ),
}


@pytest.mark.parametrize("name", sorted(EXPORT_CASES))
def test_a_bad_export_argument_is_refused(name, tmp_path, unchanged):
    setup, call, error, message = EXPORT_CASES[name]
    if setup is not None:
        setup(tmp_path)
    with unchanged(tmp_path), pytest.raises(error, match=message):
        call(tmp_path)
    assert keras.config.dtype_policy().name == "float32"
