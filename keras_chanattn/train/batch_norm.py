"""Re-estimating BatchNorm moving statistics after a short fine-tune or after graph surgery."""

import numbers

import keras

from keras_chanattn._compat.keras_graph import flatten_layers


def _batch_norm_layers(model):
    return [
        layer
        for layer in flatten_layers(model)
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
    ]


def _image_batches(images, batch_size):
    """Yields float32 NumPy batches of at most `batch_size` from an array, an ImageData, or a
    dataset of images or `(image, label)` tuples (batched or not)."""
    import numpy as np

    from keras_chanattn.data import ImageData
    from keras_chanattn.images import iter_batches

    if isinstance(images, ImageData):
        images = images.train
    chunks = [np.asarray(images)] if isinstance(images, np.ndarray) else iter_batches(images)
    pending, count, yielded = [], 0, False
    for chunk in chunks:
        chunk = chunk[None] if chunk.ndim == 3 else chunk
        if chunk.ndim != 4:
            raise ValueError(
                f"`images` must be NHWC images, got an array of shape {tuple(chunk.shape)}."
            )
        pending.append(chunk.astype("float32"))
        count += len(chunk)
        while count >= batch_size:
            joined = np.concatenate(pending)
            yielded = True
            yield joined[:batch_size]
            pending, count = [joined[batch_size:]], count - batch_size
    if count and not yielded:  # a short last batch would weigh as much as a full one
        yield np.concatenate(pending)


def _is_integer(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _nonfinite_images(batch):
    """Indices of the images in an NHWC `batch` that hold a NaN or an Inf."""
    import numpy as np

    return np.flatnonzero(~np.isfinite(batch.reshape(len(batch), -1)).all(axis=1))


def _nonfinite_error(indices, total, where):
    first = ", ".join(str(int(i)) for i in indices[:5])
    return ValueError(
        f"`images` holds NaN or Inf in {len(indices)} of {total} images{where} (first at "
        f"index {first}); recalibrating on them would make every moving statistic NaN. "
        "Drop or repair those images."
    )


def _checked_batches(images, batch_size, max_batches):
    """Yields `_image_batches` up to the first batch holding NaN or Inf; then counts the bad
    images among the rest that would be used, and raises ValueError."""
    offset, bad = 0, []
    for count, batch in enumerate(_image_batches(images, batch_size), start=1):
        bad += [offset + i for i in _nonfinite_images(batch)]
        offset += len(batch)
        if not bad:
            yield batch
        if max_batches is not None and count >= max_batches:
            break
    if bad:
        raise _nonfinite_error(bad, offset, " read")


def _statistics_check(layers):
    """Raises FloatingPointError naming the layers whose moving statistics are not finite."""
    import numpy as np

    broken = [
        layer.path
        for layer in layers
        if not (np.isfinite(layer.moving_mean.numpy()).all())
        or not np.isfinite(layer.moving_variance.numpy()).all()
    ]
    if broken:
        raise FloatingPointError(
            f"Recalibration gave NaN or Inf moving statistics in {', '.join(broken)} (the "
            "model overflows on these images, or its weights are not finite); the previous "
            "statistics were put back."
        )


def recalibrate_batch_norm(model, images, batch_size=32, max_batches=None):
    """Re-estimates the moving mean and variance of every BatchNormalization in `model`.

    After a short fine-tune (or after inserting attention blocks into a trained network) the
    moving statistics lag the weights: with the default momentum 0.99 an epoch of 43 steps
    keeps 65% of the old statistics, and validation accuracy falls far below training
    accuracy. This pass runs the model in training mode over `images` and sets each moving
    mean and variance to the plain average of the batch statistics it saw. Only the moving
    statistics change: no weight is trained, and BatchNorm layers that are frozen
    (`trainable=False`) keep theirs. Other layers run in training mode too (Dropout drops,
    as it did while the statistics were first gathered). On any error or interrupt the
    previous statistics are put back.

    Args:
        model: a Keras model; BatchNorm layers inside attention blocks and nested models
            are included.
        images: NHWC images without augmentation: a NumPy array, a `tf.data.Dataset` of
            images or `(image, label)` tuples (batched or not), or an
            `keras_chanattn.data.ImageData` (its training split). They must be finite: an
            array is checked whole before anything runs, a stream batch by batch.
        batch_size: images per batch; batch statistics need several. A last batch short
            of `batch_size` is left out (it would weigh as much as a full one) unless it is
            the only one. Defaults to `32`.
        max_batches: use at most this many batches. Defaults to `None` (all).

    Returns:
        The number of BatchNorm layers recalibrated.

    Raises:
        ValueError: `model` has no trainable BatchNorm layer, `images` holds none or holds
            NaN/Inf (the message counts them and gives the first indices), or
            `batch_size` < 2.
        FloatingPointError: the new statistics came out NaN or Inf (e.g. the activations
            overflow); the old ones are kept.
    """
    import numpy as np

    if not _is_integer(batch_size) or batch_size < 2:
        raise ValueError(
            f"`batch_size` must be an integer >= 2 (batch statistics), got {batch_size!r}."
        )
    if max_batches is not None and (not _is_integer(max_batches) or max_batches < 1):
        raise ValueError(f"`max_batches` must be an integer >= 1 or None, got {max_batches!r}.")
    layers = _batch_norm_layers(model)
    if not layers:
        raise ValueError(
            "The model has no trainable BatchNormalization layer: nothing to recalibrate."
        )
    if isinstance(images, np.ndarray) and images.ndim in (3, 4) and images.dtype.kind in "fc":
        whole = images[None] if images.ndim == 3 else images
        bad = _nonfinite_images(whole)
        if bad.size:
            raise _nonfinite_error(bad, len(whole), "")
    momenta = [layer.momentum for layer in layers]
    statistics = [(layer.moving_mean, layer.moving_variance) for layer in layers]
    before = [(mean.numpy(), variance.numpy()) for mean, variance in statistics]
    seen = 0
    try:
        for batch in _checked_batches(images, batch_size, max_batches):
            seen += 1
            for layer in layers:  # a running average: batch k weighs 1/k
                layer.momentum = 1.0 - 1.0 / seen
            model(batch, training=True)  # eager: each call reads the momentum set above
        if not seen:
            raise ValueError("`images` holds no images: nothing to recalibrate with.")
        _statistics_check(layers)
    except BaseException:  # an error or an interrupt leaves the statistics as they were
        for (mean, variance), (old_mean, old_variance) in zip(statistics, before, strict=True):
            mean.assign(old_mean)
            variance.assign(old_variance)
        raise
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
    return len(layers)
