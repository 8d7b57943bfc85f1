"""Fine-tune an attention MobileNetV2 on your own images in `root/<class>/<image>` folders.

    python examples/finetune_folder.py path/to/images --attention se --epochs 20

A fifth of each class is held out for validation. Rerunning with the same --out resumes.
"""

import argparse

from keras_chanattn import models
from keras_chanattn.data import folder_data
from keras_chanattn.train import TrainConfig, fit_classifier


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="folder with one sub-folder of images per class")
    parser.add_argument("--attention", default="se")
    parser.add_argument("--alpha", type=float, default=0.35, help="MobileNetV2 width")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", default="runs/folder")
    args = parser.parse_args(argv)

    data = folder_data(args.root, image_size=args.image_size, validation_fraction=0.2)
    print(f"{data.num_classes} classes: {', '.join(data.class_names)}")
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer="adamw",
        learning_rate=2e-3,
        weight_decay=0.05,
        flip=True,
    )
    model, summary = fit_classifier(
        lambda: models.mobilenet_v2(
            args.attention,
            alpha=args.alpha,
            input_shape=data.image_shape,
            num_classes=data.num_classes,
            classifier_activation=None,
            # MobileNetV3's SE setting; other blocks take their own defaults.
            **({"reduction": 4, "divisor": 8} if args.attention == "se" else {}),
        ),
        data,
        config,
        out_dir=args.out,
    )
    print(f"{model.name}: validation accuracy {summary['val_accuracy']:.4f}")


if __name__ == "__main__":
    main()
