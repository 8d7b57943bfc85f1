"""Bad inputs to the data sources and image readers: each is refused up front, with a message
naming the input, the problem and the fix, and leaves the user's files as they were."""

import io
import re

import numpy as np
import pytest

from keras_chanattn.data import folder_data, load_data
from keras_chanattn.images import ImageSpec, as_images, load_image_file

SIZE = 6  # the tiny images' height and width


def _png(seed=0, size=(SIZE, SIZE)):
    import tensorflow as tf

    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    return tf.io.encode_png(pixels).numpy()


def _jpeg(seed=0, size=(SIZE, SIZE)):
    import tensorflow as tf

    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    return tf.io.encode_jpeg(pixels).numpy()


def _folder(root, counts, odd=None):
    """`root/<class>/<i>.png` for `{class: count}`; `odd` is `{relative path: bytes}` added."""
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            (root / name / f"{i}.png").write_bytes(_png(i))
    for relative, data in (odd or {}).items():
        (root / relative).write_bytes(data)
    return root


# --- image folders ---------------------------------------------------------------------------

FOLDER_CASES = {
    "truncated_png": ({"a": 2, "b": 2}, {"a/bad.png": _png()[:40]}, r"1 of 5 .*a/bad\.png"),
    "empty_png": ({"a": 2, "b": 2}, {"b/zero.png": b""}, r"b/zero\.png' \(empty file\)"),
    "text_as_jpeg": ({"a": 2, "b": 2}, {"a/t.jpg": b"hello"}, r"t\.jpg' \(not a PNG, JPEG"),
    "truncated_jpeg": ({"a": 2, "b": 2}, {"a/c.jpeg": _jpeg()[:100]}, r"corrupt JPEG data"),
    "flipped_png_header": (
        {"a": 2, "b": 2},
        {"a/f.png": b"\x89PNX" + _png()[4:]},
        r"f\.png' \(not a PNG",
    ),
    "many_bad_listed_first_five": (
        {"a": 2, "b": 2},
        {f"a/z{i}.png": b"" for i in range(7)},
        r"7 of 11 .*and 2 more\. Remove or replace",
    ),
    "single_image_classes": ({"a": 1, "b": 1}, {}, r"validation split empty.*'a', 'b'"),
    "one_class": ({"a": 3}, {}, r"one sub-folder per class.*at least two"),
    "class_without_images": ({"a": 2, "b": 0}, {"b/notes.txt": b"x"}, r"b' holds no images"),
}


@pytest.mark.parametrize("counts, odd, message", FOLDER_CASES.values(), ids=FOLDER_CASES)
def test_bad_image_folders_are_refused_before_any_work(tmp_path, unchanged, counts, odd, message):
    _folder(tmp_path, counts, odd)
    with unchanged(tmp_path), pytest.raises(ValueError, match=message):
        folder_data(tmp_path, image_size=SIZE)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"validation_fraction": 1.0}, ValueError, r"`validation_fraction` must be .* \[0, 1\)"),
        ({"validation_fraction": float("nan")}, ValueError, "`validation_fraction`"),
        ({"validation_fraction": "0.2"}, ValueError, "`validation_fraction`"),
        ({"channels": 4}, ValueError, "`channels` must be 1 or 3"),
        ({"image_size": (0, 4)}, ValueError, "`image_size`"),
    ],
)
def test_bad_folder_arguments(tmp_path, unchanged, kwargs, error, message):
    _folder(tmp_path, {"a": 2, "b": 2})
    with unchanged(tmp_path), pytest.raises(error, match=message):
        folder_data(tmp_path, **{"image_size": SIZE, **kwargs})


def test_missing_folder_and_a_file_as_folder(tmp_path, unchanged):
    (tmp_path / "file.png").write_bytes(_png())
    with unchanged(tmp_path):
        with pytest.raises(FileNotFoundError, match="missing' does not exist"):
            folder_data(tmp_path / "missing")
        with pytest.raises(ValueError, match=r"file\.png' is a file"):
            folder_data(tmp_path / "file.png")


def test_single_image_class_beside_larger_ones_trains_only(tmp_path):
    """Not an error: the lone image trains, the other classes fill the validation split;
    every class keeps a training image even at a high fraction."""
    _folder(tmp_path, {"a": 1, "b": 2, "c": 3})
    data = folder_data(tmp_path, image_size=SIZE, validation_fraction=0.9)
    train = [int(y) for _, y in data.train.as_numpy_iterator()]
    val = [int(y) for _, y in data.validation.as_numpy_iterator()]
    assert sorted(set(train)) == [0, 1, 2] and sorted(val) == [1, 2, 2]


def test_zero_validation_fraction_gives_an_empty_typed_validation_split(tmp_path):
    _folder(tmp_path, {"a": 1, "b": 1})
    data = folder_data(tmp_path, image_size=SIZE, validation_fraction=0)
    assert list(data.validation.as_numpy_iterator()) == []
    assert len(list(data.train.as_numpy_iterator())) == 2


def test_hidden_files_are_skipped_and_grey_gif_bmp_load(tmp_path):
    """macOS `._x.png` companions are not images; GIF and BMP load with one channel."""
    from PIL import Image

    _folder(tmp_path, {"a": 1, "b": 1}, {"a/._0.png": b"\x00\x05\x16\x07junk"})
    pixels = np.random.default_rng(1).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    for fmt, name in (("GIF", "a/g.gif"), ("BMP", "b/m.bmp")):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, fmt)
        (tmp_path / name).write_bytes(buffer.getvalue())
    data = folder_data(tmp_path, image_size=SIZE, channels=1, validation_fraction=0.5)
    images = [x for x, _ in [*data.train.as_numpy_iterator(), *data.validation]]
    assert len(images) == 4 and all(np.asarray(x).shape == (SIZE, SIZE, 1) for x in images)


# --- fuzzed image files ----------------------------------------------------------------------


def _variants(count, seed=0):
    """`count` damaged copies of small PNG and JPEG files: truncated at a random offset,
    random bytes flipped, or emptied."""
    rng = np.random.default_rng(seed)
    sources = {
        "png": [_png(i, (5, 7)) for i in range(3)],
        "jpg": [_jpeg(i, (7, 5)) for i in range(3)],
    }
    for i in range(count):
        ext = "png" if i % 2 else "jpg"
        data = bytearray(sources[ext][rng.integers(3)])
        kind = ("truncate", "flip", "flip", "empty")[i % 4] if i % 16 else "intact"
        if kind == "truncate":
            data = data[: rng.integers(1, len(data))]
        elif kind == "flip":
            for at in rng.integers(0, len(data), rng.integers(1, 4)):
                data[at] ^= int(rng.integers(1, 256))
        elif kind == "empty":
            data = bytearray()
        yield i, ext, bytes(data)


@pytest.mark.parametrize(
    "count", [pytest.param(32, id="fast"), pytest.param(240, id="full", marks=pytest.mark.slow)]
)
def test_fuzzed_image_files_load_cleanly_or_are_named(tmp_path, count):
    """Each damaged file either decodes to finite images of the right shape through the
    whole pipeline, or is refused up front by name; never a TensorFlow error mid-iteration."""
    root = _folder(tmp_path, {"a": 2, "b": 1})
    refused = loaded = 0
    for i, ext, data in _variants(count):
        target = root / "b" / f"v{i}.{ext}"
        target.write_bytes(data)
        try:
            data_ = folder_data(root, image_size=4, validation_fraction=0.5)
        except ValueError as err:
            assert re.search(rf"1 of 4 .*'{re.escape(str(target))}' \(", str(err)), str(err)
            refused += 1
        else:
            items = [*data_.train.as_numpy_iterator(), *data_.validation.as_numpy_iterator()]
            assert len(items) == 4
            for x, _ in items:
                assert x.shape == (4, 4, 3) and np.all(np.isfinite(x))
            loaded += 1
        target.unlink()
    assert refused > count // 4 and loaded >= count // 16  # both outcomes exercised


# --- tfds ------------------------------------------------------------------------------------


def test_unknown_tfds_name_is_one_short_error(tmp_path, unchanged):
    with unchanged(tmp_path), pytest.raises(ValueError) as info:
        load_data("tfds:made_up_name", data_dir=str(tmp_path))
    message = str(info.value)
    assert "'made_up_name'" in message and "data_dir" in message and "\n" not in message
    assert len(message) < 500 and info.value.__cause__ is None


@pytest.mark.parametrize(
    "source, message",
    [
        ("tfds:cifar1O", r"no data set 'cifar1O'.*Close matches: cifar10"),
        ("tfds:cifar10:99.0.0", r"cannot load 'cifar10:99\.0\.0'.*version 99\.0\.0"),
        ("tfds:", r"name must be a non-empty string"),
    ],
)
def test_bad_tfds_names(tmp_path, unchanged, source, message):
    with unchanged(tmp_path), pytest.raises(ValueError, match=message):
        load_data(source, data_dir=str(tmp_path))


# --- images from arrays and files ------------------------------------------------------------

SPEC = ImageSpec(4, 4, 3, "float32")


def _with_nan(indices, count=8):
    images = np.zeros((count, 4, 4, 3), "float32")
    for i in indices:
        images[i, 1, 2, 0] = np.nan if i % 2 else np.inf
    return images


@pytest.mark.parametrize(
    "data, message",
    [
        (
            np.zeros((4, 4, 3), "float32"),
            r"calibration is one array of shape \(4, 4, 3\).*image\[None\]",
        ),
        (lambda: np.zeros((4, 4, 3)), r"ambiguous.*images\[\.\.\., None\]"),
        (_with_nan([2, 5]), r"NaN or infinite values in 2 of 8 images \(indices 2, 5\)"),
        (_with_nan(range(1, 8)), r"in 7 of 8 images \(indices 1, 2, 3, 4, 5, \.\.\.\)"),
        (np.zeros((2, 4, 4, 3), "complex64"), "real numbers"),
    ],
)
def test_bad_image_arrays(data, message):
    with pytest.raises(ValueError, match=message):
        as_images(data, SPEC, "calibration")


def test_unbatched_images_from_iterables_stay_accepted():
    """Only a bare top-level 3-D array is ambiguous: datasets and lists of single images,
    and a batch of one, are read as before."""
    import tensorflow as tf

    x = np.random.default_rng(0).uniform(size=(3, 4, 4, 3)).astype("float32")
    for source in (list(x), tf.data.Dataset.from_tensor_slices(x), x[:1], tf.constant(x)):
        expected = x[:1] if len(source) == 1 else x
        np.testing.assert_array_equal(as_images(source, SPEC, "data"), expected)


def _npy_bytes(array):
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def _npz_bytes(**arrays):
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


IMAGES = np.zeros((2, 4, 4, 3), "float32")
EXPECTED = r"expected a \.npy array or a \.npz file with an `images` or `x` array"
FILE_CASES = {
    "csv_extension": ("x.csv", b"1,2,3\n", r"x\.csv' is not a \.npy or \.npz file"),
    "text_as_npy": ("x.npy", b"hello\n", r"x\.npy' is not a NumPy file"),
    "empty_npy": ("x.npy", b"", r"x\.npy' is empty, truncated or corrupt"),
    "truncated_npy": (
        "x.npy",
        _npy_bytes(IMAGES)[:150],
        r"x\.npy' is not a NumPy file or is truncated",
    ),
    "truncated_npz": (
        "x.npz",
        _npz_bytes(images=IMAGES)[:200],
        r"x\.npz' is empty, truncated or corrupt",
    ),
    "object_npy": ("x.npy", _npy_bytes(np.array([1, "a"], object)), r"object array"),
    "object_npz": ("x.npz", _npz_bytes(images=np.array([1, "a"], object)), r"object array"),
    "empty_npz": ("x.npz", _npz_bytes(), r"x\.npz' holds no arrays"),
    "one_image": ("x.npy", _npy_bytes(IMAGES[0]), r"shape \(4, 4, 3\).*image\[None\]"),
    "strings": ("x.npy", _npy_bytes(np.full((1, 1, 1, 1), "a")), r"dtype <U1"),
}


@pytest.mark.parametrize("name, content, message", FILE_CASES.values(), ids=FILE_CASES)
def test_bad_image_files(tmp_path, unchanged, name, content, message):
    (tmp_path / name).write_bytes(content)
    with unchanged(tmp_path), pytest.raises(ValueError, match=message) as info:
        load_image_file(tmp_path / name)
    assert re.search(EXPECTED, str(info.value)) and info.value.__cause__ is None


def test_corrupted_npz_member_and_missing_file(tmp_path, unchanged):
    data = bytearray(_npz_bytes(images=IMAGES))
    data[len(data) // 3] ^= 0xFF  # inside the array's bytes: the zip CRC check fails
    (tmp_path / "c.npz").write_bytes(bytes(data))
    with unchanged(tmp_path):
        with pytest.raises(ValueError, match=r"c\.npz' is empty, truncated or corrupt"):
            load_image_file(tmp_path / "c.npz")
        with pytest.raises(FileNotFoundError, match=r"nope\.npy' does not exist"):
            load_image_file(tmp_path / "nope.npy")
