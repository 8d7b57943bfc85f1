"""The fine-tuning recipe: optimiser, schedule, weight-decay groups, checkpoints, tf.distribute.

`fit_classifier` trains any Keras classifier (logits out) on an `ImageData` source with
`model.fit`, resumably: an interrupted run started again with the same `out_dir` and config
carries on from the last finished epoch, optimiser state included. A finished run there is
kept unless `overwrite=True`, and a loss that turns NaN stops training with an error.
"""

import contextlib
import dataclasses
import json
import math
import numbers
import os
import pathlib
import shutil
import time

import keras

from keras_chanattn._compat.keras_graph import flatten_layers
from keras_chanattn.layers.common import AttentionLayer


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


BACKUP, SUMMARY, STAGING = "backup", "summary.json", ".overwrite"
RUN_FILES = ("config.json", "log.csv", "last.keras", SUMMARY)  # besides BACKUP


@dataclasses.dataclass
class _RunFolder:
    """Where a run writes: `work` is `out` itself, or `out/STAGING` for an overwrite."""

    out: pathlib.Path
    work: pathlib.Path
    resume: bool

    @property
    def staged(self):
        return self.work != self.out


def _finished_run(out):
    """The summary of the finished run in `out` (`{}` if unreadable), or `None` if none.

    A finished run is marked by `summary.json`; a `last.keras` without a backup is one
    too (runs written before the marker existed: the backup is deleted when fit ends).
    A staged overwrite that finished but was not swapped in yet counts as finished.
    """
    for marker in (out / STAGING / SUMMARY, out / SUMMARY):
        if marker.is_file():
            try:
                return json.loads(marker.read_text())
            except (OSError, ValueError):
                return {}
    if (out / "last.keras").is_file() and not (out / BACKUP).exists():
        import csv

        try:
            with open(out / "log.csv", newline="") as file:
                last = list(csv.DictReader(file))[-1]
            return {"epochs": int(last["epoch"]) + 1, "val_accuracy": float(last["val_accuracy"])}
        except (OSError, ValueError, KeyError, IndexError):
            return {}
    return None


def _check_same_config(out, config):
    """Refuses to resume the interrupted run in `out` with a config other than its own."""
    path = out / "config.json"
    if not path.is_file():
        return  # nothing to compare with: resume
    given = json.loads(json.dumps(dataclasses.asdict(config)))
    try:
        saved = json.loads(path.read_text())
    except ValueError:
        saved = {}
    missing = "<missing>"
    differ = [
        f"`{key}` (saved {saved.get(key, missing)!r}, given {given.get(key, missing)!r})"
        for key in sorted(set(saved) | set(given))
        if saved.get(key, missing) != given.get(key, missing)
    ]
    if differ:
        raise ValueError(
            f"`out_dir` {out} holds an interrupted run with another TrainConfig: "
            f"{', '.join(differ)}. Resume it with the same config, pass overwrite=True "
            "(CLI: --overwrite) to start over, or choose another out_dir."
        )


def _plan_out_dir(out_dir, config, overwrite):
    """Checks `out_dir` before any work and says where and how the run trains."""
    if out_dir is None:
        return None
    out = pathlib.Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"`out_dir` {out} is a file, not a folder; pass a folder path.")
    finished = _finished_run(out)
    if finished is not None and not overwrite:
        known = "epochs" in finished and "val_accuracy" in finished
        what = (
            f"{finished['epochs']} epoch{'s' * (finished['epochs'] != 1)}, validation accuracy "
            f"{finished['val_accuracy']:.4f}"
            if known
            else "no readable summary"
        )
        raise FileExistsError(
            f"`out_dir` {out} holds a finished run ({what}); pass overwrite=True "
            "(CLI: --overwrite) or another out_dir."
        )
    has_run = finished is not None or any((out / n).exists() for n in (*RUN_FILES, BACKUP))
    if overwrite and has_run:
        return _RunFolder(out, out / STAGING, resume=False)
    interrupted = (out / BACKUP).is_dir()
    if interrupted:
        _check_same_config(out, config)
    return _RunFolder(out, out, resume=interrupted)


def _swap_in(out):
    """Moves the finished staged run in `out/STAGING` over the old run's files.

    Its `summary.json` moves last: until then the staging folder still says a swap is
    pending, and the next call completes it, so a crash here never loses the new run.
    """
    staging = out / STAGING
    shutil.rmtree(out / BACKUP, ignore_errors=True)  # an interrupted old run's
    for name in RUN_FILES:
        if (staging / name).exists():
            os.replace(staging / name, out / name)
    shutil.rmtree(staging, ignore_errors=True)


def _write_json(path, value):
    """Writes `value` as JSON to `path` atomically (a temporary file, then a rename)."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, indent=2))
    os.replace(partial, path)


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
            default. Defaults to `None`.
        verbose: `model.fit` verbosity (the progress bar). Defaults to `"auto"`.
        callbacks: extra Keras callbacks. Defaults to none.
        overwrite: replace a finished (or interrupted) run in `out_dir` with a new one
            instead of refusing (or resuming). Defaults to `False`.

    Returns:
        `(model, summary)`: the trained model and a dict with the final validation loss and
        accuracy, epochs run, steps, and seconds per epoch.

    Raises:
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
    folder = _plan_out_dir(out_dir, config, overwrite)
    strategy = strategy or tf.distribute.get_strategy()
    with op_determinism(config.deterministic):
        return _fit(build_model, data, config, folder, strategy, verbose, callbacks)


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
        with strategy.scope():
            model = build_model()
            if config.sync_batch_norm:
                set_synchronized_batch_norm(model, True)
            compile_classifier(model, config, steps_per_epoch)
    finally:
        keras.config.set_dtype_policy(previous_policy)
    return train, validation, model


def _folder_callbacks(folder, config):
    """Writes `config.json` and returns the checkpointing callbacks of `folder.work`."""
    if (folder.out / STAGING / SUMMARY).is_file():
        _swap_in(folder.out)  # complete an earlier overwrite cut short by a crash
    shutil.rmtree(folder.out / STAGING, ignore_errors=True)  # never resumed
    folder.work.mkdir(parents=True, exist_ok=True)
    (folder.work / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))
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
        _write_json(folder.work / SUMMARY, {"epochs": config.epochs, **summary})
        if folder.staged:
            _swap_in(folder.out)
    return model, summary


def _summary(logs, model, timer, strategy):
    return {
        "epochs_run": len(logs.get("loss", [])),
        "steps": int(model.optimizer.iterations.numpy()),
        "val_loss": float(logs["val_loss"][-1]) if logs.get("val_loss") else math.nan,
        "val_accuracy": float(logs["val_accuracy"][-1]) if logs.get("val_accuracy") else math.nan,
        "seconds_per_epoch": (
            sum(timer.epoch_seconds) / len(timer.epoch_seconds) if timer.epoch_seconds else math.nan
        ),
        "replicas": strategy.num_replicas_in_sync,
    }


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


def _is_integer(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _nonfinite_images(batch):
    """Indices of the images in an NHWC `batch` that hold a NaN or an Inf."""
    import numpy as np

    return np.flatnonzero(~np.isfinite(batch.reshape(len(batch), -1)).all(axis=1))


def _nonfinite_error(indices, total, where):
    first = ", ".join(str(int(i)) for i in indices[:5])
    return ValueError(
        f"`images` holds NaN or Inf in {len(indices)} of {total} images{where} (first at "
        f"index {first}); recalibrating on them would make every moving statistic NaN. "
        "Drop or repair those images."
    )


def _checked_batches(images, batch_size, max_batches):
    """Yields `_image_batches` up to the first batch holding NaN or Inf; then counts the bad
    images among the rest that would be used, and raises ValueError."""
    offset, bad = 0, []
    for count, batch in enumerate(_image_batches(images, batch_size), start=1):
        bad += [offset + i for i in _nonfinite_images(batch)]
        offset += len(batch)
        if not bad:
            yield batch
        if max_batches is not None and count >= max_batches:
            break
    if bad:
        raise _nonfinite_error(bad, offset, " read")


def _statistics_check(layers):
    """Raises FloatingPointError naming the layers whose moving statistics are not finite."""
    import numpy as np

    broken = [
        layer.path
        for layer in layers
        if not (np.isfinite(layer.moving_mean.numpy()).all())
        or not np.isfinite(layer.moving_variance.numpy()).all()
    ]
    if broken:
        raise FloatingPointError(
            f"Recalibration gave NaN or Inf moving statistics in {', '.join(broken)} (the "
            "model overflows on these images, or its weights are not finite); the previous "
            "statistics were put back."
        )


def recalibrate_batch_norm(model, images, batch_size=32, max_batches=None):
    """Re-estimates the moving mean and variance of every BatchNormalization in `model`.

    After a short fine-tune (or after inserting attention blocks into a trained network) the
    moving statistics lag the weights: with the default momentum 0.99 an epoch of 43 steps
    keeps 65% of the old statistics, and validation accuracy falls far below training
    accuracy. This pass runs the model in training mode over `images` and sets each moving
    mean and variance to the plain average of the batch statistics it saw. Only the moving
    statistics change: no weight is trained, and BatchNorm layers that are frozen
    (`trainable=False`) keep theirs. Other layers run in training mode too (Dropout drops,
    as it did while the statistics were first gathered). On any error or interrupt the
    previous statistics are put back.

    Args:
        model: a Keras model; BatchNorm layers inside attention blocks and nested models
            are included.
        images: NHWC images without augmentation: a NumPy array, a `tf.data.Dataset` of
            images or `(image, label)` tuples (batched or not), or an
            `keras_chanattn.data.ImageData` (its training split). They must be finite: an
            array is checked whole before anything runs, a stream batch by batch.
        batch_size: images per batch; batch statistics need several. A last batch short
            of `batch_size` is left out (it would weigh as much as a full one) unless it is
            the only one. Defaults to `32`.
        max_batches: use at most this many batches. Defaults to `None` (all).

    Returns:
        The number of BatchNorm layers recalibrated.

    Raises:
        ValueError: `model` has no trainable BatchNorm layer, `images` holds none or holds
            NaN/Inf (the message counts them and gives the first indices), or
            `batch_size` < 2.
        FloatingPointError: the new statistics came out NaN or Inf (e.g. the activations
            overflow); the old ones are kept.
    """
    import numpy as np

    if not _is_integer(batch_size) or batch_size < 2:
        raise ValueError(
            f"`batch_size` must be an integer >= 2 (batch statistics), got {batch_size!r}."
        )
    if max_batches is not None and (not _is_integer(max_batches) or max_batches < 1):
        raise ValueError(f"`max_batches` must be an integer >= 1 or None, got {max_batches!r}.")
    layers = _batch_norm_layers(model)
    if not layers:
        raise ValueError(
            "The model has no trainable BatchNormalization layer: nothing to recalibrate."
        )
    if isinstance(images, np.ndarray) and images.ndim in (3, 4) and images.dtype.kind in "fc":
        whole = images[None] if images.ndim == 3 else images
        bad = _nonfinite_images(whole)
        if bad.size:
            raise _nonfinite_error(bad, len(whole), "")
    momenta = [layer.momentum for layer in layers]
    statistics = [(layer.moving_mean, layer.moving_variance) for layer in layers]
    before = [(mean.numpy(), variance.numpy()) for mean, variance in statistics]
    seen = 0
    try:
        for batch in _checked_batches(images, batch_size, max_batches):
            seen += 1
            for layer in layers:  # a running average: batch k weighs 1/k
                layer.momentum = 1.0 - 1.0 / seen
            model(batch, training=True)  # eager: each call reads the momentum set above
        if not seen:
            raise ValueError("`images` holds no images: nothing to recalibrate with.")
        _statistics_check(layers)
    except BaseException:  # an error or an interrupt leaves the statistics as they were
        for (mean, variance), (old_mean, old_variance) in zip(statistics, before, strict=True):
            mean.assign(old_mean)
            variance.assign(old_variance)
        raise
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
    return len(layers)
