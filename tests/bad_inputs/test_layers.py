"""Bad inputs to the attention blocks and builders: each is refused with a `ValueError` that
names the argument or input, the value and the fix.

Constructor arguments are checked on every layer class the package exports (registered
blocks and their inference forms), by the kind of each argument; input shapes, channel
counts and Keras' global image data format on every registered block.
"""

import inspect
import math
import re

import keras
import pytest

import keras_chanattn
from keras_chanattn.layers import get_attention_class, list_attention
from keras_chanattn.layers.registry import small_network_kwargs
from keras_chanattn.models import cifar_resnet, mobilenet_v2, resnet

NAMES = list_attention()


def _layer_classes():
    """Every layer class the package exports with a constructor of its own: the registered
    blocks, their inference forms and ConvGate."""
    classes = [getattr(keras_chanattn.layers, name) for name in keras_chanattn.layers.__all__]
    return sorted(
        (
            cls
            for cls in classes
            if isinstance(cls, type)
            and issubclass(cls, keras.layers.Layer)
            and cls.__init__.__module__.startswith("keras_chanattn.")
        ),
        key=lambda cls: cls.__name__,
    )


LAYER_CLASSES = _layer_classes()

NAN, INF = math.nan, math.inf

# Constructor arguments by kind: bad values and the message each must give. Bools are
# found by their default; every other argument must be listed here (see the first test).
KINDS = {
    "count": (
        {"groups", "min_channels", "divisor", "kernel_size", "extent"},
        [0, -3, 2.5, "8", True],
        r"`{arg}` must be an integer >= 1, got {value}",
    ),
    "ratio": (
        {"reduction"},
        [0.5, 0, NAN, INF, "16"],
        r"`{arg}` must be a finite number >= 1, got {value}",
    ),
    "positive": (
        {"epsilon", "bn_epsilon", "gamma"},
        [0.0, -1e-5, NAN, INF, "1e-5"],
        r"`{arg}` must be a finite number > 0, got {value}",
    ),
    "finite": ({"b"}, [NAN, -INF, "1"], r"`{arg}` must be a finite number, got {value}"),
    "momentum": (
        {"bn_momentum"},
        [1.0, -0.1, NAN, "0.9"],
        r"`bn_momentum` must be a number in \[0, 1\)",
    ),
    "choice": (
        {"pooling", "fusion", "gate_activation"},
        ["bogus", None],
        r"`{arg}` must be one of \[.*\], got {value}",
    ),
    "activation": ({"activation"}, ["bogus"], r"`activation` must name a Keras activation"),
    "bool": (set(), ["no", "False", 1, 0, None], r"`{arg}` must be True or False, got {value}"),
}


def constructor_arguments(cls):
    """`{name: default}` of the class's own constructor arguments."""
    parameters = inspect.signature(cls.__init__).parameters
    return {k: p.default for k, p in parameters.items() if k not in ("self", "kwargs")}


def kind_of(argument, default):
    if isinstance(default, bool):
        return "bool"
    for kind, (names, _, _) in KINDS.items():
        if argument in names:
            return kind
    return None


def argument_cases():
    cases = []
    for cls in LAYER_CLASSES:
        for argument, default in constructor_arguments(cls).items():
            kind = kind_of(argument, default)
            for value in KINDS[kind][1] if kind else []:
                cases.append(
                    pytest.param(
                        cls, argument, value, kind, id=f"{cls.__name__}-{argument}={value!r}"
                    )
                )
    return cases


def test_every_constructor_argument_has_a_kind():
    """A new argument must be given a kind here, so that its bad values are tried too."""
    unknown = [
        f"{cls.__name__}.{argument}"
        for cls in LAYER_CLASSES
        for argument, default in constructor_arguments(cls).items()
        if kind_of(argument, default) is None
    ]
    assert not unknown, f"constructor arguments with no kind in KINDS: {unknown}"


@pytest.mark.parametrize(("cls", "argument", "value", "kind"), argument_cases())
def test_bad_constructor_argument_is_refused(cls, argument, value, kind):
    message = KINDS[kind][2].format(arg=argument, value=re.escape(repr(value)))
    with pytest.raises(ValueError, match=message):
        cls(**{argument: value})


@pytest.mark.parametrize("value", [2, 4])
@pytest.mark.parametrize("cls", ["eca", "spatial_attention", "cbam", "triplet"])
def test_even_kernel_size_is_refused(cls, value):
    with pytest.raises(
        ValueError, match=rf"`kernel_size` must be odd.*got {value}\. Use {value + 1}"
    ):
        get_attention_class(cls)(kernel_size=value)


def test_unbiased_as_a_string_is_not_taken_for_true():
    """The issue's example: `unbiased="no"` was stored as True."""
    for name in ("srm", "sge"):
        with pytest.raises(
            ValueError, match=r"`unbiased` must be True or False, got 'no' \(str\)\. Pass a bool"
        ):
            keras_chanattn.create_attention(name, unbiased="no")


def test_whole_float_count_names_the_int_to_pass():
    with pytest.raises(
        ValueError, match=r"`groups` must be an integer >= 1, got 8\.0.*Pass groups=8"
    ):
        keras_chanattn.create_attention("sge", groups=8.0)


def small_layer(name, **overrides):
    return keras_chanattn.create_attention(name, **{**small_network_kwargs(name, 16), **overrides})


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((None, 8, 16), r"expects a 4-D input \(batch, height, width, channels\).*rank 3"),
        ((None, 2, 8, 8, 16), r"expects a 4-D input \(batch, height, width, channels\).*rank 5"),
        ((None, 8, 8, None), r"needs a known channel dimension.*keras\.Input\(\(None, None, 3\)\)"),
        ((None, 8, 8, 0), r"needs at least 1 channel"),
    ],
    ids=["rank3", "rank5", "unknown-channels", "zero-channels"],
)
@pytest.mark.parametrize("name", NAMES)
def test_bad_input_shape_is_refused_at_build(name, shape, message):
    layer = small_layer(name)
    with pytest.raises(ValueError, match=message):
        layer.build(shape)
    assert not layer.built


@pytest.fixture(autouse=True)
def global_format_is_restored():
    """Every test leaves Keras' image data format as it found it."""
    before = keras.config.image_data_format()
    yield
    assert keras.config.image_data_format() == before


@pytest.fixture
def channels_first():
    """Keras' global image data format set to channels_first for the test, then restored."""
    before = keras.config.image_data_format()
    keras.config.set_image_data_format("channels_first")
    try:
        yield
    finally:
        keras.config.set_image_data_format(before)


CHANNELS_FIRST_MESSAGE = (
    r"takes channels-last \(NHWC\) feature maps.*image_data_format\(\) is 'channels_first'.*"
    r'keras\.config\.set_image_data_format\("channels_last"\)'
)


@pytest.mark.parametrize("name", NAMES)
def test_block_refuses_a_channels_first_global_format(name, channels_first):
    layer = small_layer(name)
    with pytest.raises(ValueError, match=rf"{type(layer).__name__} {CHANNELS_FIRST_MESSAGE}"):
        layer.build((None, 8, 8, 16))


def test_conv_gate_refuses_a_channels_first_global_format(channels_first):
    with pytest.raises(ValueError, match=rf"ConvGate {CHANNELS_FIRST_MESSAGE}"):
        keras_chanattn.layers.ConvGate().build((None, 8, 8, 2))


@pytest.mark.parametrize(
    ("builder", "kwargs"),
    [
        (resnet, {"depth": 18, "attention": "se", "input_shape": (32, 32, 3)}),
        (resnet, {"depth": 18, "attention": None, "input_shape": (32, 32, 3)}),
        (cifar_resnet, {"depth": 20, "attention": "srm"}),
        (cifar_resnet, {"depth": 20, "attention": "eca", "input_shape": (3, 32, 32)}),
        (mobilenet_v2, {"attention": "cbam", "alpha": 0.35, "input_shape": (32, 32, 3)}),
    ],
    ids=["resnet-se", "resnet-plain", "cifar-srm", "cifar-eca-nchw-shape", "mobilenet-cbam"],
)
def test_builder_refuses_a_channels_first_global_format_before_building(
    builder, kwargs, channels_first
):
    before = keras.backend.get_uid("conv2d")
    with pytest.raises(ValueError, match=rf"{builder.__name__}\(\) {CHANNELS_FIRST_MESSAGE}"):
        builder(**kwargs)
    # Refused before any layer was made: no new convolution took a name.
    assert keras.backend.get_uid("conv2d") == before + 1


def test_add_attention_refuses_a_channels_first_global_format(channels_first):
    keras.config.set_image_data_format("channels_last")
    inputs = keras.Input((8, 8, 16))
    x = keras.layers.Add()([inputs, keras.layers.Conv2D(16, 3, padding="same")(inputs)])
    model = keras.Model(inputs, x)
    keras.config.set_image_data_format("channels_first")
    with pytest.raises(ValueError, match=rf"add_attention\(\) {CHANNELS_FIRST_MESSAGE}"):
        keras_chanattn.add_attention(model, "se")


@pytest.mark.parametrize(
    ("name", "kwargs", "shape", "message"),
    [
        (
            "sge",
            {"groups": 8},
            (None, 8, 8, 4),
            r"divisible by groups = 8, got 4 channels.*groups=4",
        ),
        (
            "sge",
            {"groups": 64},
            (None, 8, 8, 16),
            r"divisible by groups = 64, got 16 channels.*groups=16",
        ),
        (
            "sa",
            {"groups": 8},
            (None, 8, 8, 8),
            r"divisible by 2 \* groups = 16, got 8 channels.*groups=4",
        ),
        ("sa", {"groups": 64}, (None, 8, 8, 16), r"2 \* groups = 128, got 16 channels.*groups=8"),
        ("sa", {"groups": 1}, (None, 8, 8, 15), r"needs an even channel count.*got 15 channels"),
        ("sa", {"groups": 1}, (None, 8, 8, 1), r"needs an even channel count.*got 1 channels"),
        ("sa", {"groups": 8}, (None, 64, 6, 6), r"got 6 channels.*looks channels-first.*transpose"),
        (
            "sge",
            {"groups": 8},
            (None, 16, 4, 4),
            r"got 4 channels.*looks channels-first.*transpose",
        ),
        ("ge", {"parametric": True}, (None, None, None, 16), r"needs a known height and width"),
    ],
    ids=[
        "sge-8-groups-4-channels",
        "sge-default-groups-16-channels",
        "sa-8-groups-8-channels",
        "sa-default-groups-16-channels",
        "sa-odd-channels",
        "sa-one-channel",
        "sa-nchw-hint",
        "sge-nchw-hint",
        "ge-parametric-unknown-size",
    ],
)
def test_channels_the_block_cannot_take_are_refused_at_build(name, kwargs, shape, message):
    layer = keras_chanattn.create_attention(name, **kwargs)
    with pytest.raises(ValueError, match=message):
        layer.build(shape)


@pytest.mark.parametrize("shape", [(None, 8, 8, 16), (None, 8, 8, 24)])
def test_divisibility_error_gives_no_channels_first_hint_for_an_nhwc_shape(shape):
    with pytest.raises(ValueError) as error:
        keras_chanattn.create_attention("sa", groups=5).build(shape)
    assert "channels-first" not in str(error.value)


def test_parametric_gather_refuses_another_spatial_size():
    layer = keras_chanattn.create_attention("ge", parametric=True)
    layer.build((None, 8, 8, 16))
    with pytest.raises(ValueError, match=r"built for 8x8 feature maps.*got an input of 6x6"):
        layer(keras.ops.zeros((1, 6, 6, 16)))


@pytest.mark.parametrize("name", ["se", "gc", "channel_attention", "cbam"])
def test_reduction_larger_than_the_channels_floors_the_bottleneck(name):
    """Too few channels for the reduction is not an error: the width stops at min_channels."""
    layer = keras_chanattn.create_attention(name, reduction=16, min_channels=2)
    y = layer(keras.ops.ones((1, 8, 8, 4)))
    assert tuple(y.shape) == (1, 8, 8, 4)
    reduce = layer.channel_attention.reduce if name == "cbam" else layer.reduce
    assert reduce.units == 2
