"""One worker of the loopback multi-worker tests (tests/test_multiworker.py).

Trains a tiny CIFAR ResNet (depth 8, 4 base channels, SRM blocks with BatchNorm) on 128
digits with `fit_classifier` under `MultiWorkerMirroredStrategy`: the cluster `TF_CONFIG`
names, or this process alone without it (the single-worker reference). Writes a JSON result (every
epoch's logs, the summary, and the logits on fixed validation images) to `--result`, and,
with `--marker`, one line per finished training batch, so a test can kill it mid-epoch.
"""

import argparse
import json
import time

# The strategy must exist before any TensorFlow op runs (collective ops are configured at
# program start-up), so it is made before the data and the model.
import tensorflow as tf

STRATEGY = tf.distribute.MultiWorkerMirroredStrategy()

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_chanattn import models  # noqa: E402
from keras_chanattn.data import digits_data  # noqa: E402
from keras_chanattn.train import TrainConfig, fit_classifier  # noqa: E402


class Recorder(keras.callbacks.Callback):
    """Keeps every epoch's logs; with a marker path, appends `epoch batch` per batch and
    sleeps `pause` seconds, so that an epoch lasts long enough to be interrupted."""

    def __init__(self, probe, marker=None, pause=0.0):
        super().__init__()
        self.probe, self.marker, self.pause, self.epochs = probe, marker, pause, []

    def on_train_begin(self, logs=None):
        self.initial = self.model(self.probe, training=False).numpy().tolist()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.marker:
            with open(self.marker, "a") as file:
                file.write(f"{self.epoch} {batch}\n")
        time.sleep(self.pause)

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append({"epoch": epoch, **{k: float(v) for k, v in logs.items()}})


def build(data):
    return models.cifar_resnet(
        8, "srm", base_channels=4, input_shape=data.image_shape,
        num_classes=data.num_classes, classifier_activation=None,
    )  # fmt: skip


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--result", required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--marker")
    parser.add_argument("--pause", type=float, default=0.0)
    args = parser.parse_args()

    data = digits_data(image_size=8, test_fraction=0.5)
    data.train, data.validation = data.train.take(128), data.validation.take(64)
    config = TrainConfig(
        epochs=args.epochs, batch_size=32, augment=False, sync_batch_norm=True,
        weight_decay=0.0, learning_rate=0.05, warmup_epochs=0,
    )  # fmt: skip
    probe = np.stack([x for x, _ in data.validation.take(8).as_numpy_iterator()])
    recorder = Recorder(probe, args.marker, args.pause)
    model, summary = fit_classifier(
        lambda: build(data), data, config, out_dir=args.out, strategy=STRATEGY,
        verbose=0, callbacks=[recorder],
    )  # fmt: skip
    result = {
        "initial": recorder.initial,
        "epochs": recorder.epochs,
        "summary": summary,
        "logits": model(probe, training=False).numpy().tolist(),
    }
    with open(args.result, "w") as file:
        json.dump(result, file)


if __name__ == "__main__":
    main()
