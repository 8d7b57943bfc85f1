"""Attention-guided channel pruning: a physically smaller model without low-ranked channels.

See `docs/pruning.md`. Prunable: attention blocks between two convolutions (ResNet blocks
at `"3x3"`, MobileNetV2's default position), whose block declares `slice_channels`.
"""

from keras_chanattn.prune.criteria import (
    attention_scores,
    l1_scores,
    prune_by_attention,
    prune_by_l1,
    prune_by_random,
    prune_by_scores,
    random_scores,
)
from keras_chanattn.prune.plan import kept_channels, plan_pruning
from keras_chanattn.prune.rebuild import prune_channels
from keras_chanattn.prune.sites import PruneSite, find_prune_sites

__all__ = [
    "PruneSite",
    "attention_scores",
    "find_prune_sites",
    "kept_channels",
    "l1_scores",
    "plan_pruning",
    "prune_by_attention",
    "prune_by_l1",
    "prune_by_random",
    "prune_by_scores",
    "prune_channels",
    "random_scores",
]
