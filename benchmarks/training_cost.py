"""Benchmark: the training-step time of each attention block's network relative to the plain one.

Per backbone (CIFAR ResNet-20 at 32x32, batch 64; ResNet-50 at 112x112, batch 16) builds the
plain network and one per registered block, compiles each without and with XLA
(`jit_compile=True`), and times `train_on_batch` on one repeated in-memory batch: the models
take turns within each round, so that a busy machine slows them all alike. Prints per model
the median step time, its ratio to the plain network, the first call's time (tracing, and
XLA compilation) and, with XLA, whether it compiled (the error's one-line reason if not).
Then the slowest blocks alone, at each stage's feature-map shape: forward and
forward+backward time against an identity, and the backward pass's most frequent ops, to
show where their training time goes. From the repository root:

    python benchmarks/training_cost.py --backbone resnet20 --blocks se,sa --steps 5 --rounds 2
    python benchmarks/training_cost.py                 # both backbones, every block (CPU)
    # on a GPU, float32 and mixed precision in one command:
    for mp in "" --mixed-precision; do python benchmarks/training_cost.py $mp; done
"""

import argparse
import collections
import dataclasses
import re
import statistics
import sys
import time

import numpy as np

from keras_chanattn.models.presets import PLAIN


@dataclasses.dataclass(frozen=True)
class Setting:
    """How one backbone is timed: a preset name, its input size and batch size."""

    preset: str
    image_size: int
    batch_size: int
    small: bool  # the CIFAR network: grouped blocks get the small-network groups


SETTINGS = {
    "resnet20": Setting("resnet20", 32, 64, small=True),
    "resnet50": Setting("resnet50", 112, 16, small=False),
}
JIT_MODES = {"off": (False,), "on": (True,), "both": (False, True)}
NUM_CLASSES = 10


def parse_args(argv=None):
    from keras_chanattn.layers import list_attention

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", choices=[*SETTINGS, "both"], default="both")
    parser.add_argument("--blocks", default=None, help="comma-separated; default: all")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per model and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over the models")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps (first: compile)")
    parser.add_argument("--jit", choices=list(JIT_MODES), default="both")
    parser.add_argument("--mixed-precision", action="store_true", help="mixed_float16 policy")
    parser.add_argument("--profile", type=int, default=3, help="slowest N blocks timed alone")
    parser.add_argument("--image-size", type=int, default=None, help="override the backbone's")
    parser.add_argument("--batch-size", type=int, default=None, help="override the backbone's")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("steps", "rounds", "warmup", "image_size", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}.")
    if args.profile < 0:
        parser.error(f"--profile must be >= 0, got {args.profile}.")
    registered = list_attention()
    args.blocks = registered if args.blocks is None else args.blocks.split(",")
    unknown = [b for b in args.blocks if b not in registered]
    if unknown:
        parser.error(f"unknown blocks {unknown}; registered: {', '.join(registered)}.")
    return args


def one_line(error):
    """The line of an error message that says why (XLA's is deep in a long message), with the
    last frame of the op's creation outside the installed packages (the block's line)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    keys = ("unsupported", "not supported", "must be a compile-time constant", "xla")
    reason = next((line for line in lines if any(k in line.lower() for k in keys)), None)
    reason = reason or (lines[0] if lines else "")
    reason = re.sub(r"__inference_\w+(\[[^\]]*\])?", "<graph>", reason)
    frames = [f for f in lines if f.startswith("File ") and "site-packages" not in f]
    where = f" (at {frames[-1][5:]})" if frames else ""
    return f"{type(error).__name__}: {reason[:200]}{where}"


def build_models(setting, blocks, image_size, seed):
    """The plain backbone and one per block, `({label: model}, {block: reason})`."""
    import keras

    from keras_chanattn.bench.models import backbone_models
    from keras_chanattn.layers.registry import small_network_kwargs

    keras.utils.set_random_seed(seed)
    kwargs = {b: small_network_kwargs(b) for b in blocks} if setting.small else {}
    return backbone_models(
        setting.preset,
        blocks,
        attention_kwargs=kwargs,
        input_shape=(image_size, image_size, 3),
        num_classes=NUM_CLASSES,
    )


def batch(image_size, batch_size, seed):
    """One random batch of images and labels, the same for every model and step."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1.0, 1.0, (batch_size, image_size, image_size, 3)).astype("float32")
    return images, rng.integers(0, NUM_CLASSES, batch_size)


def compile_all(models, jit, images, labels, warmup):
    """Compiles each model (`jit_compile=jit`) and runs its warm-up steps.

    Returns `({label: seconds of the first step}, {label: reason})` where a model failed to
    compile or run; those models are left out of the timing.
    """
    import keras

    first, failed = {}, {}
    for label, model in models.items():
        optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
        model.compile(optimizer, "sparse_categorical_crossentropy", jit_compile=jit)
        try:
            start = time.perf_counter()
            model.train_on_batch(images, labels)
            first[label] = time.perf_counter() - start
            for _ in range(warmup - 1):
                model.train_on_batch(images, labels)
        except Exception as error:  # noqa: BLE001 - reported per model, the others go on
            failed[label] = one_line(error)
    return first, failed


def time_steps(models, images, labels, steps, rounds):
    """`{label: [seconds per step]}`, the models taking turns within each round."""
    seconds = {label: [] for label in models}
    for _ in range(rounds):
        for label, model in models.items():
            for _ in range(steps):
                start = time.perf_counter()
                model.train_on_batch(images, labels)  # returns floats: the step has finished
                seconds[label].append(time.perf_counter() - start)
    return seconds


def measure(models, jit, images, labels, args):
    """Rows `{label, step_ms, ratio, first_s, xla}` for one jit mode, plain first."""
    first, failed = compile_all(models, jit, images, labels, args.warmup)
    running = {label: m for label, m in models.items() if label not in failed}
    seconds = time_steps(running, images, labels, args.steps, args.rounds)
    median = {label: statistics.median(s) * 1e3 for label, s in seconds.items()}
    plain = median.get(PLAIN)
    rows = []
    for label in models:
        ms = median.get(label)
        xla = ("ok" if label not in failed else "FAILED") if jit else "-"
        rows.append(
            {
                "label": label,
                "step_ms": ms,
                "ratio": ms / plain if ms is not None and plain else None,
                "first_s": first.get(label),
                "xla": xla,
                "reason": failed.get(label),
            }
        )
    return rows


def print_table(title, rows):
    from keras_chanattn.tables import Column, format_table

    columns = [
        Column("label", "model", align="left"),
        Column("step_ms", "step ms", "{:.1f}"),
        Column("ratio", "x plain", "{:.2f}"),
        Column("first_s", "1st step s", "{:.1f}"),
        Column("xla", "XLA", align="left"),
    ]
    print(f"\n{title}")
    print(format_table(rows, columns, markdown=False))
    for row in rows:
        if row["reason"]:
            print(f"  {row['label']}: {row['reason']}")


def block_sites(model):
    """`[(input shape, first layer, count)]`: the model's attention layers by feature-map shape."""
    from keras_chanattn.layers import AttentionLayer

    sites = {}
    for layer in model.layers:
        if isinstance(layer, AttentionLayer):
            shape = tuple(layer.input.shape[1:])
            first, count = sites.get(shape, (layer, 0))
            sites[shape] = (first, count + 1)
    return [(shape, layer, count) for shape, (layer, count) in sites.items()]


def _identity(x, training=None):
    return x


def _timed(function, x, steps):
    """Median milliseconds of `function(x)` over `steps` calls, after one untimed call."""
    function(x).numpy()
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        function(x).numpy()  # a scalar: the call has finished
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds) * 1e3


def layer_functions(layer, x, jit):
    """A forward and a forward+backward function of `layer` (any callable), each summed to a
    scalar; the gradient is taken for the input and the layer's trainable variables."""
    import tensorflow as tf

    variables = list(getattr(layer, "trainable_variables", []))
    dy = tf.random.stateless_uniform(x.shape, (0, 1), dtype="float32")

    @tf.function(jit_compile=jit, autograph=False)
    def forward(x):
        return tf.reduce_sum(tf.cast(layer(x, training=True), "float32"))

    @tf.function(jit_compile=jit, autograph=False)
    def train(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.cast(layer(x, training=True), "float32") * dy)
        grads = tape.gradient(loss, [x, *variables])
        return tf.add_n([tf.reduce_sum(tf.cast(g, "float32")) for g in grads])

    return forward, train


def backward_ops(train, x, top=5):
    """The most frequent op types of the gradient part of `train`'s graph, as text."""
    graph = train.get_concrete_function(x).graph
    counts = collections.Counter(
        op.type for op in graph.get_operations() if op.name.startswith("gradient")
    )
    skip = {"Identity", "Const", "Shape", "ZerosLike", "OnesLike", "Fill", "NoOp"}
    common = [(t, n) for t, n in counts.most_common() if t not in skip][:top]
    return ", ".join(f"{t} x{n}" for t, n in common)


def profile_block(label, model, batch_size, jit, steps):
    """Rows: `label`'s layer alone at each feature-map shape of `model`, net of an identity."""
    import tensorflow as tf

    rows = []
    for shape, layer, count in block_sites(model):
        x = tf.random.stateless_uniform((batch_size, *shape), (1, 2), dtype=layer.compute_dtype)
        times = {}
        for name, function in (("block", layer), ("identity", _identity)):
            forward, train = layer_functions(function, x, jit)
            times[name] = (_timed(forward, x, steps), _timed(train, x, steps))
            if name == "block":
                ops = backward_ops(train, x)
        fwd, both = (times["block"][i] - times["identity"][i] for i in (0, 1))
        rows.append(
            {
                "label": label,
                "shape": "x".join(str(d) for d in shape),
                "count": count,
                "fwd_ms": fwd,
                "bwd_ms": both - fwd,
                "step_ms": both * count,
                "ops": ops,
            }
        )
    return rows


def profile_slowest(models, rows, args, jit):
    """Times the `args.profile` slowest blocks (by ratio in `rows`) alone; prints a table."""
    from keras_chanattn.tables import Column, format_table

    ranked = sorted(
        (r for r in rows if r["label"] != PLAIN and r["ratio"] is not None),
        key=lambda r: r["ratio"],
        reverse=True,
    )
    table = []
    for row in ranked[: args.profile]:
        try:
            table += profile_block(row["label"], models[row["label"]], args.batch, jit, args.steps)
        except Exception as error:  # noqa: BLE001 - one block's failure is reported
            print(f"  {row['label']} alone: {one_line(error)}")
    if not table:
        return
    columns = [
        Column("label", "block", align="left"),
        Column("shape", "map", align="left"),
        Column("count", "n"),
        Column("fwd_ms", "fwd ms", "{:.2f}"),
        Column("bwd_ms", "bwd ms", "{:.2f}"),
        Column("step_ms", "n x (fwd+bwd) ms", "{:.1f}"),
        Column("ops", "backward ops (most frequent)", align="left"),
    ]
    print(f"\nSlowest blocks alone (jit_compile={jit}), net of an identity, per layer:")
    print(format_table(table, columns, markdown=False))


def run_backbone(name, args):
    """Times one backbone in each jit mode; prints its tables."""
    setting = SETTINGS[name]
    size = args.image_size or setting.image_size
    args.batch = args.batch_size or setting.batch_size
    models, skipped = build_models(setting, args.blocks, size, args.seed)
    for block, reason in skipped.items():
        print(f"{block}: not built on {name}: {reason}")
    images, labels = batch(size, args.batch, args.seed)
    for jit in JIT_MODES[args.jit]:
        rows = measure(models, jit, images, labels, args)
        title = (
            f"{name} at {size}x{size}, batch {args.batch}, jit_compile={jit}: median of "
            f"{args.steps * args.rounds} steps ({args.rounds} rounds of {args.steps})"
        )
        print_table(title, rows)
        if args.profile:
            profile_slowest(models, rows, args, jit)


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    import keras
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # the blocks alone: one new tf.function per shape
    if args.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    devices = [d.name for d in tf.config.list_logical_devices() if d.device_type != "CPU"]
    policy = keras.mixed_precision.global_policy().name
    print(f"Devices: {', '.join(devices) or 'CPU only'}; dtype policy {policy}")
    if args.mixed_precision and not devices:
        print("Note: mixed_float16 on CPU: float16 is emulated there; the times say nothing")
        print("of a GPU's.")
    backbones = list(SETTINGS) if args.backbone == "both" else [args.backbone]
    for name in backbones:
        run_backbone(name, args)
    print(f"\nTotal time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
