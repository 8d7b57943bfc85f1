"""Fine-tune an attention ResNet on a TensorFlow Datasets image set.

The data must already be prepared in a local `data_dir` (nothing is downloaded unless you
pass --download on a machine with network). Prepare it once where there is network:

    tfds build cifar10 --data_dir ~/tensorflow_datasets

then copy that folder to the training machine and run:

    python examples/finetune_tfds.py --dataset cifar10 --data-dir ~/tensorflow_datasets \
        --attention srm --epochs 30
"""

import argparse

from keras_chanattn import models
from keras_chanattn.data import tfds_data
from keras_chanattn.train import TrainConfig, fit_classifier


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--download", action="store_true")
    parser.add_argument("--attention", default="srm")
    parser.add_argument("--depth", type=int, default=20, help="CIFAR ResNet depth (6n+2)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", default="runs/tfds")
    args = parser.parse_args(argv)

    data = tfds_data(
        args.dataset,
        image_size=args.image_size,
        data_dir=args.data_dir,
        download=args.download,
    )
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer="sgd",
        learning_rate=0.1,
        weight_decay=5e-4,
        flip=True,  # natural images: mirroring keeps the class
    )
    model, summary = fit_classifier(
        lambda: models.cifar_resnet(
            args.depth,
            args.attention,
            input_shape=data.image_shape,
            num_classes=data.num_classes,
            classifier_activation=None,
        ),
        data,
        config,
        out_dir=args.out,
    )
    print(f"{model.name}: validation accuracy {summary['val_accuracy']:.4f}")


if __name__ == "__main__":
    main()
