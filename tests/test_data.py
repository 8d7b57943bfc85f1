"""The embedded default data: real digits, the right shapes, dtypes, labels and split."""

import numpy as np
import pytest

from keras_chanattn.data import DIGITS_CLASSES, load_digits_images


def test_digits_shapes_dtypes_labels_and_split():
    (x, y), (xt, yt) = load_digits_images(image_size=(12, 10), channels=3, test_fraction=0.25)
    assert x.shape[1:] == (12, 10, 3) and xt.shape[1:] == (12, 10, 3)
    assert x.dtype == np.float32 and y.dtype == np.int32
    assert len(x) + len(xt) == 1797 and abs(len(xt) - 0.25 * 1797) < 2
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.std() > 0.1
    assert set(np.unique(y)) == set(range(DIGITS_CLASSES)) == set(np.unique(yt))
    np.testing.assert_array_equal(x[..., 0], x[..., 2])  # grey repeated over RGB


def test_digits_split_is_reproducible_and_disjoint():
    (x1, _), (t1, _) = load_digits_images(image_size=8, channels=1, seed=3)
    (x2, _), (t2, _) = load_digits_images(image_size=8, channels=1, seed=3)
    np.testing.assert_array_equal(x1, x2)
    train = {a.tobytes() for a in x1}
    assert sum(a.tobytes() in train for a in t1) < 0.05 * len(t1)  # a few scans repeat


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"channels": 2}, "channels"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"image_size": 0}, "image_size"),
    ],
)
def test_digits_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_digits_images(**kwargs)
