"""keras-chanattn: channel attention blocks for Keras 3 CNNs, built to export to phones."""

from keras_chanattn import layers
from keras_chanattn.layers import (
    EfficientChannelAttention,
    FoldedStyleRecalibration,
    ShuffleAttention,
    SqueezeExcite,
    StyleRecalibration,
    create_attention,
    list_attention,
)

__version__ = "0.1.0"

__all__ = [
    "EfficientChannelAttention",
    "FoldedStyleRecalibration",
    "ShuffleAttention",
    "SqueezeExcite",
    "StyleRecalibration",
    "create_attention",
    "layers",
    "list_attention",
]
