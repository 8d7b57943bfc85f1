"""The fine-tuning recipe's settings: `TrainConfig`, plain data checked on creation."""

import dataclasses
import math
import numbers


@dataclasses.dataclass
class TrainConfig:
    """How to fine-tune. Every field is plain data, saved beside the checkpoints, and is
    checked on creation (type, finiteness, range): a bad one raises ValueError naming it.

    Attributes:
        epochs: training epochs. Defaults to `10`.
        batch_size: global batch size (split across replicas). Defaults to `64`.
        optimizer: `"sgd"` (with Nesterov momentum) or `"adamw"`. Defaults to `"sgd"`.
        learning_rate: peak learning rate, reached after the warm-up. Defaults to `0.05`.
        momentum: SGD momentum, in [0, 1). Defaults to `0.9`.
        weight_decay: decoupled weight decay. Defaults to `5e-4`.
        decay_attention_and_norm: apply weight decay to the attention blocks' own weights
            and to normalisation layers too; `False` (the default) exempts them, as the SRM
            reference does, along with every bias.
        warmup_epochs: linear warm-up length. Defaults to `1`.
        label_smoothing: label smoothing of the cross-entropy. Defaults to `0.1`.
        augment: random translate/zoom (and flips when `flip`) on training batches.
            Defaults to `True`.
        flip: random horizontal flips in the augmentation. Defaults to `False` (safe for
            digits and text; turn on for natural images).
        mixed_precision: train under `mixed_float16` (on GPU) or `mixed_bfloat16`; `None`
            for float32. Defaults to `None`.
        sync_batch_norm: synchronise BatchNorm statistics across replicas. Defaults to `False`.
        seed: seed of shuffling, augmentation and initialisation, in [0, 2**32 - 1].
            Defaults to `0`.
        deterministic: run with TensorFlow's op determinism on (restored afterwards), so
            the same seed gives the same weights on the same machine and software:
            threaded reductions and the parallel augmentation otherwise differ from run to
            run. The augmentation's random ops then run in order, which TensorFlow documents
            as possibly slower; GPU ops without a deterministic kernel raise. Defaults to
            `False`.
    """

    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "sgd"
    learning_rate: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    decay_attention_and_norm: bool = False
    warmup_epochs: int = 1
    label_smoothing: float = 0.1
    augment: bool = True
    flip: bool = False
    mixed_precision: str | None = None
    sync_batch_norm: bool = False
    seed: int = 0
    deterministic: bool = False

    def __post_init__(self):
        for name in _FLAGS:
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"`{name}` must be True or False, got {value!r}.")
        for name, (integer, valid, test) in _NUMBERS.items():
            setattr(self, name, _checked_number(name, getattr(self, name), integer, valid, test))
        if not isinstance(self.optimizer, str) or self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"`optimizer` must be 'sgd' or 'adamw', got {self.optimizer!r}.")
        if self.mixed_precision not in (None, "mixed_float16", "mixed_bfloat16"):
            raise ValueError(
                "`mixed_precision` must be None, 'mixed_float16' or 'mixed_bfloat16', got "
                f"{self.mixed_precision!r}."
            )


_FLAGS = ("decay_attention_and_norm", "augment", "flip", "sync_batch_norm", "deterministic")

# field: (integer?, the valid range in words, its test)
_NUMBERS = {
    "epochs": (True, ">= 1", lambda v: v >= 1),
    "batch_size": (True, ">= 1", lambda v: v >= 1),
    "learning_rate": (False, "> 0", lambda v: v > 0),
    "momentum": (False, "in [0, 1)", lambda v: 0 <= v < 1),
    "weight_decay": (False, ">= 0", lambda v: v >= 0),
    "warmup_epochs": (True, ">= 0", lambda v: v >= 0),
    "label_smoothing": (False, "in [0, 1)", lambda v: 0 <= v < 1),
    "seed": (True, "in [0, 2**32 - 1]", lambda v: 0 <= v < 2**32),
}


def _checked_number(name, value, integer, valid, test):
    """`value` as a plain `int` or `float` (so the config stays JSON data), or a ValueError
    naming the field, the value and the valid range."""
    kind = numbers.Integral if integer else numbers.Real
    ok = isinstance(value, kind) and not isinstance(value, bool)
    ok = ok and (integer or math.isfinite(value)) and test(value)
    if not ok:
        what = "an integer" if integer else "a finite number"
        raise ValueError(f"`{name}` must be {what} {valid}, got {value!r}.")
    return int(value) if integer else float(value)
