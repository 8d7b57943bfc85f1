"""Image-classification data: TensorFlow Datasets, image folders, and the embedded default.

Every source yields `(image, label)` pairs with float32 images in [0, 1] (NHWC) and int32
labels, batched by `make_pipeline`. The embedded default needs no network: scikit-learn
ships the UCI handwritten digits (1,797 real 8x8 grey-scale scans of the digits 0-9, 16
grey levels), which `load_digits_images` upsamples to the model's input size. Nothing here
downloads unless asked to (`download=True` for TFDS).
"""

import dataclasses
import os
import pathlib

import numpy as np

DIGITS_CLASSES = 10


def load_digits_images(image_size=32, channels=3, test_fraction=0.25, seed=0):
    """Loads the embedded handwritten digits as images, split into train and test.

    The 8x8 scans are scaled to [0, 1], resized bilinearly to `image_size` and repeated
    over `channels`. The split is stratified by class and reproducible.

    Args:
        image_size: output height and width (an int) or `(height, width)`. Defaults to `32`.
        channels: 1 (grey) or 3 (repeated grey, for RGB backbones). Defaults to `3`.
        test_fraction: share of the images held out for testing, in (0, 1). Defaults to `0.25`.
        seed: seed of the split. Defaults to `0`.

    Returns:
        `((x_train, y_train), (x_test, y_test))`: float32 images `(N, H, W, channels)` in
        [0, 1] and int32 labels in [0, 10).

    Example:

    >>> (x, y), (x_test, y_test) = load_digits_images(image_size=32)
    """
    import tensorflow as tf
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(
            f"`image_size` must be a positive int or (height, width), got {image_size!r}."
        )
    if channels not in (1, 3):
        raise ValueError(f"`channels` must be 1 or 3, got {channels!r}.")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"`test_fraction` must be in (0, 1), got {test_fraction!r}.")

    digits = load_digits()
    images = (digits.images / 16.0).astype("float32")[..., None]
    images = tf.image.resize(images, size, method="bilinear").numpy()
    images = np.clip(images, 0.0, 1.0)
    if channels == 3:
        images = np.repeat(images, 3, axis=-1)
    labels = digits.target.astype("int32")
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    return (x_train, y_train), (x_test, y_test)


@dataclasses.dataclass
class ImageData:
    """Train and validation splits of an image-classification source, unbatched.

    Attributes:
        train: `tf.data.Dataset` of `(image, label)`, images float32 `(H, W, C)` in [0, 1].
        validation: the same for the held-out split.
        num_classes: number of classes.
        class_names: class names, index = label.
        image_shape: `(H, W, C)` of every image.
    """

    train: object
    validation: object
    num_classes: int
    class_names: list
    image_shape: tuple


def _size(image_size):
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(
            f"`image_size` must be a positive int or (height, width), got {image_size!r}."
        )
    return size


def _to_float_image(image, size, channels):
    import tensorflow as tf

    image = tf.image.convert_image_dtype(image, tf.float32)
    if channels == 3 and image.shape[-1] == 1:
        image = tf.image.grayscale_to_rgb(image)
    elif channels == 1 and image.shape[-1] == 3:
        image = tf.image.rgb_to_grayscale(image)
    return tf.clip_by_value(tf.image.resize(image, size, antialias=True), 0.0, 1.0)


def digits_data(image_size=32, channels=3, test_fraction=0.25, seed=0):
    """The embedded digits as an `ImageData` (see `load_digits_images`)."""
    import tensorflow as tf

    (x, y), (xt, yt) = load_digits_images(image_size, channels, test_fraction, seed)
    return ImageData(
        train=tf.data.Dataset.from_tensor_slices((x, y)),
        validation=tf.data.Dataset.from_tensor_slices((xt, yt)),
        num_classes=DIGITS_CLASSES,
        class_names=[str(i) for i in range(DIGITS_CLASSES)],
        image_shape=x.shape[1:],
    )


def tfds_data(
    name,
    image_size=224,
    channels=3,
    train_split="train",
    validation_split="test",
    data_dir=None,
    download=False,
):
    """A TensorFlow Datasets image-classification set, read from a local `data_dir`.

    Args:
        name: TFDS name, e.g. `"cifar10"`, `"dtd"`, `"imagenette"` (a `name:version` works).
        image_size: output height and width (int or pair). Defaults to `224`.
        channels: 1 or 3. Defaults to `3`.
        train_split: TFDS split (slicing syntax allowed, e.g. `"train[:90%]"`). Defaults to
            `"train"`.
        validation_split: held-out split, e.g. `"test"` or `"train[90%:]"`. Defaults to
            `"test"`.
        data_dir: where the prepared data lives. Defaults to `None` (TFDS's default,
            `~/tensorflow_datasets` or `$TFDS_DATA_DIR`).
        download: allow TFDS to download and prepare the data if it is missing (needs
            network). Defaults to `False`: a missing data set is a `FileNotFoundError`
            saying how to provide it.

    Returns:
        `ImageData`.
    """

    size = _size(image_size)
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"TFDS data set name must be a non-empty string, got {name!r}.")
    builder = _tfds_builder(name, data_dir)
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise ValueError(
            f"TFDS data set {name!r} has features {list(features)}; an image-classification "
            "set with 'image' and 'label' features is needed."
        )
    if not builder.is_prepared():
        if not download:
            raise FileNotFoundError(
                f"TFDS data set {name!r} is not prepared in {builder.data_dir}. No download is "
                f"attempted. On a machine with network run `tfds build {name} --data_dir DIR` "
                "(or prepare it manually for sets with manual downloads), copy DIR here, and "
                f"pass data_dir=DIR (or set TFDS_DATA_DIR); or pass download=True."
            )
        builder.download_and_prepare()

    def load(split):
        ds = builder.as_dataset(split=split, as_supervised=True)
        return ds.map(
            lambda image, label: (_to_float_image(image, size, channels), _int_label(label))
        )

    label = features["label"]
    return ImageData(
        train=load(train_split),
        validation=load(validation_split),
        num_classes=label.num_classes,
        class_names=list(label.names),
        image_shape=(*size, channels),
    )


def _tfds_builder(name, data_dir):
    """`tfds.builder(name)`, its errors shortened to one line (TFDS lists its whole registry)."""
    import difflib

    import tensorflow_datasets as tfds

    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError:
        base = name.split(":")[0].split("/")[0]
        close = difflib.get_close_matches(
            base.lower(), tfds.list_builders(with_community_datasets=False), n=3
        )
        hint = f" Close matches: {', '.join(close)}." if close else ""
        where = repr(str(data_dir)) if data_dir else "TFDS's default data_dir"
        raise ValueError(
            f"TensorFlow Datasets has no data set {name!r}: it is neither registered nor "
            f"prepared in {where}.{hint} Pass a registered name (e.g. 'tfds:cifar10'), or "
            f"prepare the set on a machine with network (`tfds build {base} --data_dir DIR`) "
            "and pass data_dir=DIR; nothing is downloaded at run time."
        ) from None
    except Exception as err:  # a bad version or config: TFDS's first line says which
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
        raise ValueError(
            f"TensorFlow Datasets cannot load {name!r} ({type(err).__name__}: {first}). "
            "Check the name, config and version (tfds:<name>[/<config>][:<version>])."
        ) from None


def _int_label(label):
    import tensorflow as tf

    return tf.cast(label, tf.int32)


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")

# The first bytes of each image format `tf.io.decode_image` reads, to say why a file failed.
_MAGIC = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
}
_LISTED = 5  # how many bad files an error message names


def folder_data(root, image_size=224, channels=3, validation_fraction=0.2, seed=0, verify=True):
    """Images in `root/<class name>/<image>` folders, split into train and validation.

    Classes are the sub-folder names in sorted order; files whose names start with "." are
    skipped. The split is per class, stratified and reproducible for a given seed: every
    class keeps at least one training image and, when it has at least two images and
    `validation_fraction > 0`, at least one validation image. Every image is decoded once
    up front (`verify`), so a corrupt file is reported by name here rather than failing
    inside `tf.data` in the middle of training.

    Args:
        root: the folder holding one sub-folder per class.
        image_size: output height and width (int or pair). Defaults to `224`.
        channels: 1 or 3. Defaults to `3`.
        validation_fraction: share of each class held out, in [0, 1); `0` gives an empty
            validation split. Defaults to `0.2`.
        seed: seed of the split. Defaults to `0`.
        verify: decode every image once before returning (about as long as one epoch's
            decoding). Defaults to `True`.

    Returns:
        `ImageData`.

    Raises:
        FileNotFoundError: `root` does not exist.
        ValueError: bad arguments, fewer than two class folders, a class without images,
            images that cannot be decoded, or an empty validation split.
    """
    import tensorflow as tf

    size = _size(image_size)
    if channels not in (1, 3):
        raise ValueError(f"`channels` must be 1 or 3, got {channels!r}.")
    if (
        isinstance(validation_fraction, bool)
        or not isinstance(validation_fraction, (int, float, np.integer, np.floating))
        or not 0.0 <= validation_fraction < 1.0
    ):
        raise ValueError(
            f"`validation_fraction` must be a number in [0, 1), got {validation_fraction!r}."
        )
    files = _class_files(root)
    splits = _split_files(files, validation_fraction, seed)
    if verify:
        _check_decodable(root, [path for paths in files.values() for path in paths])

    def decode(path, label):
        # Decoded as RGB (GIF and BMP decoders refuse one channel); made grey afterwards.
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        image.set_shape((None, None, 3))
        return _to_float_image(image, size, channels), label

    def load(split):
        paths, labels = splits[split]
        ds = tf.data.Dataset.from_tensor_slices(
            (tf.constant(paths, tf.string, (len(paths),)), tf.constant(labels, tf.int32))
        )
        return ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)

    return ImageData(
        train=load("train"),
        validation=load("validation"),
        num_classes=len(files),
        class_names=list(files),
        image_shape=(*size, channels),
    )


def _class_files(root):
    """`{class name: sorted image paths}` of `root`'s class folders, in sorted class order."""
    root = pathlib.Path(root)
    if not root.exists():
        raise FileNotFoundError(f"Image folder {str(root)!r} does not exist.")
    if not root.is_dir():
        raise ValueError(
            f"Image folder {str(root)!r} is a file; pass the folder holding one sub-folder "
            "per class (root/<class>/<image>)."
        )
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise ValueError(
            f"{str(root)!r} must hold one sub-folder per class (root/<class>/<image>), at least "
            f"two; found {classes}."
        )
    files = {}
    for name in classes:
        files[name] = sorted(
            str(p)
            for p in (root / name).iterdir()
            if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
        )
        if not files[name]:
            raise ValueError(
                f"Class folder {str(root / name)!r} holds no images {IMAGE_EXTENSIONS}; add "
                "images or remove the folder."
            )
    return files


def _split_files(files, validation_fraction, seed):
    """`{"train": (paths, labels), "validation": (paths, labels)}`, stratified by class.

    Raises:
        ValueError: `validation_fraction > 0` but no class has two images to share.
    """
    rng = np.random.default_rng(seed)
    splits = {"train": ([], []), "validation": ([], [])}
    for label, paths in enumerate(files.values()):
        paths = [paths[i] for i in rng.permutation(len(paths))]
        n_val = 0
        if validation_fraction > 0 and len(paths) > 1:
            n_val = min(max(1, int(round(validation_fraction * len(paths)))), len(paths) - 1)
        for split, part in (("validation", paths[:n_val]), ("train", paths[n_val:])):
            splits[split][0].extend(part)
            splits[split][1].extend([label] * len(part))
    if validation_fraction > 0 and not splits["validation"][0]:
        raise ValueError(
            f"validation_fraction={validation_fraction} leaves the validation split empty: "
            f"every class folder holds a single image ({', '.join(map(repr, files))}). A "
            "class needs at least 2 images to appear in both splits; add images, or pass "
            "validation_fraction=0 for no validation split."
        )
    return splits


def _check_decodable(root, paths):
    """Decodes every image in `paths` once; raises a `ValueError` naming those that fail."""
    import concurrent.futures

    import tensorflow as tf

    def fails(path):
        try:
            tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        except tf.errors.OpError:
            return True
        return False

    workers = min(8, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        bad = [path for path, failed in zip(paths, pool.map(fails, paths), strict=True) if failed]
    if not bad:
        return
    listed = ", ".join(f"{path!r} ({_why_undecodable(path)})" for path in bad[:_LISTED])
    more = f" and {len(bad) - _LISTED} more" if len(bad) > _LISTED else ""
    raise ValueError(
        f"{len(bad)} of {len(paths)} image files under {str(root)!r} cannot be decoded: "
        f"{listed}{more}. Remove or replace these files, then run again."
    )


def _why_undecodable(path):
    """A few words on why `path` is not a readable image: empty, unknown format or damaged."""
    try:
        with open(path, "rb") as file:
            head = file.read(8)
    except OSError as err:
        return f"cannot be read: {err.strerror or err}"
    if not head:
        return "empty file"
    for magic, kind in _MAGIC.items():
        if head.startswith(magic):
            return f"truncated or corrupt {kind} data"
    return "not a PNG, JPEG, BMP or GIF image"


def load_data(source="digits", image_size=32, channels=3, seed=0, **kwargs):
    """Loads an image-classification source by name.

    Args:
        source: `"digits"` (the embedded default), `"tfds:<name>"` (TensorFlow Datasets,
            e.g. `"tfds:cifar10"`), or a path to an image folder.
        image_size: output height and width. Defaults to `32`.
        channels: 1 or 3. Defaults to `3`.
        seed: seed of the train/validation split of the digits and of image folders
            (TFDS sets keep their own splits). Defaults to `0`.
        **kwargs: passed to `digits_data`, `tfds_data` or `folder_data`.

    Returns:
        `ImageData`.
    """
    if source == "digits":
        return digits_data(image_size, channels, seed=seed, **kwargs)
    if isinstance(source, str) and source.startswith("tfds:"):
        return tfds_data(source[len("tfds:") :], image_size, channels, **kwargs)
    if isinstance(source, (str, os.PathLike)) and pathlib.Path(source).is_dir():
        return folder_data(source, image_size, channels, seed=seed, **kwargs)
    raise ValueError(
        f"Unknown data source {source!r}: use 'digits', 'tfds:<name>' or an existing image "
        "folder (root/<class>/<image>)."
    )


def augmentation(flip=True, translate=0.1, zoom=0.1, seed=None):
    """Keras 3 preprocessing layers for training-time augmentation, as one `Sequential`.

    Args:
        flip: random horizontal flips (off for data where mirroring changes the class,
            such as digits). Defaults to `True`.
        translate: largest random shift, as a fraction of height and width. Defaults to `0.1`.
        zoom: largest random zoom in or out, as a fraction. Defaults to `0.1`.
        seed: seed of the random layers. Defaults to `None`.
    """
    import keras

    layers = []
    if flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if translate:
        layers.append(
            keras.layers.RandomTranslation(translate, translate, fill_mode="constant", seed=seed)
        )
    if zoom:
        layers.append(keras.layers.RandomZoom(zoom, fill_mode="constant", seed=seed))
    return keras.Sequential(layers, name="augmentation")


def make_pipeline(
    dataset, batch_size=64, shuffle=False, augment=None, seed=0, drop_remainder=False
):
    """Batches an `(image, label)` dataset for `model.fit`.

    Args:
        dataset: unbatched `tf.data.Dataset` of `(image, label)`.
        batch_size: batch size. Defaults to `64`.
        shuffle: shuffle each epoch (training). Defaults to `False`.
        augment: `None`/`False` for none, `True` for `augmentation()`, or a Keras layer
            applied to each batch. Defaults to `None`.
        seed: shuffle seed. Defaults to `0`.
        drop_remainder: drop the last incomplete batch. Defaults to `False`.

    Returns:
        A batched, prefetched `tf.data.Dataset`.
    """
    import tensorflow as tf

    if shuffle:
        dataset = dataset.shuffle(4096, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    if augment:
        layer = augmentation(seed=seed) if augment is True else augment
        dataset = dataset.map(
            lambda x, y: (tf.clip_by_value(_augment(layer, x), 0.0, 1.0), y),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return dataset.prefetch(tf.data.AUTOTUNE)


def _augment(layer, images):
    """`layer(images, training=True)` inside a tf.data map. A `Sequential`'s layers are
    called in turn: the `Sequential` itself turns its input into the backend's arrays,
    which fails in tf.data on JAX, where the preprocessing layers alone stay in TensorFlow."""
    import keras

    for each in layer.layers if isinstance(layer, keras.Sequential) else [layer]:
        images = each(images, training=True)
    return images
