"""Which channels each prunable block keeps: counts under constraints, ranking by scores.

Every block keeps the highest-scored `k` of its `C` channels, `k` from its ratio:
`C * (1 - ratio)` rounded to a multiple of `divisor`, at least `divisor` and
`min_channels`, at most `C` (ratio 0 keeps all `C`).
"""

import math
import numbers

import numpy as np

from keras_chanattn.layers.common import check_positive_int
from keras_chanattn.prune.sites import prune_sites


def check_prune_ratio(ratio, name="ratio"):
    """`ratio` as a float in [0, 1), or a clear `ValueError`."""
    valid = (
        isinstance(ratio, numbers.Real)
        and not isinstance(ratio, bool)
        and math.isfinite(ratio)
        and 0.0 <= ratio < 1.0
    )
    if not valid:
        raise ValueError(
            f"`{name}` is the fraction of each block's channels to remove, a number in "
            f"[0, 1), got {ratio!r}. E.g. ratio=0.5 removes half of them."
        )
    return float(ratio)


def kept_channels(channels, ratio, min_channels=8, divisor=8):
    """How many of `channels` a block keeps at `ratio` (see the module docstring)."""
    if ratio == 0:
        return channels
    k = max(divisor, int(channels * (1.0 - ratio) / divisor + 0.5) * divisor)
    return min(channels, max(k, min_channels))


def _block_ratios(sites, ratio, per_block_ratio, refused):
    """`{block: ratio}`: the global ratio, overridden per block."""
    ratios = {name: check_prune_ratio(ratio) for name in sites}
    if per_block_ratio is None:
        return ratios
    if not isinstance(per_block_ratio, dict):
        raise ValueError(
            f"`per_block_ratio` must be a dict {{block name: ratio}}, got {per_block_ratio!r}."
        )
    for name, value in per_block_ratio.items():
        if name not in sites:
            why = refused.get(name, "no attention block has that name")
            raise ValueError(
                f"per_block_ratio names {name!r}, which is not prunable: {why}. Prunable "
                f"blocks: {', '.join(sites)}."
            )
        ratios[name] = check_prune_ratio(value, f"per_block_ratio[{name!r}]")
    return ratios


def _check_scores(sites, scores):
    """`{block: float64 (C,)}` from `scores`, or a clear `ValueError`."""
    if not isinstance(scores, dict):
        raise ValueError(f"`scores` must be a dict {{block name: (C,) array}}, got {scores!r}.")
    unknown = sorted(set(scores) - set(sites))
    if unknown:
        raise ValueError(
            f"`scores` names blocks that are not prunable: {unknown}. Prunable blocks: "
            f"{', '.join(sites)}."
        )
    checked = {}
    for name, site in sites.items():
        if name not in scores:
            raise ValueError(f"`scores` has no entry for the prunable block {name!r}.")
        array = np.asarray(scores[name], dtype=np.float64)
        if array.shape != (site.channels,) or not np.all(np.isfinite(array)):
            raise ValueError(
                f"`scores[{name!r}]` must hold {site.channels} finite numbers (one per "
                f"channel), got shape {array.shape}."
            )
        checked[name] = array
    return checked


def plan_pruning(model, scores, ratio, min_channels=8, divisor=8, per_block_ratio=None):
    """`{block: kept channel indices (sorted)}`: each block's highest-scored channels.

    Args:
        model: a functional model with prunable blocks (see `keras_chanattn.prune`).
        scores: `{block name: (C,) array}`, higher is more important; every prunable block
            needs one. Ties keep the lower index.
        ratio: the fraction of each block's channels to remove, in [0, 1).
        min_channels: no block keeps fewer (unless it has fewer). Defaults to `8`.
        divisor: kept counts are multiples of it (fast int8 kernels). Defaults to `8`.
        per_block_ratio: `{block name: ratio}` overriding `ratio` for those blocks.

    Raises:
        ValueError: a bad ratio or constraint, scores missing or of the wrong shape, a
            prunable block that cannot be sliced, or constraints under which no channel
            would be removed at a ratio above 0.
    """
    min_channels = check_positive_int("min_channels", min_channels)
    divisor = check_positive_int("divisor", divisor)
    check_prune_ratio(ratio)
    sites, refused = prune_sites(model)
    ratios = _block_ratios(sites, ratio, per_block_ratio, refused)
    scores = _check_scores(sites, scores)
    for name in sites:
        block = model.get_layer(name)
        if block.slice_refusal is not None:
            block.slice_channels(np.arange(1))  # raises the block's own error
    plan = {}
    for name, site in sites.items():
        k = kept_channels(site.channels, ratios[name], min_channels, divisor)
        order = np.argsort(-scores[name], kind="stable")
        plan[name] = np.sort(order[:k])
    if any(r > 0 for r in ratios.values()) and all(
        len(plan[name]) == site.channels for name, site in sites.items()
    ):
        widths = ", ".join(f"{name}: {site.channels}" for name, site in sites.items())
        raise ValueError(
            f"No channel can be removed at these ratios with min_channels={min_channels} "
            f"and divisor={divisor} (block widths {widths}): every block would keep all its "
            "channels. Raise the ratio, or lower min_channels or divisor."
        )
    return plan
