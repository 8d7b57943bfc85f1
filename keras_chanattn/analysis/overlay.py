"""Heatmaps (Grad-CAM maps) drawn over their images, as a PNG grid (matplotlib, Agg)."""

import pathlib

import numpy as np


def overlay(images, heatmaps, path=None, alpha=0.5, columns=8, cmap="jet", titles=None):
    """A grid of `images` with `heatmaps` drawn over them; written as a PNG to `path`.

    Each image is scaled to `[0, 1]` (min to max) for display; each heatmap is resized
    bilinearly to its image's size and scaled to `[0, 1]`, so `GradCAMResult.maps` and
    `.upsampled` both work.

    Args:
        images: `(N, H, W, C)` with 1, 3 or 4 channels, or grey `(N, H, W)`.
        heatmaps: `(N, h, w)`.
        path: the PNG file to write (its folder must exist). Defaults to `None`: the
            figure is returned instead of written.
        alpha: the heatmaps' opacity, in `[0, 1]`. Defaults to `0.5`.
        columns: images per row. Defaults to `8`.
        cmap: a matplotlib colormap name for the heatmaps. Defaults to `"jet"`.
        titles: `N` strings written above the images (e.g. class names). Defaults to `None`.

    Returns:
        `path` as a `pathlib.Path` once written; the `matplotlib.figure.Figure` when `path`
        is `None`.

    Raises:
        ValueError: images and heatmaps of other ranks or counts, a bad `alpha`,
            `columns`, `cmap` or `titles`, or a `path` whose folder does not exist.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    images, heatmaps = _check(images, heatmaps, alpha, columns, titles)
    if cmap not in colormaps:
        raise ValueError(f"cmap {cmap!r} is not a matplotlib colormap, e.g. 'jet' or 'viridis'.")
    if path is not None:
        path = pathlib.Path(path)
        if not path.parent.is_dir():
            raise ValueError(f"Cannot write {str(path)!r}: folder {str(path.parent)!r} is missing.")
    count, height, width = images.shape[:3]
    heatmaps = _resize(heatmaps, (height, width))
    rows = -(-count // columns)
    cols = min(columns, count)
    figure = Figure(figsize=(1.6 * cols, 1.6 * rows + (0.25 * rows if titles else 0)))
    FigureCanvasAgg(figure)
    for index in range(count):
        axes = figure.add_subplot(rows, cols, index + 1)
        shown = images[index] if images.shape[-1] > 1 else images[index, ..., 0]
        axes.imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0.0, vmax=1.0)
        axes.imshow(heatmaps[index], cmap=cmap, alpha=alpha, vmin=0.0, vmax=1.0)
        axes.set_axis_off()
        if titles:
            axes.set_title(str(titles[index]), fontsize=8)
    figure.tight_layout()
    if path is None:
        return figure
    figure.savefig(path, format="png", dpi=100)
    return path


def _check(images, heatmaps, alpha, columns, titles):
    """`(images scaled to [0, 1] as (N, H, W, C), heatmaps as float (N, h, w))`."""
    images = np.asarray(images, dtype="float64")
    heatmaps = np.asarray(heatmaps, dtype="float64")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4) or len(images) == 0:
        raise ValueError(
            "images must be (N, H, W, C) with 1, 3 or 4 channels, or grey (N, H, W); got "
            f"shape {images.shape}."
        )
    if heatmaps.ndim != 3 or len(heatmaps) != len(images):
        raise ValueError(
            f"heatmaps must be (N, h, w) with one map per image ({len(images)}), got shape "
            f"{heatmaps.shape}. Pass GradCAMResult.maps or .upsampled."
        )
    if not (np.isfinite(images).all() and np.isfinite(heatmaps).all()):
        raise ValueError("images and heatmaps must be finite (no NaN or infinity).")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}.")
    if isinstance(columns, bool) or not isinstance(columns, (int, np.integer)) or columns < 1:
        raise ValueError(f"columns must be a positive integer, got {columns!r}.")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"titles must hold one string per image ({len(images)}).")
    return _unit(images, axes=(1, 2, 3)), heatmaps


def _unit(array, axes):
    """`array` scaled to `[0, 1]` over `axes` (min to max); constant slices give zeros."""
    low = array.min(axis=axes, keepdims=True)
    span = array.max(axis=axes, keepdims=True) - low
    return np.where(span > 0, (array - low) / np.where(span > 0, span, 1.0), 0.0)


def _resize(heatmaps, size):
    """Heatmaps resized bilinearly to `size` `(H, W)` and scaled to `[0, 1]` each."""
    if heatmaps.shape[1:] != tuple(size):
        import keras

        resized = keras.ops.image.resize(
            heatmaps[..., None].astype("float32"), size, interpolation="bilinear"
        )
        heatmaps = keras.ops.convert_to_numpy(resized)[..., 0].astype("float64")
    return _unit(heatmaps, axes=(1, 2))
