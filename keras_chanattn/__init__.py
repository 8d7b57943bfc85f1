"""keras-chanattn: channel attention blocks for Keras 3 CNNs, built to export to phones."""

from keras_chanattn import native_logs

if native_logs.started_as_command():  # before TensorFlow is imported below
    native_logs.start()

from keras_chanattn import layers, models
from keras_chanattn.layers import (
    CBAM,
    ChannelAttention,
    EfficientChannelAttention,
    FoldedCBAM,
    FoldedGatherExcite,
    FoldedSpatialAttention,
    FoldedStyleRecalibration,
    FoldedTripletAttention,
    GatherExcite,
    GlobalContext,
    GlobalContextInference,
    ShuffleAttention,
    ShuffleAttentionInference,
    SpatialAttention,
    SpatialGroupEnhance,
    SpatialGroupEnhanceInference,
    SqueezeExcite,
    StyleRecalibration,
    TripletAttention,
    create_attention,
    list_attention,
)
from keras_chanattn.models import add_attention

__version__ = "0.1.0"

__all__ = [
    "CBAM",
    "ChannelAttention",
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
    "add_attention",
    "create_attention",
    "layers",
    "list_attention",
    "models",
]
