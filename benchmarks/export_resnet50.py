"""Benchmark: ResNet-50 in full int8 on LiteRT + XNNPACK, plain, a floor gate and each block.

Exports every model (`plain`; `floor`, the parameter-free gate `x * sigmoid(GAP(x))`; one per
block, and `srm_scaled`) to full int8 TFLite, times them in one interleaved run
(`keras_chanattn.bench`) and prints per model the latency, its ratios to the floor and to
the plain network, the XNNPACK partitions and the top-1 agreement of the int8 model with the
float one, then the performance goals, met or not. `--fine-tune-epochs` (with `--weights` or
`--pretrain-epochs`) fine-tunes on the embedded digits first; `--save-models` and
`--models-from` keep the models and time them again. Figures: docs/benchmarks.md. Not a
test (a full run takes tens of minutes); from the repository root:

    python benchmarks/export_resnet50.py --image-size 64 --blocks se,srm --runs 5   # quick
    python benchmarks/export_resnet50.py                      # 224x224, every block
"""

import argparse
import collections
import datetime
import json
import os
import sys
import time

import numpy as np

from keras_chanattn.models.presets import PLAIN

FLOOR = "floor"
# The floor gate: Gather-Excite's parameter-free global variant.
FLOOR_GATE = {"extent": None, "parametric": False, "use_mlp": False, "gate_activation": "sigmoid"}
# SRM's inference form with its channel scaling (`scale_statistics=True`): one more int8
# pass over each map (see FoldedStyleRecalibration).
SRM_SCALED = "srm_scaled"
# The performance goals: the largest latency ratio to the floor allowed per block (others:
# reported).
GOALS = {"se": 1.03, "eca": 1.03, "ge": 1.03, "srm": 1.10}
# Top-1 agreement of the int8 model with the float one, after a fine-tune.
AGREEMENT_GOAL = 0.99


# keras.applications.ResNet50's ImageNet weights without the classifier, as Keras names the
# file; Keras downloads it from storage.googleapis.com/tensorflow/keras-applications/resnet/.
PRETRAINED_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
# What `--pretrain-epochs` writes into the output folder: the digits-trained plain
# ResNet-50's weights without its head, in the form keras.applications' `weights=` loads.
DIGITS_PRETRAINED_FILE = "resnet50_digits_notop.weights.h5"
# `--save-models` writes each model as `<label>.keras` into this folder of the output
# folder, with RUN_FILE: the settings the models were made with and their validation
# accuracy; `--models-from` reads them back.
MODELS_FOLDER = "models"
RUN_FILE = "run.json"
# The settings RUN_FILE keeps: what the report says of how the models were made.
RUN_SETTINGS = (
    "image_size",
    "fine_tune_epochs",
    "extra_epochs",
    "untuned_baselines",
    "fine_tune_lr",
    "recalibrate_bn",
    "weights",
    "pretrain_epochs",
    "block_init",
    "seed",
)
# The recipe of the pretraining and the fine-tunes (`keras_chanattn.train.TrainConfig` fields
# besides epochs, learning rate and seed): AdamW, batch 32, TrainConfig's one-epoch warm-up
# and cosine decay.
TRAIN_RECIPE = {"batch_size": 32, "optimizer": "adamw", "weight_decay": 0.05}
# keras.applications.resnet50.preprocess_input's per-channel means (BGR, on 0-255 pixels);
# the digits are grey, so the channel order does not matter.
CAFFE_MEANS = (103.939, 116.779, 123.68)


def parse_args(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    _check_model_source(parser, args)
    _check_training(parser, args)
    return args


def _parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", default=None, help="comma-separated; default: all")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2, help="LiteRT threads")
    parser.add_argument("--runs", type=int, default=50, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=5, help="untimed rounds")
    parser.add_argument("--calibration", type=int, default=100, help="calibration images")
    parser.add_argument("--held-out", type=int, default=100, help="held-out images")
    parser.add_argument("--synthetic", action="store_true", help="synthetic images, not digits")
    parser.add_argument("--out", default=None, help="default: export/runs/bench-resnet50-<time>")
    parser.add_argument("--overwrite", action="store_true", help="replace existing reports")
    parser.add_argument("--seed", type=int, default=0)
    _add_training_arguments(parser)
    return parser


def _add_training_arguments(parser):
    """The pretraining, fine-tune and saved-model options."""
    parser.add_argument(
        "--fine-tune-epochs", type=int, default=0, help="fine-tune each model on digits first"
    )
    parser.add_argument(
        "--extra-epochs",
        action="append",
        default=[],
        metavar="BLOCK=N",
        help="fine-tune BLOCK's model N epochs more than --fine-tune-epochs (repeatable; e.g. "
        "sa=3: SA's channel shuffle undoes the pretraining, and one epoch does not relearn it)",
    )
    parser.add_argument(
        "--untuned-baselines",
        action="store_true",
        help="fine-tune the blocks' models only: plain and floor keep their starting weights "
        "and serve as latency baselines (the ratios need their times, not their accuracy); "
        "saves two fine-tunes per run",
    )
    parser.add_argument(
        "--fine-tune-lr",
        type=float,
        default=1e-4,
        help="peak AdamW learning rate of the fine-tune (at 1e-3 a pretrained ResNet-50 "
        "forgets its pretraining within an epoch)",
    )
    parser.add_argument(
        "--recalibrate-bn",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="after the fine-tune, re-estimate every BatchNorm's statistics on the training "
        "images (default: on; one epoch leaves them lagging the weights)",
    )
    parser.add_argument(
        "--weights",
        default=None,
        metavar="PATH",
        help="ImageNet weights of keras.applications.ResNet50 without its top, read from disk "
        f"({PRETRAINED_FILE}); every model starts from them, the blocks inserted with "
        "add_attention; needs --fine-tune-epochs (the 10-class head is new)",
    )
    parser.add_argument(
        "--pretrain-epochs",
        type=int,
        default=0,
        metavar="N",
        help="train keras.applications.ResNet50 from scratch on the digits for N epochs, save "
        f"its weights (no top) in the output folder ({DIGITS_PRETRAINED_FILE}) and use them "
        "as --weights would: the stand-in for ImageNet weights; needs --fine-tune-epochs",
    )
    parser.add_argument(
        "--block-init",
        choices=["random", "default"],
        default="random",
        help="random (default): the blocks' weights drawn at random, as a trained network's "
        "would be; default: their initialisation, where zero-initialised weights (SGE, SA, "
        "GC) leave exactly-zero int8 tensors that XNNPACK refuses",
    )
    parser.add_argument(
        "--save-models",
        action="store_true",
        help=f"save every model (after its fine-tune) as <label>.keras in OUT/{MODELS_FOLDER}/, "
        f"with {RUN_FILE} (settings and validation accuracy), so --models-from can export and "
        "time them again without the fine-tunes (about 95 MB per ResNet-50)",
    )
    parser.add_argument(
        "--models-from",
        default=None,
        metavar="DIR",
        help=f"read the models from DIR (a --save-models run's OUT/{MODELS_FOLDER}) instead of "
        "building and fine-tuning them; --blocks picks among them (default: all); the image "
        "size and the fine-tune settings are the saved run's",
    )


def _check_model_source(parser, args):
    """Parser errors for --models-from and --weights, before any work."""
    if args.models_from is not None:
        given = [
            flag
            for flag, value in (
                ("--weights", args.weights),
                ("--pretrain-epochs", args.pretrain_epochs),
                ("--fine-tune-epochs", args.fine_tune_epochs),
                ("--extra-epochs", args.extra_epochs),
                ("--untuned-baselines", args.untuned_baselines),
                ("--save-models", args.save_models),
            )
            if value
        ]
        if given:
            parser.error(
                f"--models-from reads models made already; {', '.join(given)} would make "
                "them: leave it out."
            )
        if not os.path.isfile(os.path.join(args.models_from, RUN_FILE)):
            parser.error(
                f"--models-from {args.models_from}: no {RUN_FILE} there. Give the "
                f"{MODELS_FOLDER} folder of a run made with --save-models."
            )
    if args.weights is not None:
        if not os.path.isfile(args.weights):
            parser.error(
                f"--weights {args.weights}: no such file. Download {PRETRAINED_FILE} on a "
                "machine with network access (Keras fetches it from storage.googleapis.com/"
                "tensorflow/keras-applications/resnet/) and give its local path, or train a "
                "stand-in here with --pretrain-epochs N."
            )


def _check_training(parser, args):
    """Parser errors for the pretraining and fine-tune options, before any work."""
    if args.pretrain_epochs < 0 or args.fine_tune_epochs < 0:
        parser.error("--pretrain-epochs and --fine-tune-epochs must be >= 0.")
    args.extra_epochs = _extra_epochs(parser, args.extra_epochs, args.fine_tune_epochs)
    if args.untuned_baselines and not args.fine_tune_epochs:
        parser.error("--untuned-baselines needs --fine-tune-epochs N (it leaves some out).")
    if not args.fine_tune_lr > 0:
        parser.error(f"--fine-tune-lr must be > 0, got {args.fine_tune_lr}.")
    if args.pretrain_epochs and args.weights is not None:
        parser.error(
            "--pretrain-epochs trains the weights that --weights would read: give one of them."
        )
    if (args.weights is not None or args.pretrain_epochs) and not args.fine_tune_epochs:
        flag = "--weights" if args.weights is not None else "--pretrain-epochs"
        parser.error(f"{flag} needs --fine-tune-epochs N (the 10-class head is new).")


def images(args):
    """`(calibration, held_out, description)` at the input size."""
    size = args.image_size
    if not args.synthetic:
        from keras_chanattn.data import load_digits_images

        (x_train, _), (x_test, _) = load_digits_images(size, 3, seed=args.seed)
        how = (
            f"{args.calibration} calibration and {args.held_out} held-out real images: "
            f"scikit-learn's handwritten digits, 8x8 grey scans upsampled to {size}x{size}, "
            "grey repeated to RGB"
        )
        return x_train[: args.calibration], x_test[: args.held_out], how
    from keras_chanattn.images import ImageSpec, synthetic_images

    spec = ImageSpec(size, size, 3, "float32")
    calibration = synthetic_images(spec, args.calibration, seed=args.seed)
    held_out = synthetic_images(spec, args.held_out, seed=args.seed + 1)
    how = (
        f"{args.calibration} calibration and {args.held_out} held-out SYNTHETIC images "
        "(smooth random noise in [0, 1])"
    )
    return calibration, held_out, how


def pretrained_builder(path):
    """A `backbone_models` builder: keras.applications.ResNet50 with the ImageNet weights at
    `path` (no top, caffe preprocessing inside the model, average pooling, a new head), and
    `add_attention` before every residual add, the papers' place. `path=None` builds it
    randomly initialised (what `--pretrain-epochs` trains)."""
    import keras

    from keras_chanattn.models import add_attention

    plain = {}

    def build(attention, name, input_shape, num_classes, classifier_activation, **kwargs):
        if not plain:
            inputs = keras.Input(input_shape)
            x = keras.layers.Rescaling(255.0)(inputs)
            x = keras.layers.Normalization(mean=CAFFE_MEANS, variance=(1.0, 1.0, 1.0))(x)
            base = keras.applications.ResNet50(
                include_top=False, weights=path, input_shape=input_shape, pooling="avg"
            )
            head = keras.layers.Dense(num_classes, activation=classifier_activation)
            plain["model"] = keras.Model(inputs, head(base(x)), name="pretrained_resnet50")
        if attention is not None:
            return add_attention(plain["model"], attention, name=name, **kwargs)
        model = keras.models.clone_model(plain["model"])  # own layers, so fine-tuning one
        model.set_weights(plain["model"].get_weights())  # model leaves the others alone
        return model

    return build


def build_models(args, blocks):
    import functools

    from keras_chanattn.bench import backbone_models
    from keras_chanattn.layers import GatherExcite
    from keras_chanattn.models import resnet

    defaults = GatherExcite().get_config()
    if any(defaults[k] != v for k, v in FLOOR_GATE.items()):
        print(f"note: GE's defaults are no longer the floor gate; building it with {FLOOR_GATE}")
    kwargs = {
        "input_shape": (args.image_size, args.image_size, 3),
        "num_classes": 10 if args.fine_tune_epochs else 1000,
        "classifier_activation": None,
    }
    if args.weights is None:
        backbone, build = "resnet50", functools.partial(resnet, 50)
    else:
        backbone = build = pretrained_builder(args.weights)
    models, skipped = backbone_models(backbone, blocks, **kwargs)
    floor = build("ge", name="floor_resnet50", **FLOOR_GATE, **kwargs)
    ordered = {PLAIN: models.pop(PLAIN), FLOOR: floor, **models}
    if "srm" in models:
        ordered[SRM_SCALED] = build(
            "srm", name="srm_scaled_resnet50", scale_statistics=True, **kwargs
        )
    return ordered, skipped


def randomize_blocks(models, seed):
    """Draws every attention block's weights at random (variances positive), so that no
    gate is a constant: zero-initialised gates are what an untrained network has, not a
    trained one, and they make int8 graphs XNNPACK cannot take."""
    from keras_chanattn.layers import AttentionLayer
    from keras_chanattn.testing import randomize_weights

    rng = np.random.default_rng(seed)
    for model in models.values():
        for layer in model.layers:
            if isinstance(layer, AttentionLayer):
                randomize_weights(layer, scale=0.1, rng=rng)


def _extra_epochs(parser, values, fine_tune_epochs):
    """`["sa=3", ...]` -> `{"sa": 3}`, or a parser error naming the bad value."""
    extra = {}
    for value in values:
        block, _, count = (part.strip() for part in value.partition("="))
        if not count.isdigit() or int(count) < 1 or not block:
            parser.error(f"--extra-epochs {value!r}: expected BLOCK=N with N >= 1, e.g. sa=3.")
        extra[block] = int(count)
    if extra and not fine_tune_epochs:
        parser.error("--extra-epochs needs --fine-tune-epochs N (it adds to them).")
    return extra


def train_config(epochs, learning_rate, seed):
    """`TRAIN_RECIPE` for `epochs` at peak `learning_rate`: both trainings here."""
    from keras_chanattn.train import TrainConfig

    return TrainConfig(**TRAIN_RECIPE, epochs=epochs, learning_rate=learning_rate, seed=seed)


def pretrain(args, out, data=None):
    """Trains the plain keras.applications.ResNet50 (the model `pretrained_builder` wraps)
    from scratch on `data` (default: the digits at the input size), saves its weights
    without the head into `out` and returns the file's path: the weights every model of the
    comparison then starts from. An existing file is kept unless `--overwrite`."""
    from keras_chanattn.data import digits_data
    from keras_chanattn.export.files import check_output_path
    from keras_chanattn.train import fit_classifier

    path = os.path.join(out, DIGITS_PRETRAINED_FILE)
    check_output_path(path, args.overwrite, "file")  # before the training, not after it
    build = pretrained_builder(None)
    size = args.image_size
    config = train_config(args.pretrain_epochs, 2e-3, args.seed)
    print(f"pretraining the plain ResNet-50 from scratch for {args.pretrain_epochs} epoch(s)")
    model, summary = fit_classifier(
        lambda: build(None, "pretrain_resnet50", (size, size, 3), 10, None),
        data or digits_data(size, seed=args.seed),
        config,
        verbose=2,
    )
    print(f"  validation accuracy {summary['val_accuracy']:.4f}")
    backbone = next(layer for layer in model.layers if layer.name == "resnet50")
    return write_atomically(path, ".weights.h5", backbone.save_weights, args.overwrite)


def write_atomically(path, suffix, save, overwrite):
    """Writes `path` through `save(file name)`, a Keras saver that insists on names ending
    in `suffix`, atomically (`keras_chanattn.export.files.atomic_output`); returns `path`."""
    from keras_chanattn.export.files import atomic_output

    with atomic_output(path, overwrite) as tmp:
        suffixed = tmp + suffix
        try:
            save(suffixed)
            os.rename(suffixed, tmp)
        finally:
            if os.path.exists(suffixed):
                os.remove(suffixed)
    return path


def fine_tune(models, args, on_tuned=None):
    """Fine-tunes every model on the digits, then (unless `--no-recalibrate-bn`)
    re-estimates its BatchNorm statistics on the unaugmented training images. Returns
    `{label: (validation accuracy after the fine-tune, after the recalibration or None)}`;
    `on_tuned(label, model, accuracy so far)` is called after each model."""
    from keras_chanattn.data import digits_data
    from keras_chanattn.train import fit_classifier, recalibrate_batch_norm

    data = digits_data(args.image_size, seed=args.seed)
    if args.recalibrate_bn:  # read once for every model
        validation = [np.stack(a) for a in zip(*data.validation.as_numpy_iterator(), strict=True)]
    accuracy = {}
    for label, model in models.items():
        if args.untuned_baselines and label in (PLAIN, FLOOR):
            print(f"not fine-tuning {label} (--untuned-baselines): a latency baseline only")
            continue
        epochs = args.fine_tune_epochs + args.extra_epochs.get(label, 0)
        config = train_config(epochs, args.fine_tune_lr, args.seed)
        print(f"fine-tuning {label} for {epochs} epoch(s)")
        models[label], summary = fit_classifier(lambda m=model: m, data, config, verbose=2)
        print(f"  validation accuracy {summary['val_accuracy']:.4f}")
        recalibrated = None
        if args.recalibrate_bn:
            count = recalibrate_batch_norm(models[label], data.train, config.batch_size)
            recalibrated = validation_accuracy(models[label], *validation)
            print(f"  after recalibrating {count} BatchNorm layers: {recalibrated:.4f}")
        accuracy[label] = (summary["val_accuracy"], recalibrated)
        if on_tuned is not None:
            on_tuned(label, models[label], accuracy)
    return accuracy


class ModelSaver:
    """`--save-models`: writes each model to `<folder>/<label>.keras` (atomically) and,
    after each, `<folder>/run.json` with the run's settings and the accuracies so far, so
    that an interrupted run keeps the models it finished. Every path is checked when the
    saver is made, before any training: an existing file stops the run unless
    `--overwrite`."""

    def __init__(self, folder, args, labels):
        from keras_chanattn.export.files import check_output_path

        self.folder, self.args, self.saved = folder, args, []
        for name in [*(f"{label}.keras" for label in labels), RUN_FILE]:
            check_output_path(os.path.join(folder, name), args.overwrite, "file")

    def __call__(self, label, model, accuracy):
        import keras

        from keras_chanattn.export.files import write_text

        # A .keras file keeps a compiled model's optimizer state (AdamW: twice the weights
        # again); an uncompiled copy keeps the weights only (clone_model would compile it).
        copy = keras.Model.from_config(model.get_config())
        copy.set_weights(model.get_weights())
        # Paths checked in __init__; overwrite=True here replaces this run's own run.json.
        write_atomically(os.path.join(self.folder, f"{label}.keras"), ".keras", copy.save, True)
        self.saved.append(label)
        run = {
            "settings": {key: getattr(self.args, key) for key in RUN_SETTINGS},
            "models": self.saved,
            "accuracy": {k: list(v) for k, v in accuracy.items()},
        }
        write_text(os.path.join(self.folder, RUN_FILE), json.dumps(run, indent=2) + "\n", True)

    def save_rest(self, models, accuracy):
        """Saves the models not saved after a fine-tune (the untuned baselines)."""
        for label, model in models.items():
            if label not in self.saved:
                self(label, model, accuracy)


def load_models(args, blocks):
    """`--models-from`: `(models, accuracy)` read from a `--save-models` folder, plain and
    floor first, then `blocks` (default: every block saved) and srm_scaled where saved.
    The saved run's settings replace `args`' (the report describes those models)."""
    import keras

    import keras_chanattn  # noqa: F401  (registers the layers the files name)

    folder = args.models_from
    with open(os.path.join(folder, RUN_FILE)) as f:
        run = json.load(f)
    saved = run["models"]
    wanted = [PLAIN, FLOOR, *(blocks or [m for m in saved if m not in (PLAIN, FLOOR)])]
    if blocks and "srm" in blocks and SRM_SCALED in saved:
        wanted.append(SRM_SCALED)
    missing = [label for label in wanted if label not in saved]
    if missing:
        sys.exit(
            f"--models-from {folder}: {', '.join(missing)} not saved there (saved: "
            f"{', '.join(saved)}). Run the benchmark with --save-models for them."
        )
    for key, value in run["settings"].items():
        setattr(args, key, value)
    models = {}
    for label in wanted:
        print(f"reading {label} from {folder}")
        models[label] = keras.saving.load_model(os.path.join(folder, f"{label}.keras"))
    accuracy = {k: tuple(v) for k, v in run["accuracy"].items() if k in models}
    return models, accuracy


def validation_accuracy(model, images, labels):
    from keras_chanattn.export.saved_model import keras_outputs

    return float(np.mean(np.argmax(keras_outputs(model, images, 32)[0], 1) == labels))


def distinct_classes(models, held_out):
    """How many different top-1 classes each float model predicts on the held-out images."""
    from keras_chanattn.export.saved_model import keras_outputs

    return {
        label: len(np.unique(np.argmax(keras_outputs(model, held_out, 16)[0], 1)))
        for label, model in models.items()
    }


def op_summary(entries):
    """`["SQRT (stage2_block1_attention)", ...]` -> `"SQRT x16, ADD x16"`."""
    counts = collections.Counter(entry.split(" ")[0] for entry in entries)
    return ", ".join(f"{op} x{n}" for op, n in counts.most_common()) or "-"


def goal(label, row, floor_ratio, fine_tuned=False):
    """The performance goals for one block's row: one partition, its latency limit, and (after
    a fine-tune, where the figure means something) top-1 agreement >= 99%."""
    if label in (PLAIN, FLOOR):
        return ""
    misses = []
    if row["partitions"] != 1:
        misses.append(f"{row['partitions']} partitions")
    agreement = row["top1_agreement"]
    if fine_tuned and (agreement is None or agreement < AGREEMENT_GOAL):
        misses.append(f"top-1 agr < {AGREEMENT_GOAL:.2f}")
    limit = GOALS.get(label)
    if limit is not None and (floor_ratio is None or floor_ratio > limit):
        misses.append(f"> {limit:.2f}x floor")
    if misses:
        return "MISSED: " + ", ".join(misses)
    return "met" if limit is not None else "1 partition"


def row_notes(label, row):
    """The report's notes on one model's row: its ops outside XNNPACK, float ops kept and
    int8 ranges widened, and the verification checks it failed (recorded in the row, not
    enforced by the benchmark)."""
    notes = []
    if row["undelegated_ops"] or row["float_ops"] or row["widened_ranges"] or not row["xnnpack"]:
        notes.append(
            f"{label}: outside XNNPACK: {op_summary(row['undelegated_ops'])}; float ops kept: "
            f"{op_summary(row['float_ops'])}; int8 ranges widened for XNNPACK: "
            f"{op_summary(row['widened_ranges'])}"
            + ("" if row["xnnpack"] else "; XNNPACK refused the model (LiteRT kernels)")
        )
    if row["failures"]:
        notes.append(f"{label}: failed verification checks: {'; '.join(row['failures'])}")
    return notes


def _report_header(args, how):
    """The report's opening lines: the setting, the data, the backbone, the columns."""
    header = (
        f"{'model':<18}{'median ms':>10}{'p90 ms':>9}{'/floor':>8}{'/plain':>8}{'parts':>6}"
        f"{'MiB':>7}{'top-1 agr':>10}{'classes':>8}{'probe agr':>10}{'probe err':>10}  goal"
    )
    lines = [
        f"ResNet-50, {args.image_size}x{args.image_size}, batch 1, full int8 (int8 in/out), "
        f"LiteRT + XNNPACK, {args.threads} thread(s); median and p90 of {args.runs} rounds "
        f"interleaved across all models (shuffled each round) after {args.warmup} warm-up "
        "rounds; one run.",
        f"Data: {how}.",
        "Backbone: "
        + (
            "the package's ResNet-50 (torchvision v1.5), random initialisation"
            if args.weights is None
            else f"keras.applications.ResNet50 (v1) with the weights of {args.weights}"
            + (
                f" (trained here from scratch on the digits, {args.pretrain_epochs} epoch(s))"
                if args.pretrain_epochs
                else ""
            )
            + ", the blocks inserted by add_attention"
        )
        + (
            f", then fine-tuned {args.fine_tune_epochs} epoch(s)"
            + "".join(f", {b} {args.fine_tune_epochs + n}" for b, n in args.extra_epochs.items())
            + f" (AdamW, peak learning rate {args.fine_tune_lr:g})"
            + (
                "; plain and floor not fine-tuned (--untuned-baselines): their rows are "
                "latency baselines, their agreement that of an untrained head."
                if args.untuned_baselines
                else "."
            )
            if args.fine_tune_epochs
            else "."
        ),
        *(
            [
                f"Models read from {args.models_from} (saved by a --save-models run; the "
                "settings above are that run's): not fine-tuned again here."
            ]
            if args.models_from
            else []
        ),
        "",
        header,
        "-" * len(header),
    ]
    return lines


def _report_notes(result, accuracy, args):
    """The lines below the table: the floor's ratio, the goals, the legend, accuracy."""
    floor_row = result.row(FLOOR, "int8")
    lines = [
        "",
        f"floor / plain = {floor_row[f'ratio_vs_{PLAIN}']:.3f}.",
        "Goals: every block in 1 XNNPACK partition; SE, ECA, GE within 3% of the "
        "floor, SRM within 10%; the other blocks: the figure; after a fine-tune, top-1 "
        f"agreement >= {AGREEMENT_GOAL:.2f} for every block.",
        "parts: XNNPACK partitions. top-1 agr: int8 .tflite vs the float Keras model (same "
        f"weights) on {result.config['held_out_samples'][PLAIN]} held-out images; classes: "
        "distinct top-1 classes of the float model there (1 = agreement is trivial); probe "
        "agr / err: top-1 agreement and relative error on the out-of-distribution probes.",
    ]
    if accuracy:
        lines.append(
            "Validation accuracy of the float models (digits validation split) after the "
            "fine-tune" + (" -> after recalibrating BatchNorm:" if args.recalibrate_bn else ":")
        )
        lines += [
            f"  {label:<18}{tuned:.3f}" + ("" if after is None else f" -> {after:.3f}")
            for label, (tuned, after) in accuracy.items()
        ]
    if not args.fine_tune_epochs:
        lines.append(
            "The weights are untrained (random initialisation): the agreement measures the "
            "quantisation's fidelity on untrained networks, not the goal's after-fine-tune "
            "figure (use --fine-tune-epochs)."
        )
    if any(r["model"] == "ge" for r in result.rows):
        lines.append("ge is the floor's architecture (other weights): its ratio shows the noise.")
    return lines


def report(result, classes, accuracy, args, how, elapsed):
    """The benchmark's text report: setting, one line per model, notes, failures."""
    lines = _report_header(args, how)
    details = []
    for row in result.rows:
        label = row["model"]
        if row["error"]:
            lines.append(f"{label:<18}conversion failed (see below)")
            details.append(f"{label}: {row['error']}")
            continue
        floor_ratio = row[f"ratio_vs_{FLOOR}"]
        agreement = row["top1_agreement"]
        probe = row["probe_top1_agreement"]
        lines.append(
            f"{label:<18}{row['latency_median_ms']:>10.2f}{row['latency_p90_ms']:>9.2f}"
            f"{floor_ratio:>8.3f}{row[f'ratio_vs_{PLAIN}']:>8.3f}{row['partitions']:>6}"
            f"{row['size_bytes'] / 2**20:>7.2f}"
            f"{'-' if agreement is None else f'{agreement:.3f}':>10}{classes[label]:>8}"
            f"{'-' if probe is None else f'{probe:.3f}':>10}"
            f"{row['probe_relative_error']:>10.3f}  "
            f"{goal(label, row, floor_ratio, bool(args.fine_tune_epochs))}"
        )
        details += row_notes(label, row)
    lines += _report_notes(result, accuracy, args)
    folder = os.path.dirname(result.files["csv"])
    lines += ["", *details, "", f"Wall time {elapsed:.0f} s. Reports and .tflite files: {folder}"]
    return "\n".join(lines)


def main(argv=None):
    started = time.perf_counter()
    args = parse_args(argv)
    from keras_chanattn.bench import bench
    from keras_chanattn.export.files import write_text
    from keras_chanattn.layers import list_attention

    out = args.out or os.path.join(
        "export", "runs", f"bench-resnet50-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    )
    if args.models_from is not None:
        models, accuracy = load_models(args, args.blocks.split(",") if args.blocks else None)
        skipped = {}
        calibration, held_out, how = images(args)  # at the saved run's image size
        print(f"Data: {how}.")
    else:
        blocks = args.blocks.split(",") if args.blocks else list_attention()
        labels = [PLAIN, FLOOR, *blocks, *([SRM_SCALED] if "srm" in blocks else [])]
        unknown = sorted(set(args.extra_epochs) - set(labels))
        if unknown:
            sys.exit(
                f"--extra-epochs names {unknown}, not models of this run: {', '.join(labels)}."
            )
        saver = (
            ModelSaver(os.path.join(out, MODELS_FOLDER), args, labels) if args.save_models else None
        )
        calibration, held_out, how = images(args)
        print(f"Data: {how}.")
        if args.pretrain_epochs:
            args.weights = pretrain(args, out)
        models, skipped = build_models(args, blocks)
        for label, reason in skipped.items():
            print(f"skipping {label}: {reason}", file=sys.stderr)
        if args.block_init == "random":
            randomize_blocks(models, args.seed)
        accuracy = fine_tune(models, args, saver) if args.fine_tune_epochs else {}
        if saver is not None:
            saver.save_rest(models, accuracy)
    classes = distinct_classes(models, held_out)
    result = bench(
        models,
        out,
        formats=["int8"],
        baseline=[FLOOR, PLAIN],
        representative_data=calibration,
        validation_data=held_out,
        num_threads=args.threads,
        warmup=args.warmup,
        runs=args.runs,
        max_samples=args.held_out,
        num_calibration_samples=args.calibration,
        overwrite=args.overwrite,
        seed=args.seed,
        skipped=skipped,
        log=lambda *_: None,
    )
    text = report(result, classes, accuracy, args, how, time.perf_counter() - started)
    write_text(os.path.join(out, "resnet50_int8.txt"), text + "\n", args.overwrite)
    print(text)
    fine_tuned = bool(args.fine_tune_epochs)
    verdicts = [goal(r["model"], r, r[f"ratio_vs_{FLOOR}"], fine_tuned) for r in result.rows]
    return 1 if any(v.startswith("MISSED") for v in verdicts) else 0


if __name__ == "__main__":
    raise SystemExit(main())
