"""Train with tf.distribute: all GPUs of one machine, or several machines.

One machine, every local GPU (or CPU if none):

    python examples/distributed.py --strategy mirrored --attention srm

Several machines: start the same command on each, with TF_CONFIG describing the cluster
and this worker's index, e.g. on worker 0 of two:

    TF_CONFIG='{"cluster": {"worker": ["host0:12345", "host1:12345"]},
                "task": {"type": "worker", "index": 0}}' \
        python examples/distributed.py --strategy multi-worker --attention srm

--batch-size is the global batch, split across replicas; BatchNorm statistics (the
network's and the blocks') are synchronised across replicas with --sync-batch-norm, so
small per-replica batches still normalise over the global batch.
"""

import argparse

import tensorflow as tf

from keras_chanattn import models
from keras_chanattn.data import load_data
from keras_chanattn.train import TrainConfig, fit_classifier


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", choices=["mirrored", "multi-worker"], default="mirrored")
    parser.add_argument("--attention", default="srm")
    parser.add_argument("--data", default="digits", help="digits, tfds:<name> or a folder")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--sync-batch-norm", action="store_true")
    parser.add_argument("--out", default="runs/distributed")
    args = parser.parse_args(argv)

    if args.strategy == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
    else:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    print(f"{strategy.num_replicas_in_sync} replica(s)")

    data = load_data(args.data, image_size=32)
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer="adamw",
        learning_rate=2e-3,
        weight_decay=0.05,
        sync_batch_norm=args.sync_batch_norm,
    )
    model, summary = fit_classifier(
        lambda: models.cifar_resnet(
            20,
            args.attention,
            input_shape=data.image_shape,
            num_classes=data.num_classes,
            classifier_activation=None,
        ),
        data,
        config,
        out_dir=args.out,
        strategy=strategy,
    )
    print(f"{model.name}: validation accuracy {summary['val_accuracy']:.4f} on "
          f"{summary['replicas']} replica(s)")  # fmt: skip


if __name__ == "__main__":
    main()
