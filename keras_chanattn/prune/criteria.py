"""Pruning criteria: channel scores from the gates, the filters' L1 norms, or at random.

Each `prune_by_*` scores every prunable block's channels and hands the scores to
`prune_by_scores`, so the criteria differ only in their scores and compare fairly on
the same model, ratios and constraints.
"""

import numpy as np

from keras_chanattn.analysis.gates import collect_gates
from keras_chanattn.prune.plan import check_prune_ratio, plan_pruning
from keras_chanattn.prune.rebuild import prune_channels
from keras_chanattn.prune.sites import prune_sites


def prune_by_scores(
    model, scores, ratio, min_channels=8, divisor=8, per_block_ratio=None, name=None
):
    """A NEW, smaller functional model keeping each block's highest-scored channels.

    Args:
        model: a functional model with attention blocks at prunable sites (between two
            convolutions, see `keras_chanattn.prune`); it is left unchanged.
        scores: `{block name: (C,) array}`, higher is more important.
        ratio: the fraction of each block's channels to remove, in [0, 1).
        min_channels: no block keeps fewer channels (unless it has fewer). Defaults to `8`.
        divisor: kept counts are multiples of it (fast int8 kernels). Defaults to `8`.
        per_block_ratio: `{block name: ratio}` overriding `ratio` for those blocks.
        name: the new model's name. Defaults to the original's with `"_pruned"`.

    Returns:
        An ordinary `keras.Model` with the channels removed (no mask): the producing
        convolutions lose filters, the channel-wise layers and blocks their entries, the
        consuming convolutions input channels.

    Raises:
        ValueError: every bad input, before any work (see `plan_pruning`).
    """
    keep = plan_pruning(model, scores, ratio, min_channels, divisor, per_block_ratio)
    return prune_channels(model, keep, name=name)


def attention_scores(model, images, batch_size=32):
    """`{block name: (C,)}`: each prunable block's mean channel gate over `images`.

    Blocks with a per-channel gate (`"channel"`) average it over the images; a
    Gather-Excite with a finite extent averages its `"tiles"` over images and tiles.
    """
    sites, _ = prune_sites(model)
    gates = collect_gates(model, images, batch_size=batch_size)
    scores = {}
    for name in sites:
        block_gates = gates.get(name, {})
        gate = block_gates.get("channel", block_gates.get("tiles"))
        if gate is None:
            raise ValueError(
                f"Block {name!r} has no per-channel gate (its gates: {sorted(block_gates)}), "
                "so attention cannot rank its channels. Use prune_by_l1 or prune_by_random."
            )
        scores[name] = gate.reshape(-1, gate.shape[-1]).mean(axis=0)
    return scores


def l1_scores(model):
    """`{block name: (C,)}`: the L1 norm of each channel's filter in the convolution
    nearest before the block (the depthwise one in MobileNetV2)."""
    sites, _ = prune_sites(model)
    scores = {}
    for name, site in sites.items():
        kernel = np.asarray(model.get_layer(site.scoring_conv).get_weights()[0])
        if kernel.shape[-1] == site.channels:  # Conv2D (kh, kw, in, out)
            scores[name] = np.abs(kernel).sum(axis=(0, 1, 2))
        else:  # DepthwiseConv2D (kh, kw, C, 1)
            scores[name] = np.abs(kernel).sum(axis=(0, 1, 3))
    return scores


def random_scores(model, seed=0):
    """`{block name: (C,)}` of uniform random scores from `seed`."""
    sites, _ = prune_sites(model)
    rng = np.random.default_rng(seed)
    return {name: rng.random(site.channels) for name, site in sites.items()}


def prune_by_attention(model, images, ratio, batch_size=32, **kwargs):
    """`prune_by_scores` with each block's mean channel gate over `images` as the score.

    `images`: a NumPy batch `(N, H, W, C)` the model takes (a few hundred training
    images). `**kwargs`: `min_channels`, `divisor`, `per_block_ratio`, `name`.
    """
    check_prune_ratio(ratio)
    prune_sites(model)  # refuse a model without prunable blocks before running images
    return prune_by_scores(model, attention_scores(model, images, batch_size), ratio, **kwargs)


def prune_by_l1(model, ratio, **kwargs):
    """`prune_by_scores` with the L1 norms of the nearest producing filters as the score."""
    check_prune_ratio(ratio)
    return prune_by_scores(model, l1_scores(model), ratio, **kwargs)


def prune_by_random(model, ratio, seed=0, **kwargs):
    """`prune_by_scores` with random scores from `seed`: the baseline a criterion must beat."""
    check_prune_ratio(ratio)
    return prune_by_scores(model, random_scores(model, seed), ratio, **kwargs)
