"""Image inputs: a model's image spec, and images from arrays or datasets (train, export, bench).

Export works on any Keras model with one NHWC image input. Images may come as a NumPy array
`(N, H, W, C)`, an `(images, labels)` tuple, a `tf.data.Dataset` of images or of
`(image, label, ...)` tuples (batched or not), or a callable returning an iterable of those
(TFLite's `representative_dataset` convention, where each item is `[batch]`, works too).
"""

import dataclasses
import pathlib

import keras
import numpy as np

# Channel counts an image input may have: grey, grey + alpha, RGB, RGBA. A larger last
# dimension means the input is a feature map or channels-first.
MAX_IMAGE_CHANNELS = 4


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    """The image input of a model: height, width, channels (NHWC) and dtype."""

    height: int | None
    width: int | None
    channels: int
    dtype: str

    @property
    def shape(self):
        """`(height, width, channels)`."""
        return (self.height, self.width, self.channels)

    @property
    def is_static(self):
        return self.height is not None and self.width is not None

    def batch_shape(self, batch_size):
        return (batch_size, self.height, self.width, self.channels)


def image_input_spec(model, image_size=None, require_static=True):
    """Checks that `model` takes one NHWC image and returns its `ImageSpec`.

    Args:
        model: a `keras.Model` (functional, sequential, or built subclassed).
        image_size: `(height, width)` to use where the model's input leaves them unknown
            (`keras.Input((None, None, 3))`); it must agree with the dimensions the model
            fixes. Defaults to `None`.
        require_static: raise unless height and width end up known (TFLite needs them).
            Defaults to `True`.

    Raises:
        TypeError: `model` is not a `keras.Model`.
        ValueError: the model has no input, several inputs, an input that is not
            `(batch, height, width, channels)` with 1 to 4 channels, a non-float input, or
            unknown height and width without `image_size`.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"Export expects a keras.Model, got {type(model).__name__}.")
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs:
        raise ValueError(
            f"Model {model.name!r} ({type(model).__name__}) has no defined input. Export needs "
            "a functional or sequential model built on keras.Input((height, width, channels))."
        )
    if len(inputs) != 1:
        raise ValueError(
            f"Export expects a model with one image input, but {model.name!r} has "
            f"{len(inputs)} inputs: {[tuple(t.shape) for t in inputs]}."
        )
    shape = tuple(inputs[0].shape)
    if len(shape) != 4:
        raise ValueError(
            f"Export expects an image input of shape (batch, height, width, channels), but "
            f"model {model.name!r} takes shape {shape} (rank {len(shape)}). Only image models "
            "can be exported for phones."
        )
    _, height, width, channels = shape
    if channels is None or not 1 <= channels <= MAX_IMAGE_CHANNELS:
        raise ValueError(
            f"Export expects a channels-last image input with 1 to {MAX_IMAGE_CHANNELS} "
            f"channels, but model {model.name!r} takes shape {shape}. A channels-first model "
            "(batch, channels, height, width) must be rebuilt channels-last (NHWC)."
        )
    dtype = keras.backend.standardize_dtype(inputs[0].dtype)
    if not dtype.startswith(("float", "bfloat")):
        raise ValueError(
            f"Export expects a floating-point image input, but model {model.name!r} takes "
            f"{dtype}. Take float32 images and cast inside the model if needed."
        )
    if image_size is not None:
        image_size = _check_image_size(image_size)
        for axis, known, given in (
            ("height", height, image_size[0]),
            ("width", width, image_size[1]),
        ):
            if known is not None and known != given:
                raise ValueError(
                    f"image_size gives {axis} {given}, but model {model.name!r} fixes it to "
                    f"{known} (input shape {shape})."
                )
        height, width = image_size
    if require_static and (height is None or width is None):
        raise ValueError(
            f"Model {model.name!r} takes images of unknown size {shape}; TFLite needs a fixed "
            "size. Pass image_size=(height, width) (--image-size H W on the command line)."
        )
    return ImageSpec(height, width, int(channels), "float32" if dtype == "bfloat16" else dtype)


def _check_image_size(image_size):
    try:
        height, width = image_size
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be (height, width), got {image_size!r}.") from None
    for value in (height, width):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"image_size must be two positive integers, got {image_size!r}.")
    return int(height), int(width)


def _first_component(item):
    """The image part of a dataset element: the item, or the first of a tuple/list."""
    if isinstance(item, dict):
        raise ValueError(
            "Dataset elements that are dicts are not supported; map the dataset to images or "
            "(image, label) tuples first."
        )
    if isinstance(item, (tuple, list)):
        if not item:
            raise ValueError("Got an empty element where an image or a batch was expected.")
        return item[0]
    return item


def iter_batches(data):
    """Yields NumPy arrays (one image or a batch each) from a dataset or iterable."""
    import tensorflow as tf

    if isinstance(data, tf.data.Dataset):
        data = data.as_numpy_iterator()
    for item in data:
        yield np.asarray(_first_component(item))


def as_images(data, spec, what, limit=None):
    """Reads images for `spec` from an array, a tuple, a dataset or a callable.

    Args:
        data: see the module docstring; `None` returns `None`.
        spec: the model's `ImageSpec` (static height and width).
        what: how the data is named in error messages, e.g. `"representative_data"`.
        limit: read at most this many images. Defaults to `None` (all).

    Returns:
        A float32 array `(N, H, W, C)` with `N >= 1`, or `None`.

    Raises:
        ValueError: images of another shape than `spec`'s, a bare 3-D array (one image or
            grey images without a channel axis: ambiguous), no images, or non-finite values
            (counted, with the first indices); the message names the expected shape.
    """
    if data is None:
        return None
    expected = f"(N, {spec.height}, {spec.width}, {spec.channels})"
    import tensorflow as tf

    if isinstance(data, tuple) and len(data) == 2 and np.ndim(data[0]) == 4:
        data = data[0]  # (images, labels)
    if callable(data) and not isinstance(data, tf.data.Dataset):
        data = data()
    if isinstance(data, (np.ndarray, tf.Tensor)):
        if np.ndim(data) == 3:
            raise ValueError(
                f"{what} is one array of shape {tuple(np.shape(data))}, which is ambiguous: one "
                f"image or a batch of images without a channel axis. Pass a batch of shape "
                f"{expected}: image[None] for a single image, images[..., None] for grey images."
            )
        batches = [np.asarray(data)]
    elif isinstance(data, tf.data.Dataset) or hasattr(data, "__iter__"):
        batches = iter_batches(data)
    else:
        raise ValueError(
            f"{what} must be images of shape {expected}: a NumPy array, a tf.data.Dataset, or "
            f"a callable returning an iterable of batches; got {type(data).__name__}."
        )
    images, count = [], 0
    for batch in batches:
        if batch.ndim == 3:
            batch = batch[None]
        if batch.ndim != 4 or tuple(batch.shape[1:]) != spec.shape:
            raise ValueError(
                f"{what} must be images of shape {expected} for this model's input, got an "
                f"array of shape {tuple(batch.shape)}. Resize the images to "
                f"{spec.height}x{spec.width} with {spec.channels} channel(s)."
            )
        if not _is_real(batch.dtype):
            raise ValueError(f"{what} must hold real numbers, got dtype {batch.dtype}.")
        take = batch if limit is None else batch[: limit - count]
        images.append(take.astype("float32"))
        count += len(take)
        if limit is not None and count >= limit:
            break
    if count == 0:
        raise ValueError(f"{what} holds no images; expected images of shape {expected}.")
    images = np.concatenate(images)
    _check_finite(images, what)
    return images


def _check_finite(images, what):
    """Raises a `ValueError` saying how many images hold NaN or infinity, and which."""
    bad = np.flatnonzero(~np.isfinite(images).reshape(len(images), -1).all(axis=1))
    if bad.size:
        first = ", ".join(str(i) for i in bad[:5]) + (", ..." if bad.size > 5 else "")
        raise ValueError(
            f"{what} contains NaN or infinite values in {bad.size} of {len(images)} images "
            f"(indices {first}). Drop or repair those images."
        )


IMAGE_FILE_EXPECTED = (
    "a .npy array or a .npz file with an `images` or `x` array of shape (N, H, W, C)"
)


def load_image_file(path):
    """Images saved with NumPy: a `.npy` array, or a `.npz` file's `images` or `x` array.

    A `.npz` file with neither key gives its first array. This is how calibration and
    held-out images reach `chanattn export` from the command line. Object arrays are
    refused (loading them would run pickled code).

    Returns:
        The array, of rank 4 and a real numeric dtype.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: `path` is not a readable `.npy`/`.npz` file (wrong extension, text,
            truncated or corrupt), holds no arrays, an object array, or not `(N, H, W, C)`
            numbers.
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"Image file {str(path)!r} does not exist; expected {IMAGE_FILE_EXPECTED}."
        )
    if path.is_dir() or path.suffix.lower() not in (".npy", ".npz"):
        kind = "a folder" if path.is_dir() else "not a .npy or .npz file"
        raise ValueError(f"Image file {str(path)!r} is {kind}; expected {IMAGE_FILE_EXPECTED}.")
    array = _read_numpy(path)
    if array.ndim != 4 or not _is_real(array.dtype):
        raise ValueError(
            f"Image file {str(path)!r} holds an array of shape {array.shape} and dtype "
            f"{array.dtype}; expected {IMAGE_FILE_EXPECTED} holding numbers (one image: save "
            "image[None])."
        )
    return array


def _read_numpy(path):
    """The array in `path` (a `.npz` file's `images`, `x` or first array), NumPy's errors
    turned into one `ValueError` naming the file."""
    import zipfile
    import zlib

    try:
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.ndarray):
            return data
        with data:
            for key in ("images", "x", *data.files[:1]):
                if key in data.files:
                    return data[key]
    except ValueError as err:
        if str(err).startswith("Object arrays"):
            problem = "holds an object array (pickled Python objects), which is not loaded"
        else:
            problem = "is not a NumPy file or is truncated or corrupt"
        raise ValueError(
            f"Image file {str(path)!r} {problem}; expected {IMAGE_FILE_EXPECTED}."
        ) from None
    except (EOFError, zipfile.BadZipFile, zlib.error, OSError) as err:
        if isinstance(err, PermissionError):
            raise
        raise ValueError(
            f"Image file {str(path)!r} is empty, truncated or corrupt ({type(err).__name__}: "
            f"{err}); expected {IMAGE_FILE_EXPECTED}."
        ) from None
    raise ValueError(f"Image file {str(path)!r} holds no arrays; expected {IMAGE_FILE_EXPECTED}.")


def _is_real(dtype):
    return np.issubdtype(dtype, np.number) and not np.issubdtype(dtype, np.complexfloating)


def value_range(*arrays):
    """`(low, high)` over the given image arrays (`None`s skipped); `(0, 1)` when there are none."""
    arrays = [a for a in arrays if a is not None and a.size]
    if not arrays:
        return 0.0, 1.0
    low = float(min(a.min() for a in arrays))
    high = float(max(a.max() for a in arrays))
    return (low, high) if high > low else (low, low + 1.0)


def synthetic_images(spec, count, low=0.0, high=1.0, seed=0):
    """Smooth random images in `[low, high]`: low-resolution noise upsampled bilinearly.

    Used for checks when the caller gives no held-out images; they look more like natural
    images than white noise does (neighbouring pixels are correlated).
    """
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    coarse = rng.uniform(size=(count, 4, 4, spec.channels)).astype("float32")
    smooth = tf.image.resize(coarse, (spec.height, spec.width), method="bilinear").numpy()
    return (low + (high - low) * smooth).astype("float32")


def probe_images(spec, low=0.0, high=1.0, seed=0):
    """Out-of-distribution probes within the data range `[low, high]`.

    Returns:
        `(names, images)`: one name per image, and a float32 array `(N, H, W, C)`:
        uniform and Gaussian noise, constant images at the low, middle and high value,
        a one-pixel checkerboard, vertical stripes, and random binary pixels (the last
        three at full contrast).
    """
    rng = np.random.default_rng(seed)
    h, w, c = spec.shape
    mid = (low + high) / 2
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")

    def at(mask):
        return np.where(mask[..., None], high, low) * np.ones((h, w, c))

    probes = {
        "uniform_noise": rng.uniform(low, high, (h, w, c)),
        "gaussian_noise": np.clip(rng.normal(mid, (high - low) / 4, (h, w, c)), low, high),
        "constant_low": np.full((h, w, c), low),
        "constant_mid": np.full((h, w, c), mid),
        "constant_high": np.full((h, w, c), high),
        "checkerboard": at((yy + xx) % 2 == 0),
        "stripes": at((xx // 2) % 2 == 0),
        "binary_noise": at(rng.uniform(size=(h, w)) < 0.5),
    }
    names = list(probes)
    return names, np.stack([probes[n] for n in names]).astype("float32")


def images_and_labels(data, limit=None):
    """Splits `data` into `(images, labels or None)` when it carries labels; a dataset is read
    up to `limit` images."""
    import tensorflow as tf

    if data is None:
        return None, None
    if isinstance(data, tuple) and len(data) == 2 and np.ndim(data[0]) == 4:
        return np.asarray(data[0]), np.asarray(data[1])
    if isinstance(data, tf.data.Dataset):
        return _dataset_images_and_labels(data, limit)
    return data, None


def _dataset_images_and_labels(data, limit):
    images, labels = [], []
    for item in data.as_numpy_iterator():
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            return data, None
        image, label = np.asarray(item[0]), np.asarray(item[1])
        if image.ndim == 3:
            image, label = image[None], label[None]
        images.append(image)
        labels.append(label)
        if limit is not None and sum(len(x) for x in images) >= limit:
            break
    if not images:
        return data, None
    return np.concatenate(images), np.concatenate(labels)
