"""The bench's held-out images, their class labels when given, and top-1 predictions."""

import numpy as np

from keras_chanattn.images import as_images, images_and_labels


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
