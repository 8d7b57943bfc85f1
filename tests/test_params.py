"""Parameter / FLOPs counting and the `params` command."""

import keras
import pytest
from keras import ops

from keras_chanattn import SqueezeExcite, cli, models
from keras_chanattn.layers.registry import paper_figures
from keras_chanattn.models.params import complexity_rows, count_flops


@pytest.fixture(autouse=True)
def _fresh_session():
    yield
    keras.backend.clear_session()


def test_conv_and_dense_count_their_multiply_adds():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.DepthwiseConv2D(3, strides=2, padding="same")(x)
    x = keras.layers.Conv2D(8, 1, groups=2)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(5)(x)
    expected = (
        8 * 8 * 8 * (3 * 3 * 3)  # conv: output elements x kernel volume
        + 4 * 4 * 8 * (3 * 3)  # depthwise, stride 2
        + 4 * 4 * 8 * (8 // 2)  # grouped 1x1
        + 8 * 5  # dense
    )
    assert count_flops(keras.Model(inputs, outputs)) == expected


class _Gate(keras.layers.Layer):
    """x * sigmoid(mean(x) @ W): a custom layer the counter must trace."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], input_shape[-1]))

    def call(self, x):
        s = ops.mean(x, axis=(1, 2))  # 4 * 4 * 6 input elements
        s = ops.sigmoid(ops.matmul(s, self.w))  # 6 * 6 multiply-adds, 6 sigmoids
        return x * s[:, None, None, :]  # 4 * 4 * 6 products


def test_custom_layers_are_traced_and_counted():
    inputs = keras.Input((4, 4, 6))
    model = keras.Model(inputs, _Gate()(inputs))
    assert count_flops(model) == 96 + 36 + 6 + 96


def test_se_block_costs_at_least_its_fcs_pooling_and_scaling():
    inputs = keras.Input((7, 7, 64))
    model = keras.Model(inputs, SqueezeExcite(reduction=16, min_channels=1)(inputs))
    lower = 2 * 64 * 4 + 2 * 7 * 7 * 64  # two FCs, the pooling and the rescaling
    # Biases, ReLU and sigmoid add at most one op per FC output.
    assert lower <= count_flops(model) <= lower + 4 + 4 + 64 + 64


@pytest.mark.parametrize(
    ("builder", "gflops"),
    [(models.resnet18, 1.81), (models.resnet50, 4.09), (models.mobilenet_v2, 0.30)],
    ids=["resnet18", "resnet50", "mobilenet_v2"],
)
def test_plain_backbones_match_torchvisions_published_gflops(builder, gflops):
    # torchvision's model tables list these GFLOPS (multiply-adds) at 224x224.
    assert round(count_flops(builder()) / 1e9, 2) == gflops


def test_se_resnet50_adds_what_the_se_paper_reports():
    plain = count_flops(models.resnet50())
    se = count_flops(models.se_resnet50())
    # SE paper: 3.86 -> 3.87 GFLOPs (+0.26 %).
    assert 0.005e9 < se - plain < 0.02e9


def test_unknown_spatial_size_is_a_clear_error():
    model = models.cifar_resnet(8, input_shape=(None, None, 3))
    with pytest.raises(ValueError, match="fixed input_shape"):
        count_flops(model)


def test_params_command_prints_the_table(capsys):
    assert cli.main(["params", "resnet20", "--blocks", "se,sa"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.split()}
    assert "269,722" in lines["none"]
    # SE r = 16 on 16, 32, 64 channels, 3 blocks each; hidden max(8, C / 16) units
    # (SE's min_channels default): 3 * (280 + 552 + 1096).
    assert "+5,784" in lines["se"]
    assert "cannot build with its defaults" in lines["sa"]
    assert cli.main(["params", "resnet7"]) == 2


@pytest.mark.slow
def test_resnet50_table_matches_the_papers():
    rows = {row["block"]: row for row in complexity_rows("resnet50", flops=False)}
    for block, paper in paper_figures("resnet50").items():
        if block not in rows:
            continue
        delta = rows[block]["delta_all"] if block == "gc" else rows[block]["delta"]
        assert delta == paper["delta"], block
