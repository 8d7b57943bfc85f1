"""Image-classification data: the embedded offline default (handwritten digits).

The default data set needs no network: scikit-learn ships the UCI handwritten digits
(1,797 real 8x8 grey-scale scans of the digits 0-9, 16 grey levels), which this module
upsamples to the model's input size.
"""

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
