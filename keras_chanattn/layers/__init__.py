"""Attention layers, one module per family, and the registry that names them.

Every module of this package is imported below, so a block registers itself
(`@register_attention`) by living here: a new module needs no line in this file. The
explicit imports name the public classes; a new block is reached by its registry name
(`create_attention`) and added to them when it becomes part of the public API.
"""

import importlib
import pkgutil

from keras_chanattn.layers.cbam import (
    CBAM,
    ChannelAttention,
    ConvGate,
    FoldedCBAM,
    FoldedSpatialAttention,
    SpatialAttention,
    z_pool,
)
from keras_chanattn.layers.common import AttentionLayer, make_divisible
from keras_chanattn.layers.eca import EfficientChannelAttention, adaptive_kernel_size
from keras_chanattn.layers.gather_excite import FoldedGatherExcite, GatherExcite
from keras_chanattn.layers.global_context import GlobalContext, GlobalContextInference
from keras_chanattn.layers.registry import (
    create_attention,
    get_attention_class,
    list_attention,
    register_attention,
)
from keras_chanattn.layers.sge import SpatialGroupEnhance, SpatialGroupEnhanceInference
from keras_chanattn.layers.shuffle_attention import (
    ShuffleAttention,
    ShuffleAttentionInference,
    channel_shuffle,
)
from keras_chanattn.layers.squeeze_excite import SqueezeExcite
from keras_chanattn.layers.srm import FoldedStyleRecalibration, StyleRecalibration
from keras_chanattn.layers.triplet import FoldedTripletAttention, TripletAttention

__all__ = [
    "AttentionLayer",
    "CBAM",
    "ChannelAttention",
    "ConvGate",
    "EfficientChannelAttention",
    "FoldedCBAM",
    "FoldedGatherExcite",
    "FoldedSpatialAttention",
    "FoldedStyleRecalibration",
    "FoldedTripletAttention",
    "GatherExcite",
    "GlobalContext",
    "GlobalContextInference",
    "ShuffleAttention",
    "ShuffleAttentionInference",
    "SpatialAttention",
    "SpatialGroupEnhance",
    "SpatialGroupEnhanceInference",
    "SqueezeExcite",
    "StyleRecalibration",
    "TripletAttention",
    "adaptive_kernel_size",
    "channel_shuffle",
    "create_attention",
    "get_attention_class",
    "list_attention",
    "make_divisible",
    "register_attention",
    "z_pool",
]


def import_layer_modules():
    """Imports each module of this package, running its `@register_attention` decorators.

    Runs at import; call it again after adding a module to the package at run time.
    """
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


import_layer_modules()
