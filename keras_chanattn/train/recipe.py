"""The fine-tuning recipe: optimiser, schedule, weight-decay groups, checkpoints, tf.distribute.

`fit_classifier` trains any Keras classifier (logits out) on an `ImageData` source with
`model.fit`, resumably: an interrupted run started again with the same `out_dir` and config
carries on from the last finished epoch, optimiser state included. A finished run there is
kept unless `overwrite=True`, and a loss that turns NaN stops training with an error.
"""

import contextlib
import dataclasses
import math
import os
import shutil
import time

import keras

from keras_chanattn._compat.keras_distribute import prepare_multi_worker_fit
from keras_chanattn._compat.keras_graph import flatten_layers
from keras_chanattn.backend import backend, require_tensorflow
from keras_chanattn.layers.common import AttentionLayer
from keras_chanattn.train.config import TrainConfig
from keras_chanattn.train.run_folder import (
    BACKUP,
    STAGING,
    SUMMARY,
    plan_out_dir,
    private_folder,
    swap_in,
    write_json,
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
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as error:  # TensorFlow had run an op already
            raise RuntimeError(
                "The multi-worker strategy must be created before TensorFlow runs anything "
                "(collective ops are configured at program start-up): call "
                "distribution_strategy('multi-worker') before loading data or building a "
                f"model. TensorFlow said: {error}"
            ) from error
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
    # Training batches all have one shape, so the train step is traced once per model (a
    # short last batch traces it again: seconds per model on a CPU). The reshuffle leaves
    # other images out each epoch.
    drop = training and int(dataset.cardinality()) >= config.batch_size
    batched = make_pipeline(
        dataset,
        config.batch_size,
        shuffle=training,
        augment=augment,
        seed=config.seed,
        drop_remainder=drop,
    )
    return batched.map(lambda x, y: (x, tf.one_hot(y, num_classes)))


class NonFiniteLossError(FloatingPointError, RuntimeError):
    """Training stopped because the loss became NaN or infinite (the weights diverged, or
    the data holds NaN/Inf); nothing from the failing epoch was saved."""


class _StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Raises `NonFiniteLossError` at the end of the first epoch whose training or validation
    loss is not finite (a NaN step makes the epoch's mean loss NaN).

    Raising (rather than `TerminateOnNaN`'s `stop_training`) before the callbacks after this
    one run means they never save the diverged weights (checkpoint, backup, log). The check
    is per epoch, not per step: a per-step hook makes Keras fetch the loss after every step
    and slows training markedly.
    """

    def __init__(self, learning_rate, hint):
        super().__init__()
        self.learning_rate, self.hint = learning_rate, hint

    def on_epoch_end(self, epoch, logs=None):
        for key, what in (("loss", "training loss"), ("val_loss", "validation loss")):
            self._check((logs or {}).get(key), what, epoch)

    def _check(self, loss, what, epoch):
        if loss is None or math.isfinite(float(loss)):
            return
        epochs = self.params.get("epochs")
        raise NonFiniteLossError(
            f"The {what} became {float(loss)} in epoch {epoch + 1} of {epochs}: "
            f"training stopped. Try a lower `learning_rate` (now {self.learning_rate:g}) and "
            f"check the data for NaN/Inf.{self.hint}"
        )


def fit_classifier(
    build_model,
    data,
    config=None,
    out_dir=None,
    strategy=None,
    verbose="auto",
    callbacks=(),
    overwrite=False,
):
    """Fine-tunes a classifier with `model.fit`: the package's training entry point.

    `out_dir` is checked before any work. An interrupted run there (its backup present)
    resumes from its last finished epoch. A finished run (marked by `summary.json`) is
    refused unless `overwrite`; then the new run trains in `out_dir/.overwrite/` and its
    files replace the old ones only once it has finished, so a failed or interrupted
    overwrite leaves the old run as it was (and starts over when run again). A loss that
    becomes NaN or Inf stops training before that epoch is saved anywhere.

    Args:
        build_model: a function returning a new, uncompiled Keras model (logits out, input
            `data.image_shape`); it is called inside the strategy's scope.
        data: an `keras_chanattn.data.ImageData`.
        config: a `TrainConfig`. Defaults to `TrainConfig()`.
        out_dir: folder for `config.json`, the resumable backup, `last.keras`, the CSV log
            (`log.csv`) and, once finished, `summary.json`. Defaults to `None` (nothing
            written, not resumable).
        strategy: a `tf.distribute.Strategy` (e.g. `MirroredStrategy()`), or `None` for the
            default. Defaults to `None`. On a backend other than TensorFlow (JAX), only
            `None` is accepted (one device; the tf.data pipelines feed the backend's arrays),
            and `config.sync_batch_norm` must be off.
        verbose: `model.fit` verbosity (the progress bar). Defaults to `"auto"`.
        callbacks: extra Keras callbacks. Defaults to none.
        overwrite: replace a finished (or interrupted) run in `out_dir` with a new one
            instead of refusing (or resuming). Defaults to `False`.

    Returns:
        `(model, summary)`: the trained model and a dict with the final validation loss and
        accuracy, epochs run, steps, and seconds per epoch.

    Raises:
        BackendError: a `strategy` or `config.sync_batch_norm` on a backend other than
            TensorFlow (a `RuntimeError`), before any work.
        ValueError: a bad argument, or `config` differs from that of the interrupted run
            in `out_dir` (the message names the fields).
        FileExistsError: `out_dir` holds a finished run and `overwrite` is `False`, or is
            a file.
        NonFiniteLossError: the loss became NaN or Inf (a `FloatingPointError` and a
            `RuntimeError`); `out_dir` keeps its last finite epoch, or the old run.
    """
    import tensorflow as tf

    config = TrainConfig() if config is None else config
    callbacks = list(callbacks)
    _check_fit_arguments(build_model, config, out_dir, callbacks, overwrite)
    if backend() != "tensorflow" and (strategy is not None or config.sync_batch_norm):
        require_tensorflow("fit_classifier with a tf.distribute strategy or sync_batch_norm")
    folder = plan_out_dir(out_dir, config, overwrite)
    if backend() == "tensorflow":
        strategy = strategy or tf.distribute.get_strategy()
    if folder is not None and _worker_task(strategy):
        folder = private_folder(folder.out, _worker_task(strategy), config, overwrite)
    with op_determinism(config.deterministic):
        return _fit(build_model, data, config, folder, strategy, verbose, callbacks)


def _worker_task(strategy):
    """`None` on the worker that saves the run (the chief, or the only one); else this
    worker's task, e.g. `"worker-1"`, which trains with a private copy of the run folder.

    A multi-worker `model.fit` runs every callback on every worker, and the chief's saves
    read values that all workers reduce together, so the others must save too, elsewhere.
    """
    if strategy is None or strategy.extended.should_checkpoint:
        return None
    resolver = strategy.cluster_resolver
    return f"{resolver.task_type}-{resolver.task_id}"


def _is_multi_worker(strategy):
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def _check_fit_arguments(build_model, config, out_dir, callbacks, overwrite):
    if not callable(build_model):
        raise ValueError(
            f"`build_model` must be a function returning a new model, got {build_model!r}."
        )
    if not isinstance(config, TrainConfig):
        raise ValueError(f"`config` must be a TrainConfig or None, got {config!r}.")
    if out_dir is not None and not isinstance(out_dir, str | os.PathLike):
        raise ValueError(f"`out_dir` must be a folder path or None, got {out_dir!r}.")
    if not isinstance(overwrite, bool):
        raise ValueError(f"`overwrite` must be True or False, got {overwrite!r}.")
    for index, callback in enumerate(callbacks):
        if not isinstance(callback, keras.callbacks.Callback):
            raise ValueError(
                f"`callbacks[{index}]` must be a keras.callbacks.Callback, got {callback!r}."
            )


def _build(build_model, data, config, strategy):
    """The one-hot training and validation pipelines, steps per epoch, and the compiled
    model (built under the strategy's scope and the config's dtype policy)."""
    keras.utils.set_random_seed(config.seed)
    previous_policy = keras.config.dtype_policy()
    if config.mixed_precision:
        keras.config.set_dtype_policy(config.mixed_precision)
    try:
        train = _one_hot_pipeline(data.train, data.num_classes, config, training=True)
        validation = _one_hot_pipeline(data.validation, data.num_classes, config, training=False)
        if int(data.validation.cardinality()) == 0:  # e.g. validation_fraction=0
            validation = None
        steps_per_epoch = int(train.cardinality())
        if steps_per_epoch <= 0:  # unknown cardinality (e.g. filtered): count once
            steps_per_epoch = sum(1 for _ in train)
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            model = build_model()
            if config.sync_batch_norm:
                set_synchronized_batch_norm(model, True)
            compile_classifier(model, config, steps_per_epoch)
            if _is_multi_worker(strategy):
                prepare_multi_worker_fit(model, strategy)
            # Optimiser variables made now, not inside the first train step: a step that
            # creates variables is traced twice (seconds per model).
            model.optimizer.build(model.trainable_variables)
    finally:
        keras.config.set_dtype_policy(previous_policy)
    return train, validation, model


def _folder_callbacks(folder, config):
    """Writes `config.json` and returns the checkpointing callbacks of `folder.work`."""
    if (folder.out / STAGING / SUMMARY).is_file():
        swap_in(folder.out)  # complete an earlier overwrite cut short by a crash
    shutil.rmtree(folder.out / STAGING, ignore_errors=True)  # never resumed
    folder.work.mkdir(parents=True, exist_ok=True)
    write_json(folder.work / "config.json", dataclasses.asdict(config))  # read by other workers
    return [
        keras.callbacks.BackupAndRestore(str(folder.work / BACKUP)),
        keras.callbacks.CSVLogger(str(folder.work / "log.csv"), append=folder.resume),
        keras.callbacks.ModelCheckpoint(str(folder.work / "last.keras")),
    ]


def _fit(build_model, data, config, folder, strategy, verbose, callbacks):
    train, validation, model = _build(build_model, data, config, strategy)
    hint = ""
    if folder is not None:
        hint = (
            f" {folder.out} keeps the run it held before."
            if folder.staged
            else f" Nothing from this epoch was saved to {folder.out}: a rerun with the same "
            "config resumes from its last saved epoch; overwrite=True starts over."
        )
    timer = _Timer()
    all_callbacks = [_StopOnNonFiniteLoss(config.learning_rate, hint), timer, *callbacks]
    if folder is not None:
        all_callbacks += _folder_callbacks(folder, config)
    try:
        history = model.fit(
            train,
            validation_data=validation,
            epochs=config.epochs,
            callbacks=all_callbacks,
            verbose=verbose,
            shuffle=False,  # the training pipeline shuffles (a tf.data.Dataset ignores it)
        )
    except BaseException:
        for callback in all_callbacks:  # close the CSV log that fit left open
            if isinstance(callback, keras.callbacks.CSVLogger) and callback.csv_file:
                callback.csv_file.close()
        if folder is not None and folder.staged:
            shutil.rmtree(folder.work, ignore_errors=True)
        raise
    summary = _summary(history.history, model, timer, strategy)
    if folder is not None:
        write_json(folder.work / SUMMARY, {"epochs": config.epochs, **summary})
        if folder.staged:
            swap_in(folder.out)
        if folder.scratch:  # a non-chief worker's copy: the chief's folder holds the run
            shutil.rmtree(folder.out, ignore_errors=True)
    return model, summary


def _summary(logs, model, timer, strategy):
    return {
        "epochs_run": len(logs.get("loss", [])),
        "steps": int(keras.ops.convert_to_numpy(model.optimizer.iterations)),
        "val_loss": float(logs["val_loss"][-1]) if logs.get("val_loss") else math.nan,
        "val_accuracy": float(logs["val_accuracy"][-1]) if logs.get("val_accuracy") else math.nan,
        "seconds_per_epoch": (
            sum(timer.epoch_seconds) / len(timer.epoch_seconds) if timer.epoch_seconds else math.nan
        ),
        "replicas": strategy.num_replicas_in_sync if strategy is not None else 1,
    }
