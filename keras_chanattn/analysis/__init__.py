"""Analysis of trained attention blocks: gates, channel-weight statistics, Grad-CAM, their
figures, and `analyze_models`, the report comparing models (`chanattn analyze`)."""

from keras_chanattn.analysis.figures import (
    correlation_heatmaps,
    gate_histograms,
    top_activating_grid,
)
from keras_chanattn.analysis.gates import attention_layers, channel_weights, collect_gates
from keras_chanattn.analysis.gradcam import (
    GradCAMResult,
    cam_from_gradients,
    grad_cam,
    last_feature_layer,
    pointing_game,
    pointing_hits,
)
from keras_chanattn.analysis.overlay import overlay
from keras_chanattn.analysis.report import analyze_models
from keras_chanattn.analysis.stats import (
    as_weights,
    channel_correlation,
    channel_statistics,
    class_mean_gates,
    constant_channels,
    distinct_images,
    effective_rank,
    gate_distribution,
    mean_abs_offdiagonal,
    model_statistics,
    statistics_table,
    top_activating,
)

__all__ = [
    "analyze_models",
    "attention_layers",
    "channel_weights",
    "collect_gates",
    "GradCAMResult",
    "cam_from_gradients",
    "grad_cam",
    "last_feature_layer",
    "overlay",
    "pointing_game",
    "pointing_hits",
    "as_weights",
    "channel_correlation",
    "channel_statistics",
    "class_mean_gates",
    "constant_channels",
    "correlation_heatmaps",
    "distinct_images",
    "effective_rank",
    "gate_distribution",
    "gate_histograms",
    "mean_abs_offdiagonal",
    "model_statistics",
    "statistics_table",
    "top_activating",
    "top_activating_grid",
]
