"""The phone benchmark (benchmarks/phone_forms.py): its peers compute the blocks' functions,
its arguments are checked, and one run on a tiny network reports every model, a crash
included."""

import functools
import importlib.util
import os
import sys

import keras
import numpy as np
import pytest

import keras_chanattn
from keras_chanattn.testing import randomize_weights

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


@functools.cache
def script():
    sys.path.insert(0, BENCHMARKS)
    spec = importlib.util.spec_from_file_location("phone_forms", f"{BENCHMARKS}/phone_forms.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _peers():
    return script().peer_blocks


@pytest.mark.parametrize(
    "block, kwargs",
    [
        ("se", {}),
        ("se", {"reduction": 4, "divisor": 8, "gate_activation": "hard_sigmoid"}),
        ("srm", {}),
        ("eca", {}),
        ("eca", {"kernel_size": 5}),
        ("ge", {}),
        ("sa", {"groups": 4}),
        ("cbam", {}),
        ("triplet", {}),
        ("gc", {}),
        ("sge", {"groups": 4}),
    ],
)
def test_peer_computes_the_blocks_function(block, kwargs):
    """Same weights (randomised, BatchNorm statistics included), same outputs."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 7, 6, 40 if block == "sa" else 32)).astype("float32")
    ours = keras_chanattn.create_attention(block, **kwargs)
    ours(x)
    randomize_weights(ours, scale=0.5, rng=rng)
    peer = _peers().PEERS[block](**kwargs)
    peer(x)
    assert len(peer.weights) == len(ours.weights)
    peer.set_weights(peer.weights_from(ours))
    want = keras.ops.convert_to_numpy(ours(x))
    assert np.abs(want - x).max() > 1e-3  # the block does something
    np.testing.assert_allclose(keras.ops.convert_to_numpy(peer(x)), want, atol=2e-5, rtol=1e-5)


def test_peer_config_round_trip():
    peer = _peers().PeerSE(reduction=4, divisor=8, gate_activation="hard_sigmoid", name="p")
    again = _peers().PeerSE.from_config(peer.get_config())
    assert again.arguments == peer.arguments and again.name == "p"


def test_groups_fit_the_channels():
    groups = script().fitting_groups
    assert [groups(c, 64, halves=True) for c in (256, 96, 16, 40)] == [64, 48, 8, 20]
    assert [groups(c) for c in (256, 96, 16, 40)] == [64, 48, 16, 40]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--formats", "int4"], "--formats ['int4']"),
        (["--blocks", "se,foo"], "--blocks ['foo']: unknown"),
        (["--alpha", "0.5"], "--backbone mobilenet_v2"),
        (["--backbone", "mobilenet_v2", "--alpha", "0"], "--alpha must be > 0"),
        (["--runs", "0"], "--runs must be >= 1"),
    ],
)
def test_arguments_are_checked(argv, message, capsys):
    with pytest.raises(SystemExit):
        script().parse_args(argv)
    assert message in capsys.readouterr().err


def test_mobilenet_defaults_to_both_widths():
    args = script().parse_args(["--backbone", "mobilenet_v2", "--no-peers"])
    assert args.alpha == [1.0, 0.35] and not args.peers
    assert args.blocks == list(_peers().PEERS)


def _tiny_builder(args, alpha):
    """A one-block network in place of the backbone: the script's builder's signature."""

    def build(attention, name, **kwargs):
        inputs = keras.Input((args.image_size, args.image_size, 3))
        x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv")(inputs)
        if isinstance(attention, str):
            x = keras_chanattn.create_attention(attention, name="block", **kwargs)(x)
        elif attention is not None:  # a peer class
            x = attention(name="block", **kwargs)(x)
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
        return keras.Model(inputs, keras.layers.Dense(10, name="head")(x), name=name)

    return build


@pytest.mark.slow
def test_one_run_reports_every_model_and_a_crash(tmp_path, monkeypatch, capsys):
    bench = script()
    monkeypatch.setattr(bench, "builder", _tiny_builder)
    export = bench.export_all

    def crashing(models, args, *rest):  # peer_srm's int8 file crashes the interpreter
        import keras_chanattn.export as export_module

        real = export_module.export_tflite

        def export_tflite(model, path, fmt, *a, **kw):
            if model.name == "peer_srm" and fmt == "int8":
                raise RuntimeError("DIV: data[i] != zero_point\nmore")
            return real(model, path, fmt, *a, **kw)

        monkeypatch.setattr(export_module, "export_tflite", export_tflite)
        return export(models, args, *rest)

    monkeypatch.setattr(bench, "export_all", crashing)
    argv = ["--blocks", "se,srm", "--formats", "float32,int8", "--runs", "2", "--warmup", "0",
            "--calibration", "8", "--held-out", "8", "--synthetic"]  # fmt: skip
    argv += ["--image-size", "8", "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    text = (tmp_path / "phone_forms.txt").read_text()
    for label in ("plain", "floor", "se", "peer_se", "srm", "peer_srm"):
        assert f"\n{label} " in text, label
    assert "peer_srm        FAILED: RuntimeError: DIV: data[i] != zero_point\n" in text
    assert text.count("float function: max |peer - ours| / max |ours| = ") == 2
    gaps = [
        float(line.rsplit("= ", 1)[1]) for line in text.splitlines() if "float function" in line
    ]
    assert max(gaps) < 1e-5
    assert "se      peer_se         int8" in text
    hub = importlib.util.find_spec("keras_hub") is not None
    assert ("\nkeras_hub_se " in text) if hub else ("skipped keras_hub_se" in text)
    assert "Wall time" in capsys.readouterr().out
