"""The bench's held-out images, their class labels when given, and top-1 predictions."""

import numpy as np

from keras_chanattn.images import as_images


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


def class_labels(labels, count):
    """The first `count` class indices of `labels` (indices or one-hot rows)."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] > 1:
        labels = labels.argmax(1)  # one-hot
    labels = labels.reshape(-1)
    if labels.size < count:
        raise ValueError(f"validation_data has {count} images but {labels.size} labels.")
    return labels[:count].astype("int64")


def held_out_sets(specs, validation_data, max_samples):
    """`(images, labels)`: `{label: held-out images at that model's input spec, or None}` and
    `{label: class indices}` (empty when `validation_data` carries no labels)."""
    images, labels = images_and_labels(validation_data, max_samples)
    held_out = {
        label: as_images(images, spec, "validation_data", max_samples)
        for label, spec in specs.items()
    }
    if labels is None:
        return held_out, {}
    return held_out, {
        label: class_labels(labels, 0 if x is None else len(x)) for label, x in held_out.items()
    }


def top1_classes(outputs):
    """Argmax of the first `(N, classes)` output, or `None`."""
    for out in outputs if isinstance(outputs, (list, tuple)) else [outputs]:
        out = np.asarray(out)
        if out.ndim == 2 and out.shape[1] >= 2:
            return out.argmax(1)
    return None
