"""Channel-weight statistics: correlation, effective rank, saturation and diversity of gates.

Every function works on plain NumPy arrays of per-channel weights, shape `(N, C)`: one row
per image, one column per channel, as `collect_gates` returns them under the key
`"channel"`. They measure what the SRM paper compares between SE and SRM: how strongly
channels are switched on and off together (correlation, effective rank), how many weights
sit at the gate's ends (saturation), and how many different images drive the channels
(top-activating images).

Constant channels: a channel whose weight does not vary over the images (a saturated gate,
or a block that ignores its input) has no defined correlation. `channel_correlation` gives
its row and column as NaN, the summaries leave those NaNs out and report how many channels
were constant, and the JSON-ready dicts write an undefined number as `None`.
"""

import math
from collections.abc import Mapping

import numpy as np

from keras_chanattn.tables import Column, format_table

CONSTANT_ATOL = 1e-6
"""A channel is constant when its standard deviation over the images is at most this, times
max(1, |mean|): float32 sigmoid gates near saturation differ only in their last bits, and a
correlation of rounding noise means nothing."""


def as_weights(weights, min_images=1, name="weights"):
    """`weights` as a float64 (N, C) array, or a clear error naming the problem.

    The check every function here makes first; public so that figures and callers share it.
    """
    array = np.asarray(weights)
    if not (np.issubdtype(array.dtype, np.number) and not np.issubdtype(array.dtype, np.bool_)):
        raise TypeError(f"{name} must be numeric, got dtype {array.dtype}.")
    if array.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D (images, channels), got shape {array.shape}. Pass the "
            '"channel" gate of collect_gates, or reshape one image\'s weights with w[None].'
        )
    if array.shape[0] < min_images:
        raise ValueError(
            f"{name} has {array.shape[0]} image(s); this statistic needs at least "
            f"{min_images}. Collect the gates over more images."
        )
    if array.shape[1] < 1:
        raise ValueError(f"{name} has no channels (shape {array.shape}).")
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} holds NaN or inf; check the model's outputs for these images.")
    return array


def _json_float(value):
    """A plain float, or None for NaN (JSON has no NaN)."""
    value = float(value)
    return None if math.isnan(value) else value


def _json_list(array):
    return [_json_list(a) for a in array] if np.ndim(array) > 1 else [_json_float(a) for a in array]


def constant_channels(weights, atol=CONSTANT_ATOL):
    """Boolean mask (C,) of the channels whose weight is constant over the N images.

    A channel is constant when its standard deviation is at most `atol * max(1, |mean|)`
    (see `CONSTANT_ATOL`); such a channel has no defined correlation with any other.
    """
    weights = as_weights(weights)
    mean = weights.mean(axis=0)
    return weights.std(axis=0) <= atol * np.maximum(1.0, np.abs(mean))


def channel_correlation(weights, atol=CONSTANT_ATOL):
    """Pearson correlation (C, C) between channels, computed over the N images.

    `corr[i, j]` tells whether channels i and j are turned up and down together from one
    image to the next (the SRM paper's grid pattern for SE). The rows and columns of
    constant channels (`constant_channels(weights, atol)`), diagonal included, are NaN:
    their correlation is undefined. Needs at least two images.
    """
    weights = as_weights(weights, min_images=2)
    constant = constant_channels(weights, atol)
    centred = weights - weights.mean(axis=0)
    scale = np.sqrt(np.mean(centred**2, axis=0))
    standard = centred / np.where(constant, 1.0, scale)
    corr = np.clip(standard.T @ standard / weights.shape[0], -1.0, 1.0)
    np.fill_diagonal(corr, 1.0)
    corr[constant, :] = np.nan
    corr[:, constant] = np.nan
    return corr


def mean_abs_offdiagonal(corr):
    """Mean |corr[i, j]| over the pairs i != j whose correlation is defined (not NaN).

    1 when every channel moves with every other, near 0 for independent channels. NaN when
    fewer than two channels have a defined correlation.
    """
    corr = np.asarray(corr, dtype=np.float64)
    if corr.ndim != 2 or corr.shape[0] != corr.shape[1]:
        raise ValueError(
            f"corr must be a square (C, C) matrix, got shape {corr.shape}. Pass the output of "
            "channel_correlation."
        )
    off = corr[~np.eye(corr.shape[0], dtype=bool)]
    off = off[~np.isnan(off)]
    return float(np.mean(np.abs(off))) if off.size else math.nan


def effective_rank(weights):
    """Effective rank of the centred weights (Roy & Vetterli, 2007): exp(H(p)), p = s / sum(s).

    s are the singular values of the (N, C) weights minus their mean over the images, H the
    Shannon entropy (natural log). It is about 1 when all channels vary along one direction
    (switched together) and about C when they vary independently with equal spread; at most
    min(N - 1, C). Being built on s rather than s**2, it counts weak independent variation
    (small noise in many channels) noticeably. Singular values below the rounding tolerance
    of `np.linalg.matrix_rank` count as 0, and weights that do not vary at all give 0.
    """
    weights = as_weights(weights)
    centred = weights - weights.mean(axis=0)
    s = np.linalg.svd(centred, compute_uv=False)
    if s.size == 0 or s[0] == 0.0:
        return 0.0
    s = s[s > s[0] * max(centred.shape) * np.finfo(np.float64).eps]
    p = s / s.sum()
    return float(np.exp(-np.sum(p * np.log(p))))


def gate_distribution(weights, low=0.1, high=0.9, bins=20):
    """Where the gate values sit: fractions near 0 (<= low), near 1 (>= high) and between.

    A sigmoid gate near 0 switches its channel off and near 1 passes it through, so these
    fractions say how hard the block gates. Also a histogram of all N * C values, on
    [min(0, lowest value), max(1, highest value)] so distributions of [0, 1] gates share
    their bins.

    Returns:
        A dict of plain numbers: `near_zero`, `near_one`, `between` (fractions summing to
        1), `low`, `high`, `counts` (bins ints) and `edges` (bins + 1 floats).
    """
    weights = as_weights(weights)
    if not low < high:
        raise ValueError(f"low must be below high, got low={low}, high={high}.")
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}.")
    near_zero = float(np.mean(weights <= low))
    near_one = float(np.mean(weights >= high))
    span = (min(0.0, float(weights.min())), max(1.0, float(weights.max())))
    counts, edges = np.histogram(weights, bins=int(bins), range=span)
    return {
        "near_zero": near_zero,
        "near_one": near_one,
        "between": 1.0 - near_zero - near_one,
        "low": float(low),
        "high": float(high),
        "counts": [int(c) for c in counts],
        "edges": [float(e) for e in edges],
    }


def _labels(labels, images):
    """`labels` as a 1-D int array of length `images`, or a clear error."""
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(
            f"labels must be 1-D class indices, got shape {array.shape}. For one-hot labels "
            "pass labels.argmax(axis=1)."
        )
    if array.shape[0] != images:
        raise ValueError(
            f"labels has {array.shape[0]} entries but the weights have {images} images; pass "
            "one label per image, in the order of the images."
        )
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.bool_):
        raise TypeError(f"labels must be integer class indices, got dtype {array.dtype}.")
    if not np.all(np.isfinite(array)) or np.any(array != np.round(array)) or np.any(array < 0):
        raise ValueError("labels must be non-negative integer class indices.")
    return array.astype(np.int64)


def class_mean_gates(weights, labels, num_classes=None):
    """Mean weight of each channel over the images of each class: (num_classes, C).

    Rows differ where a channel's weight depends on the class. `num_classes` defaults to
    max(labels) + 1; the row of a class with no image is NaN.
    """
    weights = as_weights(weights)
    labels = _labels(labels, weights.shape[0])
    needed = int(labels.max()) + 1
    if num_classes is None:
        num_classes = needed
    elif num_classes < needed:
        raise ValueError(
            f"num_classes={num_classes} but labels go up to {needed - 1}; pass a larger "
            "num_classes or leave it None."
        )
    sums = np.zeros((num_classes, weights.shape[1]))
    np.add.at(sums, labels, weights)
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts[:, None]


def top_activating(weights, k=5):
    """Indices (C, k) of the k images with the highest weight in each channel, highest first.

    Ties go to the lower image index, so the result is deterministic. The SRM paper shows
    these images per channel: the same few images for every channel means correlated gates.
    """
    weights = as_weights(weights)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}.")
    if k > weights.shape[0]:
        raise ValueError(
            f"k={k} is more than the {weights.shape[0]} images; pass k <= {weights.shape[0]}."
        )
    order = np.argsort(-weights, axis=0, kind="stable")
    return np.ascontiguousarray(order[:k].T)


def distinct_images(indices):
    """Number of distinct images in `top_activating`'s (C, k) indices (the SRM diversity).

    It ranges from k (every channel is driven by the same k images) to C * k.
    """
    indices = np.asarray(indices)
    if indices.ndim != 2 or not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(
            f"indices must be a 2-D integer array (channels, k), got shape {indices.shape} and "
            f"dtype {indices.dtype}. Pass the output of top_activating."
        )
    return int(np.unique(indices).size)


def channel_statistics(weights, labels=None, *, top_k=5):
    """The summaries of one block's (N, C) weights, as a JSON-ready dict of plain numbers.

    Keys: `images`, `channels`, `constant_channels` (count) and `constant_channel_indices`,
    `mean_abs_offdiagonal` (over the non-constant channels; None when undefined),
    `effective_rank`, `mean`, `std`, `distribution` (`gate_distribution`), `top_k` and
    `distinct_top_images` (`distinct_images(top_activating(weights, min(top_k, N)))`), and
    with `labels` also `class_mean_gates` (None for a class with no image).
    """
    weights = as_weights(weights, min_images=2)
    if labels is not None:
        labels = _labels(labels, weights.shape[0])
    constant = constant_channels(weights)
    k = min(top_k, weights.shape[0])
    stats = {
        "images": int(weights.shape[0]),
        "channels": int(weights.shape[1]),
        "constant_channels": int(constant.sum()),
        "constant_channel_indices": [int(i) for i in np.flatnonzero(constant)],
        "mean_abs_offdiagonal": _json_float(mean_abs_offdiagonal(channel_correlation(weights))),
        "effective_rank": effective_rank(weights),
        "mean": float(weights.mean()),
        "std": float(weights.std()),
        "distribution": gate_distribution(weights),
        "top_k": int(k),
        "distinct_top_images": distinct_images(top_activating(weights, k)),
    }
    if labels is not None:
        stats["class_mean_gates"] = _json_list(class_mean_gates(weights, labels))
    return stats


def _skip_reason(gates):
    """Why a layer's gates give no statistics row, or None when they do."""
    if not isinstance(gates, Mapping):
        return f"gates are a {type(gates).__name__}, not a dict of named gates"
    if "channel" not in gates:
        return f"no 'channel' gate (gates: {', '.join(map(str, gates)) or 'none'})"
    shape = np.shape(gates["channel"])
    if len(shape) != 2:
        return f"'channel' gate has shape {shape}, not (images, channels)"
    if shape[0] < 2:
        return f"'channel' gate has {shape[0]} image(s); correlation needs at least 2"
    return None


def _class_spread(weights, labels):
    """Mean over channels of the spread (std) of the class means: 0 for class-blind gates."""
    means = class_mean_gates(weights, labels)
    return float(np.mean(np.nanstd(means[~np.isnan(means).all(axis=1)], axis=0)))


def model_statistics(gates_by_layer, labels=None):
    """One summary row per block of a model, from `collect_gates`' {layer: {gate: array}}.

    Each row has `layer`, `channels`, `images`, `mean_abs_offdiagonal`, `effective_rank`,
    `near_zero`, `near_one`, `constant_channels`, `class_spread` (with `labels`: mean over
    channels of the std of the class means, else None) and `skipped`: None, or why the
    layer has no statistics (no "channel" gate, wrong shape, one image), with its numbers
    None, so no layer disappears from the table silently.
    """
    if not isinstance(gates_by_layer, Mapping):
        raise TypeError(
            f"gates_by_layer must be a dict {{layer_name: {{gate_name: array}}}} as "
            f"collect_gates returns, got {type(gates_by_layer).__name__}."
        )
    reasons = {name: _skip_reason(gates) for name, gates in gates_by_layer.items()}
    weights = {  # every error before any work
        name: as_weights(gates["channel"], min_images=2, name=f"{name}['channel']")
        for name, gates in gates_by_layer.items()
        if reasons[name] is None
    }
    if labels is not None:
        for array in weights.values():
            _labels(labels, array.shape[0])
    return [_statistics_row(name, reasons[name], weights.get(name), labels) for name in reasons]


def _statistics_row(name, reason, weights, labels):
    """One `model_statistics` row: the layer's summaries, or None numbers and the reason."""
    row = {"layer": str(name), "skipped": reason}
    row.update(dict.fromkeys(("channels", "images", "mean_abs_offdiagonal", "effective_rank")))
    row.update(dict.fromkeys(("near_zero", "near_one", "constant_channels", "class_spread")))
    if reason is not None:
        return row
    stats = channel_statistics(weights)
    for key in ("channels", "images", "mean_abs_offdiagonal", "effective_rank"):
        row[key] = stats[key]
    row["constant_channels"] = stats["constant_channels"]
    row["near_zero"] = stats["distribution"]["near_zero"]
    row["near_one"] = stats["distribution"]["near_one"]
    if labels is not None:
        row["class_spread"] = _class_spread(weights, labels)
    return row


STATISTICS_COLUMNS = (
    Column("layer", "layer", align="left"),
    Column("channels", "C"),
    Column("images", "N"),
    Column("mean_abs_offdiagonal", "mean abs corr", "{:.3f}"),
    Column("effective_rank", "eff. rank", "{:.1f}"),
    Column("near_zero", "near 0", "{:.1%}"),
    Column("near_one", "near 1", "{:.1%}"),
    Column("constant_channels", "constant"),
    Column("class_spread", "class spread", "{:.3f}"),
    Column("skipped", "skipped", align="left"),
)


def statistics_table(rows, markdown=True):
    """`model_statistics` rows as a Markdown (or aligned text) table."""
    return format_table(rows, STATISTICS_COLUMNS, markdown=markdown)
