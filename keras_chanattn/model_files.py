"""Loading a saved model file (`.keras`) with errors that say what is wrong with the file.

`keras.saving.load_model` on a damaged file raises whatever the layer that tripped raises
(`BadZipFile`, `zlib.error`, `EOFError`, `KeyError`, `TypeError`, ...), often deep in a
chain. `load_model_file` checks the path first, reads every member of the archive back
against its CRC-32 (so damaged weights are refused whichever way Keras reads them), and
turns any failure to read the file into one `ValueError` line naming the file and the cause.
"""

import json
import os
import re
import zipfile
import zlib

ACCEPTED = ".keras"
# Other model files people pass by mistake, and what they are.
_OTHER_FORMATS = {
    ".h5": "a legacy HDF5 (Keras 2) model",
    ".hdf5": "a legacy HDF5 (Keras 2) model",
    ".tflite": "a TFLite flatbuffer",
    ".pb": "a TensorFlow graph",
    ".json": "a JSON file",
    ".npz": "a NumPy archive",
    ".weights.h5": "a weights-only file",
}
_ACCEPTED_TEXT = (
    "load_model_file reads Keras 3 `.keras` files (model.save('name.keras')); re-save the "
    "model in that format"
)


def _check_path(path):
    """The path as a string if it names an existing `.keras` file; raises otherwise."""
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"`path` must be a file path (str or os.PathLike), got {path!r}.")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"`{path}` does not exist: give the path of a .keras model file.")
    if os.path.isdir(path):
        what = (
            "a SavedModel directory"
            if os.path.isfile(os.path.join(path, "saved_model.pb"))
            else "a directory"
        )
        raise ValueError(f"`{path}` is {what}, not a model file: {_ACCEPTED_TEXT}.")
    name = os.path.basename(path).lower()
    if not name.endswith(ACCEPTED):
        suffix = next(
            (s for s in sorted(_OTHER_FORMATS, key=len, reverse=True) if name.endswith(s)), ""
        )
        what = _OTHER_FORMATS.get(suffix, f"a {os.path.splitext(name)[1] or 'extension-less'} file")
        raise ValueError(f"`{path}` is {what}, not a .keras model: {_ACCEPTED_TEXT}.")
    return path


def _cause(error):
    """A short account of why a `.keras` file could not be read."""
    text = " ".join(str(error).split())
    if isinstance(error, zipfile.BadZipFile):
        detail = "" if text == "File is not a zip file" else f": {text}"
        return f"not a zip archive, or a truncated or corrupted one{detail}"
    if isinstance(error, (zlib.error, EOFError)):
        return f"a member of the archive is cut short or corrupted: {text or type(error).__name__}"
    if isinstance(error, json.JSONDecodeError):
        return f"its config.json is not valid JSON: {error.msg} at character {error.pos}"
    if isinstance(error, KeyError) and "config.json" in text:
        return "the archive holds no config.json"
    unknown = re.search(r"Could not (?:locate class|deserialize) '([^']+)'", text)
    if unknown:
        return (
            f"it names a class Keras does not know, {unknown.group(1)!r}: import the module "
            "that registers it, or pass custom_objects"
        )
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _first_line(text, limit=300):
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_archive(path):
    """Raises `zipfile.BadZipFile` unless every member of the zip archive reads back
    with its recorded CRC-32."""
    with zipfile.ZipFile(path) as archive:
        bad = archive.testzip()
    if bad is not None:
        raise zipfile.BadZipFile(f"member {bad!r} fails its CRC-32 check")


def load_model_file(path, *, compile=False, custom_objects=None):
    """Loads a Keras model saved as a `.keras` file, with one clear error for a bad file.

    Before loading, the archive's members are read back against their CRC-32 checksums,
    so a damaged file is refused instead of loading with other weights.

    Args:
        path: the `.keras` file (`model.save("name.keras")`).
        compile: restore the training configuration too. Defaults to `False`: export and
            benchmarks only run the model.
        custom_objects: `{name: class}` for classes not registered with Keras. Defaults to
            `None`.

    Returns:
        The `keras.Model`.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: `path` is not a `.keras` file (an `.h5`, a `.tflite`, a directory...),
            or the file cannot be read as a Keras model (truncated, corrupted, a mangled
            config, an unknown layer class...); the message names the file and the cause.

    Example:

    >>> model = load_model_file("runs/se/model.keras")
    """
    import keras

    path = _check_path(path)
    try:
        _check_archive(path)
        return keras.saving.load_model(path, custom_objects=custom_objects, compile=compile)
    except Exception as error:  # a damaged file raises from any layer of the loader
        raise ValueError(
            f"`{path}` is not a readable .keras model ({_first_line(_cause(error))}): re-save "
            "it with model.save(...)."
        ) from error
