"""ResNets with any attention block at any position: ImageNet (18-152) and CIFAR (6n+2, 9n+2).

Deep Residual Learning for Image Recognition (He et al., CVPR 2016):
https://arxiv.org/abs/1512.03385. The attention placements are the Squeeze-and-Excitation
paper's integration study (Hu et al., https://arxiv.org/abs/1709.01507, section 6.5):

- `"standard"`: on the residual branch after its last BatchNorm, before the add;
- `"pre"`: on the residual branch's input, before its first convolution (the shortcut
  takes the block's input unchanged);
- `"post"`: after the add and its ReLU, on the block's output;
- `"identity"`: on the shortcut, parallel to the residual branch (after the projection
  where the block has one);
- `"3x3"`: inside the residual branch after the spatial 3x3 convolution (and its BN and
  ReLU): the bottleneck's 3x3 conv; in a basic block, its first 3x3 conv.

Layer names say where everything is: `stage{s}_block{b}_conv1`, `..._bn1`, `..._attention`,
`..._add`, `..._out`. Stages of the ImageNet ResNets are numbered 2 to 5 as the ResNet
paper's conv2_x..conv5_x (the SE paper's stage study uses the same numbers); the CIFAR
ResNets' three stages are 1 to 3.

The networks follow torchvision's ResNet ("v1.5": the stride of a bottleneck is in its
3x3 conv), which the reference implementations of SRM, ECA, SA, CBAM, SGE and Triplet
build on: convolutions without bias, BatchNorm with PyTorch's epsilon 1e-5 and momentum
(Keras 0.9), PyTorch-style symmetric padding of strided convolutions.
"""

import keras
from keras import layers

from keras_chanattn.models.blocks import (
    AttentionPlacer,
    ZeroPadShortcut,
    check_head,
    classifier_head,
    conv_bn,
)
from keras_chanattn.models.placement import attention_label

RESNET_POSITIONS = ("standard", "pre", "post", "identity", "3x3")

# depth -> (block type, blocks per stage)
IMAGENET_DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
IMAGENET_STAGES = (2, 3, 4, 5)
CIFAR_STAGES = (1, 2, 3)

# Kernel sizes of ECA's official ResNet-50 checkpoint, per stage.
ECA_RESNET50_KERNELS = {
    2: {"kernel_size": 3},
    3: {"kernel_size": 5},
    4: {"kernel_size": 5},
    5: {"kernel_size": 7},
}

_EXPANSION = {"basic": 1, "bottleneck": 4}


def _residual_block(x, filters, strides, kind, shortcut, prefix, stage, block, attend):
    """One residual block (post-activation, ResNet v1.5); `attend` places the attention."""
    out_channels = filters * _EXPANSION[kind]
    block_input = x
    branch = attend(x, "pre", stage, block, prefix)
    if kind == "bottleneck":
        y = conv_bn(branch, filters, 1, 1, f"{prefix}1")
        y = conv_bn(y, filters, 3, strides, f"{prefix}2")
        y = attend(y, "3x3", stage, block, prefix)
        y = conv_bn(y, out_channels, 1, 1, f"{prefix}3", activation=None)
    else:
        y = conv_bn(branch, filters, 3, strides, f"{prefix}1")
        y = attend(y, "3x3", stage, block, prefix)
        y = conv_bn(y, out_channels, 3, 1, f"{prefix}2", activation=None)
    y = attend(y, "standard", stage, block, prefix)

    skip = block_input
    if strides != 1 or block_input.shape[-1] != out_channels:
        if shortcut == "zero_pad":
            skip = ZeroPadShortcut(out_channels, strides, name=f"{prefix}shortcut_pad")(skip)
        else:
            skip = conv_bn(skip, out_channels, 1, strides, f"{prefix}shortcut", activation=None)
    skip = attend(skip, "identity", stage, block, prefix)

    out = layers.Add(name=f"{prefix}add")([skip, y])
    out = layers.Activation("relu", name=f"{prefix}out")(out)
    return attend(out, "post", stage, block, prefix)


def _model_name(name, attention, base):
    if name is not None:
        return name
    label = attention_label(attention)
    return f"{label}_{base}" if label else base


def resnet(
    depth=50,
    attention=None,
    *,
    position="standard",
    stages="all",
    stage_kwargs=None,
    include_top=True,
    num_classes=1000,
    input_shape=(224, 224, 3),
    pooling=None,
    classifier_activation="softmax",
    base_channels=64,
    name=None,
    **attention_kwargs,
):
    """Builds an ImageNet ResNet (18, 34, 50, 101 or 152) with an attention block.

    The plain network (`attention=None`) is torchvision's ResNet: a 7x7/2 stem and 3x3/2
    max pool, then four stages of basic (18, 34) or bottleneck (50, 101, 152) blocks of
    64, 128, 256, 512 base channels (bottlenecks expand 4x); the first block of stages
    3-5 has stride 2 (in the 3x3 conv) and a 1x1 projection shortcut.

    Args:
        depth: 18, 34, 50, 101 or 152. Defaults to `50`.
        attention: registered block name (e.g. `"srm"`), layer class, layer instance
            (a template cloned per site from its config), or `None` for the plain
            network. Defaults to `None`.
        position: `"standard"`, `"pre"`, `"post"`, `"identity"` or `"3x3"` (see the
            module docstring). Defaults to `"standard"`.
        stages: `"all"` or the stage numbers (2 to 5) that carry a block, e.g. `(4,)`.
            Defaults to `"all"`.
        stage_kwargs: per-stage block arguments overriding `**attention_kwargs`, as
            `{stage: {arg: value}}` (e.g. ECA's per-stage kernel sizes), or a callable
            taking the `AttentionSite` and returning a dict. Defaults to `None`.
        include_top: end with global average pooling and a Dense classifier.
            Defaults to `True`.
        num_classes: classes of the classifier. Defaults to `1000`.
        input_shape: `(height, width, channels)`; height and width may be `None`.
            Defaults to `(224, 224, 3)`.
        pooling: without the top, `None` (4-D features), `"avg"` or `"max"`.
            Defaults to `None`.
        classifier_activation: activation of the classifier. Defaults to `"softmax"`.
        base_channels: channels of the first stage (the others double). Defaults to `64`.
        name: model name. Defaults to e.g. `"srm_resnet50"`.
        **attention_kwargs: constructor arguments of every block, e.g. `reduction=8`.

    Returns:
        A functional `keras.Model`. A block that cannot be built at some site (say
        ShuffleAttention's `groups` not dividing the channels) raises a `ValueError`
        naming the site and how to give that stage other arguments.

    Example:

    >>> model = resnet(50, "srm")
    >>> model = resnet(50, "se", reduction=8, stages=(3, 4, 5), include_top=False)
    """
    shape = check_head(include_top, num_classes, pooling, input_shape, "resnet()")
    kind, blocks = imagenet_block_layout(depth)
    attend = AttentionPlacer(
        attention,
        position,
        RESNET_POSITIONS,
        stages,
        IMAGENET_STAGES,
        stage_kwargs,
        attention_kwargs,
    )
    inputs = keras.Input(shape, name="image")
    x = _imagenet_stem(inputs, base_channels)
    x = _stages(x, IMAGENET_STAGES, blocks, kind, "projection", base_channels, attend)
    outputs = classifier_head(x, include_top, num_classes, pooling, classifier_activation)
    return keras.Model(inputs, outputs, name=_model_name(name, attention, f"resnet{depth}"))


def imagenet_block_layout(depth):
    """Block type and blocks per stage of the ImageNet ResNet of `depth` (18 to 152)."""
    if depth not in IMAGENET_DEPTHS:
        raise ValueError(
            f"`depth` must be one of {sorted(IMAGENET_DEPTHS)} for the ImageNet ResNet, got "
            f"{depth!r}. For CIFAR-sized inputs (20, 32, 44, 56, 110, 164...) use cifar_resnet."
        )
    return IMAGENET_DEPTHS[depth]


def _imagenet_stem(inputs, channels):
    """torchvision's stem: 7x7/2 conv-BN-ReLU, then a 3x3/2 max pool."""
    x = conv_bn(inputs, channels, 7, 2, "stem")
    x = layers.ZeroPadding2D(1, name="stem_pool_pad")(x)
    return layers.MaxPooling2D(3, strides=2, name="stem_pool")(x)


def _stages(x, stage_numbers, blocks, kind, shortcut, base_channels, attend):
    """The residual stages: channels double and the first block strides 2 from stage two on."""
    first = stage_numbers[0]
    for stage, count in zip(stage_numbers, blocks, strict=True):
        filters = base_channels * 2 ** (stage - first)
        for block in range(1, count + 1):
            strides = 2 if block == 1 and stage > first else 1
            prefix = f"stage{stage}_block{block}_"
            x = _residual_block(x, filters, strides, kind, shortcut, prefix, stage, block, attend)
    return x


def cifar_block_layout(depth, block=None):
    """Block type and blocks per stage of a CIFAR ResNet of `depth`.

    Basic blocks: depth = 6n + 2 (8, 14, 20, 32, 44, 56, 110, ...); bottlenecks: depth =
    9n + 2 (11, 20, 29, ..., 164, 1001). With `block=None` a depth of 164 or more that
    fits 9n + 2 gets bottlenecks (ResNet-164, -1001 of the papers), others basic blocks.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8:
        raise ValueError(f"`depth` must be an integer 6n + 2 or 9n + 2, got {depth!r}.")
    if block is None:
        block = "bottleneck" if depth >= 164 and (depth - 2) % 9 == 0 else "basic"
    if block not in _EXPANSION:
        raise ValueError(f"`block` must be 'basic', 'bottleneck' or None, got {block!r}.")
    per_block = 2 if block == "basic" else 3
    if (depth - 2) % (3 * per_block):
        form = "6n + 2" if block == "basic" else "9n + 2"
        step = 3 * per_block
        near = [
            d for d in range(depth - 2 * step, depth + 2 * step) if d > 2 and (d - 2) % step == 0
        ]
        raise ValueError(
            f"A CIFAR ResNet of {block} blocks has depth {form}; got {depth}. Valid depths "
            f"near it: {near}."
        )
    n = (depth - 2) // (3 * per_block)
    return block, (n, n, n)


def cifar_resnet(
    depth=20,
    attention=None,
    *,
    block=None,
    shortcut=None,
    position="standard",
    stages="all",
    stage_kwargs=None,
    include_top=True,
    num_classes=10,
    input_shape=(32, 32, 3),
    pooling=None,
    classifier_activation="softmax",
    base_channels=16,
    name=None,
    **attention_kwargs,
):
    """Builds a CIFAR ResNet (the ResNet paper's 6n + 2 family, and 9n + 2 bottlenecks).

    A 3x3 stem of 16 channels, then three stages of `n` blocks at 16, 32, 64 base channels
    (bottlenecks expand 4x, as ResNet-164), stride 2 at the first block of stages 2 and 3,
    global average pooling and the classifier; the networks of the SE and SRM papers'
    CIFAR tables.

    Args:
        depth: 6n + 2 with basic blocks (20, 32, 44, 56, 110), or 9n + 2 with bottlenecks
            (164). Defaults to `20`.
        attention: registered block name, layer class, layer instance (template) or
            `None`. Defaults to `None`.
        block: `"basic"`, `"bottleneck"`, or `None` to choose from the depth (bottlenecks
            from 164 up). Defaults to `None`.
        shortcut: where the shape changes, `"zero_pad"` (the ResNet paper's parameter-free
            option A, used for its CIFAR networks: ResNet-20 has 0.27M parameters) or
            `"projection"` (1x1 conv and BN). `None` picks `"zero_pad"` for basic and
            `"projection"` for bottleneck blocks (as ResNet-164). Defaults to `None`.
        position: `"standard"`, `"pre"`, `"post"`, `"identity"` or `"3x3"`.
            Defaults to `"standard"`.
        stages: `"all"` or stage numbers (1 to 3). Defaults to `"all"`.
        stage_kwargs: per-stage block arguments, `{stage: {arg: value}}`, or a callable
            taking the `AttentionSite`. Defaults to `None`.
        include_top: end with pooling and a Dense classifier. Defaults to `True`.
        num_classes: classes. Defaults to `10`.
        input_shape: `(height, width, channels)`. Defaults to `(32, 32, 3)`.
        pooling: without the top, `None`, `"avg"` or `"max"`. Defaults to `None`.
        classifier_activation: activation of the classifier. Defaults to `"softmax"`.
        base_channels: channels of the first stage. Defaults to `16`.
        name: model name. Defaults to e.g. `"srm_resnet56"`.
        **attention_kwargs: constructor arguments of every block.

    Returns:
        A functional `keras.Model`.

    Example:

    >>> model = cifar_resnet(56, "srm")
    """
    shape = check_head(include_top, num_classes, pooling, input_shape, "cifar_resnet()")
    kind, blocks = cifar_block_layout(depth, block)
    shortcut = _cifar_shortcut(shortcut, kind)
    attend = AttentionPlacer(
        attention, position, RESNET_POSITIONS, stages, CIFAR_STAGES, stage_kwargs, attention_kwargs
    )
    inputs = keras.Input(shape, name="image")
    x = conv_bn(inputs, base_channels, 3, 1, "stem")
    x = _stages(x, CIFAR_STAGES, blocks, kind, shortcut, base_channels, attend)
    outputs = classifier_head(x, include_top, num_classes, pooling, classifier_activation)
    return keras.Model(inputs, outputs, name=_model_name(name, attention, f"resnet{depth}"))


def _cifar_shortcut(shortcut, kind):
    """The shortcut where the shape changes: `None` picks the papers' choice for `kind`."""
    if shortcut is None:
        return "zero_pad" if kind == "basic" else "projection"
    if shortcut not in ("zero_pad", "projection"):
        raise ValueError(f"`shortcut` must be 'zero_pad', 'projection' or None, got {shortcut!r}.")
    return shortcut


def _named(builder, depth, attention, summary, **defaults):
    """A named constructor: `builder(depth, attention, **defaults, **kwargs)`."""

    def constructor(**kwargs):
        for key, value in defaults.items():
            kwargs.setdefault(key, value)
        return builder(depth, attention, **kwargs)

    label = f"{attention}_" if attention else ""
    family = "resnet" if builder is resnet else "cifar_resnet"
    constructor.__name__ = constructor.__qualname__ = f"{label}resnet{depth}"
    constructor.__doc__ = (
        f"{summary}\n\n    `{family}({depth}, {attention!r}, **kwargs)`"
        + (f" with {defaults}" if defaults else "")
        + f"; takes every keyword argument of `{family}`.\n    "
    )
    return constructor


resnet18 = _named(resnet, 18, None, "ResNet-18 (basic blocks), ImageNet-sized input.")
resnet34 = _named(resnet, 34, None, "ResNet-34 (basic blocks), ImageNet-sized input.")
resnet50 = _named(resnet, 50, None, "ResNet-50 (bottlenecks), ImageNet-sized input.")
resnet101 = _named(resnet, 101, None, "ResNet-101 (bottlenecks), ImageNet-sized input.")
resnet152 = _named(resnet, 152, None, "ResNet-152 (bottlenecks), ImageNet-sized input.")

se_resnet50 = _named(resnet, 50, "se", "SE-ResNet-50: Squeeze-and-Excitation, r = 16.")
se_resnet101 = _named(resnet, 101, "se", "SE-ResNet-101: Squeeze-and-Excitation, r = 16.")
srm_resnet50 = _named(resnet, 50, "srm", "SRM-ResNet-50: style-based recalibration.")
srm_resnet101 = _named(resnet, 101, "srm", "SRM-ResNet-101: style-based recalibration.")
sa_resnet50 = _named(resnet, 50, "sa", "SA-ResNet-50: Shuffle Attention, 64 groups.")
sa_resnet101 = _named(resnet, 101, "sa", "SA-ResNet-101: Shuffle Attention, 64 groups.")
cbam_resnet50 = _named(resnet, 50, "cbam", "CBAM-ResNet-50: channel then spatial attention.")
sge_resnet50 = _named(resnet, 50, "sge", "SGE-ResNet-50: spatial group-wise enhance, 64 groups.")
triplet_resnet50 = _named(resnet, 50, "triplet", "Triplet-attention ResNet-50.")
gc_resnet50 = _named(resnet, 50, "gc", "GC-ResNet-50: global context block, r = 1/16.")


def eca_resnet50(**kwargs):
    """ECA-ResNet-50 with the official checkpoint's kernel sizes 3, 5, 5, 7 per stage.

    `resnet(50, "eca", stage_kwargs={2: {"kernel_size": 3}, ...}, **kwargs)`; pass
    `kernel_size=` (every stage) or `stage_kwargs=` to choose others, or
    `kernel_size=None` for ECA's adaptive size. Takes every keyword argument of `resnet`.
    """
    if "kernel_size" not in kwargs:
        kwargs.setdefault("stage_kwargs", ECA_RESNET50_KERNELS)
    return resnet(50, "eca", **kwargs)


resnet20 = _named(cifar_resnet, 20, None, "CIFAR ResNet-20 (basic blocks).")
resnet32 = _named(cifar_resnet, 32, None, "CIFAR ResNet-32 (basic blocks).")
resnet44 = _named(cifar_resnet, 44, None, "CIFAR ResNet-44 (basic blocks).")
resnet56 = _named(cifar_resnet, 56, None, "CIFAR ResNet-56 (basic blocks).")
resnet110 = _named(cifar_resnet, 110, None, "CIFAR ResNet-110 (basic blocks).")
resnet164 = _named(cifar_resnet, 164, None, "CIFAR ResNet-164 (bottlenecks).")
se_resnet56 = _named(cifar_resnet, 56, "se", "CIFAR SE-ResNet-56.")
se_resnet110 = _named(cifar_resnet, 110, "se", "CIFAR SE-ResNet-110.")
se_resnet164 = _named(cifar_resnet, 164, "se", "CIFAR SE-ResNet-164 (bottlenecks).")
srm_resnet56 = _named(cifar_resnet, 56, "srm", "CIFAR SRM-ResNet-56.")
srm_resnet110 = _named(cifar_resnet, 110, "srm", "CIFAR SRM-ResNet-110.")
srm_resnet164 = _named(cifar_resnet, 164, "srm", "CIFAR SRM-ResNet-164 (bottlenecks).")
