"""The package on the JAX backend, from the TensorFlow suite.

Keras fixes its backend per process, so each check starts a `KERAS_BACKEND=jax` Python:
the registry-wide layer suite and tests/test_on_jax.py run there under pytest (the
TensorFlow-only tests skip themselves), and models built and trained there are loaded,
trained again and exported here on TensorFlow, which must give the same numbers.
Skipped when jax is not installed (it comes with the `dev` extra).
"""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_chanattn
from tests import cross_backend_models as shared

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("jax") is None,
    reason="jax is not installed (pip install -e '.[dev]' brings it): no JAX backend to test",
)

ROOT = Path(__file__).resolve().parents[1]
# The layer suite's checks that read every block's numbers: outputs against the NumPy
# references, the .keras round trip and the inference forms (the slow test runs all).
CORE_LAYER_CHECKS = "matches_numpy_reference or keras_file_round_trip or inference_layer_matches"
# ... with tests/test_on_jax.py but its fit_classifier run (in the slow suite).
CORE_CHECKS = f"({CORE_LAYER_CHECKS} or test_on_jax) and not fit_classifier"
# test_surgery is left out: its ResNet-50 fixtures take minutes on JAX; add_attention is
# checked on JAX, against TensorFlow, by test_models_trained_on_jax_match_tensorflow.
JAX_SUITE = [
    "tests/test_layers.py",
    "tests/test_gates.py",
    "tests/test_models.py",
    "tests/test_cbam_triplet.py",
    "tests/test_gather_excite.py",
    "tests/test_global_context.py",
    "tests/test_on_jax.py",
]


def run_on_jax(args, timeout=1500):
    """Runs `python <args>` from the repository root with `KERAS_BACKEND=jax`."""
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def pytest_on_jax(*args):
    """Runs pytest on JAX; returns `{outcome: count}` from its summary line, after checking
    that it passed and ran tests on the JAX backend."""
    check = "import keras; assert keras.backend.backend() == 'jax', keras.backend.backend()"
    assert run_on_jax(["-c", check]).returncode == 0, "KERAS_BACKEND=jax is not taken"
    result = run_on_jax(["-m", "pytest", "-q", "-p", "no:cacheprovider", *args])
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    summary = output.strip().splitlines()[-1]
    found = re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?)", summary)
    counts = {word: int(n) for n, word in found}
    assert counts.get("passed", 0) > 0, summary
    return counts


def test_core_layer_checks_and_jax_checks_pass_on_jax():
    counts = pytest_on_jax("tests/test_layers.py", "tests/test_on_jax.py", "-k", CORE_CHECKS)
    blocks = len(keras_chanattn.list_attention())
    # three layer checks and one jax.grad check per block, and the JAX module's own tests
    assert counts["passed"] >= 4 * blocks + 3 and not counts.get("skipped"), counts


@pytest.mark.slow
def test_registry_wide_suite_passes_on_jax():
    """The whole layer suite and the builders', gates' and families' tests; only the
    TensorFlow-only ones (SavedModel, tf.function, tf.GradientTape) skip."""
    counts = pytest_on_jax(*JAX_SUITE, "-m", "not slow")
    assert counts["passed"] >= 250, counts


def assert_close(got, expected, tolerance, what):
    scale = max(1.0, float(np.max(np.abs(expected))))
    error = float(np.max(np.abs(np.asarray(got) - np.asarray(expected))))
    assert error <= tolerance * scale, f"{what}: max abs error {error:.2e} (scale {scale:.1f})"
    return error / scale


@pytest.mark.slow
def test_models_trained_on_jax_match_tensorflow_and_export(tmp_path):
    """Each of `cross_backend_models.BUILDERS`, built, saved and trained two SGD steps on
    JAX, then on TensorFlow: its untrained file predicts what it predicted on JAX, the same
    two steps from that file give the same losses and weights, the trained file predicts
    what it did on JAX, and one of them exports to a verified float32 TFLite."""
    from keras_chanattn.export import export_tflite

    result = run_on_jax(["-m", "tests.cross_backend_models", str(tmp_path)])
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    assert "jax: wrote" in result.stdout
    for name in shared.BUILDERS:
        jax_side = np.load(tmp_path / f"{name}.npz")
        model = keras.saving.load_model(tmp_path / f"{name}-initial.keras")
        x, y = shared.data(model)
        assert_close(model.predict(x, verbose=0), jax_side["initial"], 1e-4, f"{name} untrained")
        losses = shared.train(model, x, y)
        assert_close(losses, jax_side["losses"], 1e-4, f"{name} losses")
        from_jax = keras.saving.load_model(tmp_path / f"{name}-trained.keras")
        assert_close(from_jax.predict(x, verbose=0), jax_side["trained"], 1e-4, f"{name} trained")
        for ours, theirs in zip(model.weights, from_jax.weights, strict=True):
            assert_close(
                keras.ops.convert_to_numpy(ours),
                keras.ops.convert_to_numpy(theirs),
                1e-3,
                f"{name} {ours.path} after fit",
            )
        assert_close(model.predict(x, verbose=0), jax_side["trained"], 1e-3, f"{name} refit")
    trained = keras.saving.load_model(tmp_path / "cifar_resnet8_se-trained.keras")
    images = np.random.default_rng(1).uniform(0.0, 1.0, (32, 16, 16, 3)).astype("float32")
    report = export_tflite(trained, tmp_path / "se.tflite", "float32", validation_data=images)
    assert report.passed and (tmp_path / "se.tflite").is_file()
