"""Insert attention blocks into a pretrained keras.applications ResNet50 and fine-tune.

Stage 1 trains only what is new (the blocks and the classifier head) with the pretrained
network frozen; stage 2 unfreezes everything at a lower learning rate. With
`preserve_output=True` the blocks start as the identity, so stage 1 begins from exactly the
pretrained features.

Pretrained weights are not downloaded at run time: fetch the ImageNet weights file once on
a machine with network, e.g. with `keras.applications.ResNet50(weights="imagenet",
include_top=False)` (Keras caches it under ~/.keras/models/), copy the file here, and pass
it with --weights. Without --weights the network starts from random weights.

    python examples/add_attention_pretrained.py --weights \
        ~/.keras/models/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5 \
        --attention se --data path/to/images --image-size 160
"""

import argparse

import keras

import keras_chanattn
from keras_chanattn.data import load_data
from keras_chanattn.train import TrainConfig, fit_classifier


def build(attention, weights, image_size, num_classes):
    base = keras.applications.ResNet50(
        include_top=False, weights=weights, input_shape=(image_size, image_size, 3)
    )
    with_attention = keras_chanattn.add_attention(base, attention, preserve_output=True)
    new_layers = {layer.name for layer in with_attention.layers} - {
        layer.name for layer in base.layers
    }
    inputs = keras.Input((image_size, image_size, 3))
    # keras.applications' ResNet50 expects caffe-style inputs (BGR, mean-subtracted,
    # 0-255); the package's data is RGB in [0, 1].
    x = keras.layers.Rescaling(255.0)(inputs)
    x = keras.layers.Lambda(keras.applications.resnet.preprocess_input)(x)
    x = with_attention(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes, name="head")(x)
    return keras.Model(inputs, outputs), with_attention, new_layers


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None, help="local ResNet50 notop weights (.h5)")
    parser.add_argument("--attention", default="se")
    parser.add_argument("--data", default="digits", help="digits, tfds:<name> or a folder")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, nargs=2, default=(2, 2), metavar=("NEW", "ALL"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--limit", type=int, default=None, help="use only this many images")
    parser.add_argument("--out", default="runs/add_attention")
    args = parser.parse_args(argv)

    data = load_data(args.data, image_size=args.image_size)
    if args.limit:
        data.train = data.train.take(args.limit)
        data.validation = data.validation.take(max(1, args.limit // 4))
    holder = {}

    def stage(epochs, learning_rate, train_all, out):
        def make():
            model, backbone, new_layers = build(
                args.attention, args.weights, args.image_size, data.num_classes
            )
            if "weights" in holder:  # stage 2 starts where stage 1 ended
                model.set_weights(holder["weights"])
            for layer in backbone.layers:
                layer.trainable = train_all or layer.name in new_layers
            print(f"stage: {len(new_layers)} new layers; training "
                  f"{'everything' if train_all else 'the new layers and the head'}")  # fmt: skip
            return model

        config = TrainConfig(
            epochs=epochs,
            batch_size=args.batch_size,
            optimizer="adamw",
            learning_rate=learning_rate,
            weight_decay=0.05,
            warmup_epochs=0,
        )
        model, summary = fit_classifier(make, data, config, out_dir=out)
        holder["weights"] = model.get_weights()
        return summary

    first = stage(args.epochs[0], 1e-3, False, f"{args.out}/new_only")
    second = stage(args.epochs[1], 1e-4, True, f"{args.out}/all")
    print(f"validation accuracy: {first['val_accuracy']:.4f} after the new layers, "
          f"{second['val_accuracy']:.4f} after fine-tuning everything")  # fmt: skip


if __name__ == "__main__":
    main()
