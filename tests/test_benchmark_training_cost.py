"""The training-cost benchmark script: its argument checks, the timing of tiny models with and
without XLA (a model XLA cannot compile is reported, the others still timed), and the blocks
timed alone per feature-map shape."""

import argparse
import functools
import importlib.util
import os

import keras
import pytest
import tensorflow as tf

SCRIPT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "training_cost.py"
)


@functools.cache
def script():
    spec = importlib.util.spec_from_file_location("training_cost", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "0"], "--steps must be >= 1"),
        (["--rounds", "-1"], "--rounds must be >= 1"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--profile", "-1"], "--profile must be >= 0"),
        (["--blocks", "se,nope"], "unknown blocks ['nope']"),
        (["--jit", "maybe"], "invalid choice"),
    ],
)
def test_arguments_are_checked(argv, message, capsys):
    with pytest.raises(SystemExit):
        script().parse_args(argv)
    assert message in capsys.readouterr().err


class HostCopy(keras.layers.Layer):
    """Passes its input through a Python function: XLA cannot compile it."""

    def call(self, x):
        y = tf.py_function(lambda t: t, [x], x.dtype)
        y.set_shape(x.shape)
        return y


def _tiny(name, *extra):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    for layer in extra:
        x = layer(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x), name=name)


@pytest.mark.parametrize("jit", [False, True])
def test_models_are_timed_and_xla_failures_reported(jit):
    bench = script()
    keras.utils.set_random_seed(0)
    models = {"plain": _tiny("plain"), "host": _tiny("host", HostCopy())}
    images, labels = bench.batch(8, 2, seed=0)
    args = argparse.Namespace(steps=2, rounds=1, warmup=1)
    rows = {row["label"]: row for row in bench.measure(models, jit, images, labels, args)}
    assert list(rows) == ["plain", "host"]
    assert rows["plain"]["ratio"] == 1.0 and rows["plain"]["step_ms"] > 0
    assert rows["plain"]["xla"] == ("ok" if jit else "-")
    if jit:
        host = rows["host"]
        assert host["xla"] == "FAILED" and host["step_ms"] is None and host["ratio"] is None
        reason = host["reason"]
        assert "\n" not in reason and "XLA_CPU_JIT: EagerPyFunc" in reason, reason
        assert "test_benchmark_training_cost.py" in reason, reason  # HostCopy.call
    else:
        assert rows["host"]["reason"] is None and rows["host"]["ratio"] > 0


def test_blocks_alone_per_feature_map_shape():
    from keras_chanattn.layers import create_attention

    bench = script()
    inputs = keras.Input((8, 8, 4))
    x = create_attention("se", reduction=2)(inputs)
    x = create_attention("se", reduction=2)(x)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same")(x)
    x = create_attention("se", reduction=2)(x)
    model = keras.Model(inputs, x)
    sites = bench.block_sites(model)
    assert [(shape, count) for shape, _, count in sites] == [((8, 8, 4), 2), ((4, 4, 8), 1)]
    rows = bench.profile_block("se", model, batch_size=2, jit=False, steps=1)
    assert [(r["shape"], r["count"]) for r in rows] == [("8x8x4", 2), ("4x4x8", 1)]
    # The gradient of SE's excitation MLP holds the MatMuls of its two Dense layers.
    assert all("MatMul" in r["ops"] for r in rows)


def test_one_line_finds_the_reason():
    error = ValueError(
        "Graph execution error:\n\nDetected at node x\nUnsupported op in __inference_f_12[a=1]: "
        'Foo\nThe op is created at:\nFile "a/site-packages/k.py", line 3\nFile "b.py", '
        'line 5, in call\nFile "a/site-packages/k.py", line 9\nmore'
    )
    want = 'ValueError: Unsupported op in <graph>: Foo (at "b.py", line 5, in call)'
    assert script().one_line(error) == want
    assert script().one_line(RuntimeError("first\nsecond")) == "RuntimeError: first"


@pytest.mark.slow
def test_main_runs_a_tiny_resnet20(capsys):
    argv = "--backbone resnet20 --blocks se --steps 1 --rounds 1 --warmup 1 --image-size 8"
    argv = [*argv.split(), "--batch-size", "2", "--profile", "1"]
    script().main(argv)
    out = capsys.readouterr().out
    assert "resnet20 at 8x8, batch 2, jit_compile=False" in out
    assert "jit_compile=True" in out and "FAILED" not in out
    assert "8x8x16" in out and "Total time" in out
