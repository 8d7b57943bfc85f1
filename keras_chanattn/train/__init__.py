"""Training: the fine-tuning recipe (`fit_classifier`), its settings (`TrainConfig`) and
BatchNorm recalibration.

`fit_classifier` trains any Keras classifier (logits out) on an `ImageData` source with
`model.fit`, resumably; see `keras_chanattn.train.recipe`.
"""

from keras_chanattn.train.batch_norm import recalibrate_batch_norm
from keras_chanattn.train.config import TrainConfig
from keras_chanattn.train.recipe import (
    STRATEGIES,
    NonFiniteLossError,
    compile_classifier,
    distribution_strategy,
    fit_classifier,
    make_optimizer,
    no_decay_variables,
    op_determinism,
    set_synchronized_batch_norm,
)

__all__ = [
    "STRATEGIES",
    "NonFiniteLossError",
    "TrainConfig",
    "compile_classifier",
    "distribution_strategy",
    "fit_classifier",
    "make_optimizer",
    "no_decay_variables",
    "op_determinism",
    "recalibrate_batch_norm",
    "set_synchronized_batch_norm",
]
