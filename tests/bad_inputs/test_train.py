"""Bad inputs of the training recipe: refused before any work, with a message that names the
argument, the problem and the fix, and the user's run folder left as it was."""

import math
import shutil

import keras
import numpy as np
import pytest

from keras_chanattn.data import digits_data
from keras_chanattn.train import (
    NonFiniteLossError,
    TrainConfig,
    fit_classifier,
    recalibrate_batch_norm,
)
from tests.test_train import _StopAtEpoch, bn_probe, tiny_classifier

CONFIG = {"epochs": 1, "batch_size": 16, "warmup_epochs": 0}


def tiny_digits():
    data = digits_data(image_size=8, test_fraction=0.5)
    data.train = data.train.take(64)
    data.validation = data.validation.take(32)
    return data


class _PoisonAtStep(keras.callbacks.Callback):
    """Sets the head's kernel to NaN before step `step` (0-based), so the loss turns NaN
    there, or after it (`after=True`: on the last step, only the validation loss does)."""

    def __init__(self, step, after=False):
        super().__init__()
        self.step, self.after = step, after

    def on_train_batch_begin(self, batch, logs=None):
        if batch == self.step and not self.after:
            self._poison()

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.step and self.after:
            self._poison()

    def _poison(self):
        kernel = self.model.get_layer("head").kernel
        kernel.assign(np.full(kernel.shape, np.nan, "float32"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished 1-epoch run and a 2-epoch run interrupted after its first epoch."""
    root = tmp_path_factory.mktemp("runs")
    data = tiny_digits()
    fit_classifier(tiny_classifier, data, TrainConfig(**CONFIG), root / "finished", verbose=0)
    with pytest.raises(KeyboardInterrupt):
        fit_classifier(tiny_classifier, data, TrainConfig(**{**CONFIG, "epochs": 2}),
                       root / "interrupted", verbose=0, callbacks=[_StopAtEpoch(1)])  # fmt: skip
    return root


def copy_run(runs, name, tmp_path):
    return shutil.copytree(runs / name, tmp_path / "run")


# ---- TrainConfig: every field checked for type, finiteness and range -----------------------

BAD_CONFIGS = [
    ({"learning_rate": math.nan}, r"`learning_rate` must be a finite number > 0, got nan"),
    ({"learning_rate": math.inf}, r"`learning_rate` must be a finite number > 0, got inf"),
    ({"learning_rate": 0}, r"`learning_rate` must be a finite number > 0, got 0"),
    ({"momentum": 1.0}, r"`momentum` must be a finite number in \[0, 1\), got 1.0"),
    ({"momentum": -0.1}, r"`momentum` must be a finite number in \[0, 1\), got -0.1"),
    ({"weight_decay": math.nan}, r"`weight_decay` must be a finite number >= 0, got nan"),
    ({"weight_decay": -1e-4}, r"`weight_decay` must be a finite number >= 0, got -0.0001"),
    ({"label_smoothing": math.nan}, r"`label_smoothing` must be a finite number in \[0, 1\)"),
    ({"epochs": 0}, r"`epochs` must be an integer >= 1, got 0"),
    ({"epochs": 2.5}, r"`epochs` must be an integer >= 1, got 2.5"),
    ({"epochs": True}, r"`epochs` must be an integer >= 1, got True"),
    ({"batch_size": "32"}, r"`batch_size` must be an integer >= 1, got '32'"),
    ({"warmup_epochs": -1}, r"`warmup_epochs` must be an integer >= 0, got -1"),
    ({"seed": -1}, r"`seed` must be an integer in \[0, 2\*\*32 - 1\], got -1"),
    ({"seed": 2**32}, r"`seed` must be an integer in \[0, 2\*\*32 - 1\], got 4294967296"),
    ({"augment": "no"}, r"`augment` must be True or False, got 'no'"),
    ({"flip": 1}, r"`flip` must be True or False, got 1"),
    ({"deterministic": None}, r"`deterministic` must be True or False, got None"),
    ({"optimizer": "SGD"}, r"`optimizer` must be 'sgd' or 'adamw', got 'SGD'"),
    ({"mixed_precision": "float16"}, r"`mixed_precision` must be None, 'mixed_float16'"),
]


CONFIG_IDS = ["{}={!r}".format(*next(iter(kwargs.items()))) for kwargs, _ in BAD_CONFIGS]


@pytest.mark.parametrize(("kwargs", "message"), BAD_CONFIGS, ids=CONFIG_IDS)
def test_train_config_refuses(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


# ---- fit_classifier: refused before any work, the run folder untouched ---------------------

BAD_CALLS = [
    ({"overwrite": "yes"}, ValueError, r"`overwrite` must be True or False, got 'yes'"),
    ({"config": {"epochs": 1}}, ValueError, r"`config` must be a TrainConfig or None"),
    ({"build_model": None}, ValueError, r"`build_model` must be a function"),
    ({"callbacks": [print]}, ValueError, r"`callbacks\[0\]` must be a keras.callbacks.Callback"),
    ({"out_dir": 3}, ValueError, r"`out_dir` must be a folder path or None, got 3"),
]


@pytest.mark.parametrize(("kwargs", "error", "message"), BAD_CALLS,
                         ids=[next(iter(kwargs)) for kwargs, *_ in BAD_CALLS])  # fmt: skip
def test_fit_refuses_bad_arguments(kwargs, error, message, runs, tmp_path, unchanged):
    run = copy_run(runs, "finished", tmp_path)
    call = {"build_model": tiny_classifier, "config": TrainConfig(**CONFIG), "out_dir": run}
    with unchanged(tmp_path), pytest.raises(error, match=message):
        fit_classifier(data=tiny_digits(), verbose=0, **{**call, **kwargs})


def _legacy(run):
    (run / "summary.json").unlink()  # a finished run written before summary.json existed


def _pending_swap(run):
    shutil.copytree(run, run / ".overwrite")  # an overwrite that finished, not yet swapped in


def _file(run):
    shutil.rmtree(run)
    run.write_text("not a folder")


FOLDER_CASES = [
    ("finished", None, {}, FileExistsError,
     r"`out_dir` \S+run holds a finished run \(1 epoch, validation accuracy 0\.\d{4}\); "
     r"pass "
     r"overwrite=True \(CLI: --overwrite\) or another out_dir"),
    ("finished", _legacy, {}, FileExistsError,
     r"holds a finished run \(1 epoch, validation accuracy 0\.\d{4}\); pass overwrite=True"),
    ("finished", _pending_swap, {}, FileExistsError, r"holds a finished run \(1 epoch,"),
    ("finished", _file, {}, FileExistsError, r"is a file, not a folder; pass a folder path"),
    ("interrupted", None, {"learning_rate": 0.01}, ValueError,
     r"holds an interrupted run with another TrainConfig: `epochs` \(saved 2, given 1\), "
     r"`learning_rate` \(saved 0.05, given 0.01\)\. Resume it with the same config, pass "
     r"overwrite=True"),
]  # fmt: skip

FOLDER_IDS = ["finished", "legacy", "pending-swap", "file", "other-config"]


@pytest.mark.parametrize(("source", "prepare", "changes", "error", "message"), FOLDER_CASES,
                         ids=FOLDER_IDS)  # fmt: skip
def test_fit_refuses_the_out_dir(source, prepare, changes, error, message, runs, tmp_path,
                                 unchanged):  # fmt: skip
    run = copy_run(runs, source, tmp_path)
    if prepare:
        prepare(run)
    with unchanged(tmp_path), pytest.raises(error, match=message):
        fit_classifier(tiny_classifier, tiny_digits(), TrainConfig(**{**CONFIG, **changes}),
                       out_dir=run, verbose=0)  # fmt: skip


# ---- a loss that turns NaN: an error, and nothing saved from that epoch --------------------


NAN_CASES = [
    ("finished", True, 1, _PoisonAtStep(2), "training loss became nan in epoch 1 of 1",
     "keeps the run it held before"),
    ("interrupted", False, 2, _PoisonAtStep(2), "training loss became nan in epoch 2 of 2",
     "Nothing from this epoch was saved"),
    ("finished", True, 1, _PoisonAtStep(3, after=True), "validation loss became nan in epoch "
     "1 of 1", "keeps the run it held before"),
]  # fmt: skip


@pytest.mark.parametrize(("source", "overwrite", "epochs", "poison", "what", "keeps"), NAN_CASES,
                         ids=["overwrite", "resume", "validation"])  # fmt: skip
def test_a_nan_loss_raises_and_keeps_the_run(source, overwrite, epochs, poison, what, keeps,
                                             runs, tmp_path, unchanged):  # fmt: skip
    run = copy_run(runs, source, tmp_path)
    config = TrainConfig(**{**CONFIG, "epochs": epochs})
    message = rf"The {what}: training stopped. Try a lower `learning_rate` \(now 0.05\)"
    with unchanged(tmp_path), pytest.raises(NonFiniteLossError, match=message) as caught:
        fit_classifier(tiny_classifier, tiny_digits(), config, out_dir=run, verbose=0,
                       overwrite=overwrite, callbacks=[poison])  # fmt: skip
    assert keeps in str(caught.value)
    assert isinstance(caught.value, RuntimeError) and isinstance(caught.value, FloatingPointError)


# ---- recalibrate_batch_norm: NaN/Inf images refused, the statistics kept -------------------


def _with_nan(images):
    images[[3, 5]] = np.nan
    return images


def _stream_with_inf(images):
    images[9, 0, 0, 0] = np.inf
    return iter([images[:8], images[8:16]])


RECALIBRATION_CASES = [
    (_with_nan, {}, ValueError,
     r"`images` holds NaN or Inf in 2 of 16 images \(first at index 3, 5\); .* Drop or repair"),
    (_stream_with_inf, {"batch_size": 8}, ValueError,
     r"`images` holds NaN or Inf in 1 of 16 images read \(first at index 9\)"),
    (lambda images: images * 1e30, {}, FloatingPointError,
     r"NaN or Inf moving statistics in bn .* the previous statistics were put back"),
    (lambda images: images, {"batch_size": True}, ValueError,
     r"`batch_size` must be an integer >= 2 \(batch statistics\), got True"),
    (lambda images: images, {"max_batches": 1.5}, ValueError,
     r"`max_batches` must be an integer >= 1 or None, got 1.5"),
]  # fmt: skip

RECALIBRATION_IDS = ["nan-array", "inf-stream", "overflow", "batch_size", "max_batches"]


@pytest.mark.parametrize(("make", "kwargs", "error", "message"), RECALIBRATION_CASES,
                         ids=RECALIBRATION_IDS)  # fmt: skip
def test_recalibration_refuses_and_keeps_the_statistics(make, kwargs, error, message):
    model = bn_probe()
    bn = model.get_layer("bn")
    bn.moving_mean.assign([1.0, 2.0, 3.0])
    bn.moving_variance.assign([4.0, 5.0, 6.0])
    images = np.random.default_rng(0).normal(size=(16, 4, 4, 3)).astype("float32")
    with pytest.raises(error, match=message):
        recalibrate_batch_norm(model, make(images), **kwargs)
    np.testing.assert_array_equal(bn.moving_mean.numpy(), [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(bn.moving_variance.numpy(), [4.0, 5.0, 6.0])
    assert bn.momentum == 0.99
