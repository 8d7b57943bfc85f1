"""The fine-tuning recipe: optimiser, schedule, weight-decay groups, checkpoints, tf.distribute.

`fit_classifier` trains any Keras classifier (logits out) on an `ImageData` source with
`model.fit`, resumably: an interrupted run started again with the same `out_dir` carries on
from the last finished epoch, optimiser state included.
"""

import contextlib
import dataclasses
import json
import math
import pathlib
import time

import keras

from keras_chanattn._compat.keras_graph import flatten_layers
from keras_chanattn.layers.common import AttentionLayer


@dataclasses.dataclass
class TrainConfig:
    """How to fine-tune. Every field is plain data, saved beside the checkpoints.

    Attributes:
        epochs: training epochs. Defaults to `10`.
        batch_size: global batch size (split across replicas). Defaults to `64`.
        optimizer: `"sgd"` (with Nesterov momentum) or `"adamw"`. Defaults to `"sgd"`.
        learning_rate: peak learning rate, reached after the warm-up. Defaults to `0.05`.
        momentum: SGD momentum. Defaults to `0.9`.
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
        seed: seed of shuffling, augmentation and initialisation. Defaults to `0`.
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
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"`optimizer` must be 'sgd' or 'adamw', got {self.optimizer!r}.")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("`epochs` and `batch_size` must be >= 1.")
        if self.learning_rate <= 0 or self.weight_decay < 0 or self.warmup_epochs < 0:
            raise ValueError(
                "`learning_rate` must be > 0, `weight_decay` and `warmup_epochs` >= 0."
            )
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"`label_smoothing` must be in [0, 1), got {self.label_smoothing}.")
        if self.mixed_precision not in (None, "mixed_float16", "mixed_bfloat16"):
            raise ValueError(
                "`mixed_precision` must be None, 'mixed_float16' or 'mixed_bfloat16', got "
                f"{self.mixed_precision!r}."
            )


def no_decay_variables(model, include_attention=True):
    """Variables exempt from weight decay: biases, normalisation weights and (optionally)
    every weight of the attention blocks."""
    exempt = {}
    for layer in flatten_layers(model):
        is_norm = isinstance(
            layer,
            keras.layers.BatchNormalization
            | keras.layers.LayerNormalization
            | keras.layers.GroupNormalization,
        )
        if is_norm or (include_attention and isinstance(layer, AttentionLayer)):
            exempt.update({id(v): v for v in layer.trainable_weights})
    for v in model.trainable_weights:
        if len(v.shape) <= 1 and v.name in ("bias", "beta"):
            exempt[id(v)] = v
    return list(exempt.values())


def set_synchronized_batch_norm(model, synchronized=True):
    """Sets `synchronized` on every BatchNormalization in `model` (blocks' included), so its
    statistics are reduced across replicas under a `tf.distribute` strategy. Returns the
    number of layers changed."""
    count = 0
    for layer in flatten_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = synchronized
            count += 1
        if hasattr(layer, "synchronized") and isinstance(layer, AttentionLayer):
            layer.synchronized = synchronized
    return count


def make_optimizer(config, steps_per_epoch):
    """The optimiser with a cosine schedule after a linear warm-up."""
    total = max(1, config.epochs * steps_per_epoch)
    warmup = min(config.warmup_epochs * steps_per_epoch, total - 1)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=config.learning_rate * (0.1 if warmup else 1.0),
        decay_steps=total - warmup,
        warmup_target=config.learning_rate if warmup else None,
        warmup_steps=warmup,
    )
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(
            schedule, momentum=config.momentum, nesterov=True, weight_decay=config.weight_decay
        )
    return keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay)


def compile_classifier(model, config, steps_per_epoch):
    """Compiles `model` (logits out) with the recipe's optimiser, loss and accuracy."""
    optimizer = make_optimizer(config, steps_per_epoch)
    if config.weight_decay:
        exempt = no_decay_variables(model, include_attention=not config.decay_attention_and_norm)
        if config.decay_attention_and_norm:
            exempt = [v for v in exempt if v.name in ("bias", "beta")]
        optimizer.exclude_from_weight_decay(var_list=exempt)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=config.label_smoothing
        ),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )
    return model


@contextlib.contextmanager
def op_determinism(enabled=True):
    """Runs the `with` body with TensorFlow's op determinism on when `enabled`, and puts
    the previous setting back afterwards (the public API can only switch it on)."""
    from keras_chanattn._compat import tensorflow as tf_config

    switch = enabled and not tf_config.is_op_determinism_enabled()
    if switch:
        tf_config.enable_op_determinism()
    try:
        yield
    finally:
        if switch:
            tf_config.disable_op_determinism()


STRATEGIES = ("mirrored", "multi-worker")


def distribution_strategy(name=None):
    """The `tf.distribute` strategy called `name`, for `fit_classifier(strategy=...)`.

    Args:
        name: `"mirrored"` (every local GPU), `"multi-worker"` (the workers that the
            `TF_CONFIG` environment variable names), or `None` for the default strategy.

    Returns:
        A `tf.distribute.Strategy`, or `None` for `name=None`.
    """
    import tensorflow as tf

    if name is None:
        return None
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi-worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"Unknown strategy {name!r}; known: {', '.join(STRATEGIES)}.")


class _Timer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epoch_seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_seconds.append(time.perf_counter() - self._start)


def _one_hot_pipeline(dataset, num_classes, config, training):
    import tensorflow as tf

    from keras_chanattn.data import augmentation, make_pipeline

    augment = None
    if training and config.augment:
        augment = augmentation(flip=config.flip, seed=config.seed)
    batched = make_pipeline(
        dataset, config.batch_size, shuffle=training, augment=augment, seed=config.seed
    )
    return batched.map(lambda x, y: (x, tf.one_hot(y, num_classes)))


def fit_classifier(
    build_model, data, config=None, out_dir=None, strategy=None, verbose="auto", callbacks=()
):
    """Fine-tunes a classifier with `model.fit`: the package's training entry point.

    Args:
        build_model: a function returning a new, uncompiled Keras model (logits out, input
            `data.image_shape`); it is called inside the strategy's scope.
        data: an `keras_chanattn.data.ImageData`.
        config: a `TrainConfig`. Defaults to `TrainConfig()`.
        out_dir: folder for `config.json`, the resumable backup, `last.keras` and the CSV log
            (`log.csv`). Defaults to `None` (nothing written, not resumable).
        strategy: a `tf.distribute.Strategy` (e.g. `MirroredStrategy()`), or `None` for the
            default. Defaults to `None`.
        verbose: `model.fit` verbosity (the progress bar). Defaults to `"auto"`.
        callbacks: extra Keras callbacks. Defaults to none.

    Returns:
        `(model, summary)`: the trained model and a dict with the final validation loss and
        accuracy, epochs run, steps, and seconds per epoch.
    """
    import tensorflow as tf

    config = config or TrainConfig()
    strategy = strategy or tf.distribute.get_strategy()
    with op_determinism(config.deterministic):
        return _fit(build_model, data, config, out_dir, strategy, verbose, callbacks)


def _fit(build_model, data, config, out_dir, strategy, verbose, callbacks):
    keras.utils.set_random_seed(config.seed)
    previous_policy = keras.config.dtype_policy()
    if config.mixed_precision:
        keras.config.set_dtype_policy(config.mixed_precision)
    try:
        train = _one_hot_pipeline(data.train, data.num_classes, config, training=True)
        validation = _one_hot_pipeline(data.validation, data.num_classes, config, training=False)
        steps_per_epoch = int(train.cardinality())
        if steps_per_epoch <= 0:  # unknown cardinality (e.g. filtered): count once
            steps_per_epoch = sum(1 for _ in train)
        with strategy.scope():
            model = build_model()
            if config.sync_batch_norm:
                set_synchronized_batch_norm(model, True)
            compile_classifier(model, config, steps_per_epoch)
    finally:
        keras.config.set_dtype_policy(previous_policy)

    timer = _Timer()
    all_callbacks = [timer, *callbacks]
    if out_dir is not None:
        out = pathlib.Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))
        all_callbacks += [
            keras.callbacks.BackupAndRestore(str(out / "backup")),
            keras.callbacks.CSVLogger(str(out / "log.csv"), append=True),
            keras.callbacks.ModelCheckpoint(str(out / "last.keras")),
        ]
    history = model.fit(
        train,
        validation_data=validation,
        epochs=config.epochs,
        callbacks=all_callbacks,
        verbose=verbose,
        shuffle=False,  # the training pipeline shuffles (a tf.data.Dataset ignores it)
    )
    logs = history.history
    summary = {
        "epochs_run": len(logs.get("loss", [])),
        "steps": int(model.optimizer.iterations.numpy()),
        "val_loss": float(logs["val_loss"][-1]) if logs.get("val_loss") else math.nan,
        "val_accuracy": float(logs["val_accuracy"][-1]) if logs.get("val_accuracy") else math.nan,
        "seconds_per_epoch": (
            sum(timer.epoch_seconds) / len(timer.epoch_seconds) if timer.epoch_seconds else math.nan
        ),
        "replicas": strategy.num_replicas_in_sync,
    }
    return model, summary


def _batch_norm_layers(model):
    return [
        layer
        for layer in flatten_layers(model)
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
    ]


def _image_batches(images, batch_size):
    """Yields float32 NumPy batches of at most `batch_size` from an array, an ImageData, or a
    dataset of images or `(image, label)` tuples (batched or not)."""
    import numpy as np

    from keras_chanattn.data import ImageData
    from keras_chanattn.images import iter_batches

    if isinstance(images, ImageData):
        images = images.train
    chunks = [np.asarray(images)] if isinstance(images, np.ndarray) else iter_batches(images)
    pending, count, yielded = [], 0, False
    for chunk in chunks:
        chunk = chunk[None] if chunk.ndim == 3 else chunk
        if chunk.ndim != 4:
            raise ValueError(
                f"`images` must be NHWC images, got an array of shape {tuple(chunk.shape)}."
            )
        pending.append(chunk.astype("float32"))
        count += len(chunk)
        while count >= batch_size:
            joined = np.concatenate(pending)
            yielded = True
            yield joined[:batch_size]
            pending, count = [joined[batch_size:]], count - batch_size
    if count and not yielded:  # a short last batch would weigh as much as a full one
        yield np.concatenate(pending)


def recalibrate_batch_norm(model, images, batch_size=32, max_batches=None):
    """Re-estimates the moving mean and variance of every BatchNormalization in `model`.

    After a short fine-tune (or after inserting attention blocks into a trained network) the
    moving statistics lag the weights: with the default momentum 0.99 an epoch of 43 steps
    keeps 65% of the old statistics, and validation accuracy falls far below training
    accuracy. This pass runs the model in training mode over `images` and sets each moving
    mean and variance to the plain average of the batch statistics it saw. Only the moving
    statistics change: no weight is trained, and BatchNorm layers that are frozen
    (`trainable=False`) keep theirs. Other layers run in training mode too (Dropout drops,
    as it did while the statistics were first gathered).

    Args:
        model: a Keras model; BatchNorm layers inside attention blocks and nested models
            are included.
        images: NHWC images without augmentation: a NumPy array, a `tf.data.Dataset` of
            images or `(image, label)` tuples (batched or not), or an
            `keras_chanattn.data.ImageData` (its training split).
        batch_size: images per batch; batch statistics need several. A last batch short
            of `batch_size` is left out (it would weigh as much as a full one) unless it is
            the only one. Defaults to `32`.
        max_batches: use at most this many batches. Defaults to `None` (all).

    Returns:
        The number of BatchNorm layers recalibrated.

    Raises:
        ValueError: `model` has no trainable BatchNorm layer, `images` holds none, or
            `batch_size` < 2.
    """
    if batch_size < 2:
        raise ValueError(f"`batch_size` must be >= 2 (batch statistics), got {batch_size}.")
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"`max_batches` must be >= 1 or None, got {max_batches}.")
    layers = _batch_norm_layers(model)
    if not layers:
        raise ValueError(
            "The model has no trainable BatchNormalization layer: nothing to recalibrate."
        )
    momenta = [layer.momentum for layer in layers]
    statistics = [(layer.moving_mean, layer.moving_variance) for layer in layers]
    before = [(mean.numpy(), variance.numpy()) for mean, variance in statistics]
    seen = 0
    try:
        for batch in _image_batches(images, batch_size):
            seen += 1
            for layer in layers:  # a running average: batch k weighs 1/k
                layer.momentum = 1.0 - 1.0 / seen
            model(batch, training=True)  # eager: each call reads the momentum set above
            if max_batches is not None and seen >= max_batches:
                break
        if not seen:
            raise ValueError("`images` holds no images: nothing to recalibrate with.")
    except BaseException:  # an error or an interrupt leaves the statistics as they were
        for (mean, variance), (old_mean, old_variance) in zip(statistics, before, strict=True):
            mean.assign(old_mean)
            variance.assign(old_variance)
        raise
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
    return len(layers)
