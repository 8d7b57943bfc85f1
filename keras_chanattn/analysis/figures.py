"""Figures of channel weights: correlation heatmaps, gate histograms, top-activating images.

Each function draws with matplotlib's Agg canvas (no pyplot state, no display needed),
writes one PNG at exactly the path it is given, creating missing parent folders and
replacing an older figure there, and returns that path as a string.
"""

import os

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from keras_chanattn.analysis.stats import (
    as_weights,
    distinct_images,
    gate_distribution,
    mean_abs_offdiagonal,
)


def _figure(width, height):
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png_path(path):
    """`path` as a string ending in .png, or a ValueError before anything is drawn."""
    path = os.fspath(path)
    if not path.lower().endswith(".png"):
        raise ValueError(f"figures are written as PNG: give a path ending in .png, got {path!r}.")
    return path


def _save(figure, path):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def _panels(panels, kind):
    if not isinstance(panels, dict) or not panels:
        raise ValueError(f"pass a non-empty dict {{label: {kind}}}, got {panels!r:.80}.")
    return panels


def correlation_heatmaps(correlations, path, title=None):
    """Heatmaps of channel correlation matrices side by side, on one colour scale [-1, 1].

    The SRM paper's SE-vs-SRM figure: a grid pattern shows groups of channels switched
    together. Each panel's title gives its mean |off-diagonal| correlation; NaN entries
    (constant channels) are grey.

    Args:
        correlations: dict {label: (C, C) matrix from `channel_correlation`}; C may differ.
        path: the .png file to write.
        title: figure title. Defaults to none.
    """
    path = _png_path(path)
    panels = _panels(correlations, "(C, C) correlation")
    matrices = {}
    for label, corr in panels.items():
        corr = np.asarray(corr, dtype=np.float64)
        if corr.ndim != 2 or corr.shape[0] != corr.shape[1]:
            raise ValueError(
                f"correlation {label!r} must be a square (C, C) matrix, got {corr.shape}; pass "
                "the output of channel_correlation."
            )
        matrices[label] = corr
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="0.75")
    figure = _figure(3.6 * len(matrices) + 1.0, 4.0)
    axes_list = figure.subplots(1, len(matrices), squeeze=False)[0]
    for axes, (label, corr) in zip(axes_list, matrices.items(), strict=True):
        image = axes.imshow(
            np.ma.masked_invalid(corr), cmap=cmap, vmin=-1.0, vmax=1.0, interpolation="nearest"
        )
        offdiagonal = mean_abs_offdiagonal(corr)
        axes.set_title(f"{label}\nmean |off-diagonal| = {offdiagonal:.3f}", fontsize=10)
        axes.set_xlabel("channel")
        axes.set_ylabel("channel")
    figure.colorbar(image, ax=list(axes_list), shrink=0.8, label="Pearson correlation")
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def gate_histograms(weights_by_label, path, low=0.1, high=0.9, bins=20):
    """Histograms of gate values, one panel per label, sharing their bins and y scale.

    Dashed lines mark `low` and `high`; the panel title gives the fractions of values near
    0 (<= low) and near 1 (>= high), as `gate_distribution` computes them.

    Args:
        weights_by_label: dict {label: (N, C) weights}.
        path: the .png file to write.
        low, high, bins: as in `gate_distribution`. Default to 0.1, 0.9 and 20.
    """
    path = _png_path(path)
    panels = _panels(weights_by_label, "(N, C) weights")
    arrays = {label: as_weights(w, name=f"weights {label!r}") for label, w in panels.items()}
    shares = {label: gate_distribution(a, low, high, bins) for label, a in arrays.items()}
    lowest = min(0.0, *(float(a.min()) for a in arrays.values()))
    highest = max(1.0, *(float(a.max()) for a in arrays.values()))
    edges = np.linspace(lowest, highest, int(bins) + 1)
    figure = _figure(3.6 * len(arrays) + 0.5, 3.4)
    axes_list = figure.subplots(1, len(arrays), squeeze=False, sharey=True)[0]
    for k, (axes, (label, array)) in enumerate(zip(axes_list, arrays.items(), strict=True)):
        share = shares[label]
        axes.hist(array.ravel(), bins=edges, weights=np.full(array.size, 1.0 / array.size))
        for line in (low, high):
            axes.axvline(line, color="black", linestyle="--", linewidth=0.8)
        axes.set_title(
            f"{label}\nnear 0: {share['near_zero']:.1%}   near 1: {share['near_one']:.1%}",
            fontsize=10,
        )
        axes.set_xlabel("gate value")
        if k == 0:
            axes.set_ylabel("fraction of values")
    return _save(figure, path)


def _display(image):
    """One image scaled to [0, 1] for display: its own min to its own max (flat: mid-grey)."""
    image = image.astype(np.float64)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    span = image.max() - image.min()
    return (image - image.min()) / span if span > 0 else np.full_like(image, 0.5)


def _images(images):
    images = np.asarray(images)
    if not np.issubdtype(images.dtype, np.number):
        raise TypeError(f"images must be numeric, got dtype {images.dtype}.")
    grey = images.ndim == 3
    colour = images.ndim == 4 and images.shape[-1] in (1, 3)
    if not (grey or colour) or not np.all(np.isfinite(images)):
        raise ValueError(
            f"images must be finite, shape (N, H, W), (N, H, W, 1) or (N, H, W, 3); got shape "
            f"{images.shape}."
        )
    return images


def _grid_channels(channels, max_channels, count):
    """The channels (rows) `top_activating_grid` draws."""
    if channels is None:
        return list(range(min(count, max_channels)))
    channels = [int(c) for c in np.atleast_1d(channels)]
    if not channels or any(c < 0 or c >= count for c in channels):
        raise ValueError(f"channels must be non-empty indices in [0, {count}), got {channels}.")
    if len(channels) > max_channels:
        raise ValueError(
            f"{len(channels)} channels asked but max_channels={max_channels}; raise "
            "max_channels or pass fewer channels."
        )
    return channels


def top_activating_grid(images, indices, path, channels=None, max_channels=16):
    """The top-activating images of each channel: one row per channel, one column per rank.

    The SRM paper's diversity figure. Each image is scaled from its own minimum to its own
    maximum, so any value range (uint8, [0, 1], standardised) displays. The title gives the
    number of distinct images over all channels of `indices`.

    Args:
        images: (N, H, W), (N, H, W, 1) or (N, H, W, 3), the images the weights were
            collected on, in the same order.
        indices: (C, k) from `top_activating`.
        path: the .png file to write.
        channels: channel indices to draw. Defaults to the first `max_channels`.
        max_channels: most rows drawn. Defaults to 16.
    """
    path = _png_path(path)
    images = _images(images)
    count = distinct_images(indices)
    indices = np.asarray(indices)
    if indices.size == 0:
        raise ValueError(f"indices is empty (shape {indices.shape}); pass top_activating's.")
    if indices.min() < 0 or indices.max() >= images.shape[0]:
        raise ValueError(
            f"indices refer to images up to {indices.max()} but there are {images.shape[0]} "
            "images; pass the images the weights were collected on."
        )
    rows = _grid_channels(channels, max_channels, indices.shape[0])
    k = indices.shape[1]
    figure = _figure(1.1 * k + 1.0, 1.1 * len(rows) + 0.8)
    grid = figure.subplots(len(rows), k, squeeze=False)
    for row, channel in enumerate(rows):
        for rank in range(k):
            axes = grid[row, rank]
            image_index = int(indices[channel, rank])
            axes.imshow(_display(images[image_index]), cmap="gray", vmin=0.0, vmax=1.0)
            axes.set_xticks([])
            axes.set_yticks([])
            axes.set_title(f"#{image_index}", fontsize=7)
        grid[row, 0].set_ylabel(f"ch {channel}", fontsize=8)
    figure.suptitle(
        f"Top-{k} images per channel: {count} distinct over {indices.shape[0]} channels",
        fontsize=10,
    )
    return _save(figure, path)
