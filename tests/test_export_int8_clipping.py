"""Full int8's output clipping: the relative-error limit applies with the clipping taken out
(top-1 agreement still catches clipping that matters), and the output range gets a margin
over the calibration images'."""

import functools
import json

import keras
import numpy as np
import pytest

from keras_chanattn.export import VerificationReport, convert_tflite, export_tflite
from keras_chanattn.export.checks import metric_failures
from keras_chanattn.export.litert import io_details, make_interpreter, signature_io
from keras_chanattn.export.metrics import compare_outputs, quantized_range
from keras_chanattn.export.ranges import OUTPUT_MARGIN

SIZE = 16


def _int8_output(want, scale, zero_point, rng):
    """What an int8 output gives for float logits `want`: a little noise, rounded to the
    codes -128..127, clipped there, dequantised."""
    codes = np.round((want + rng.normal(0, scale / 4, want.shape)) / scale) + zero_point
    return ((np.clip(codes, -128, 127) - zero_point) * scale).astype("float32")


def _synthetic(rng, beyond):
    """`(got, want, details)`: 100 images of 10 logits in the int8 output's range, but for
    image 0, whose largest logit lies `beyond` times the top of the range."""
    scale, zero_point = 0.04, -10
    high = (127 - zero_point) * scale
    want = rng.uniform(-4.0, 4.0, (100, 10)).astype("float32")
    want[0, 3] = beyond * high
    details = {"dtype": np.int8, "scale": scale, "zero_point": zero_point}
    return [_int8_output(want, scale, zero_point, rng)], [want], details


def test_the_relative_error_limit_takes_the_output_clipping_out():
    rng = np.random.default_rng(0)
    got, want, details = _synthetic(rng, beyond=1.4)
    metrics = compare_outputs(got, want, [quantized_range(details)])

    # NumPy reference: the Keras logits clipped to what the int8 codes hold (half a step
    # beyond the extreme codes rounds to them), over the largest |Keras logit|.
    scale, zero_point = details["scale"], details["zero_point"]
    low, high = (-128.5 - zero_point) * scale, (127.5 - zero_point) * scale
    top = np.abs(want[0]).max()
    raw = np.abs(got[0] - want[0]).max() / top
    clipped = np.abs(got[0] - np.clip(want[0], low, high)).max() / top
    assert metrics.relative_error == pytest.approx(raw)
    assert metrics.clipped_relative_error == pytest.approx(clipped)
    assert metrics.checked_relative_error == metrics.clipped_relative_error
    assert metrics.saturated_images == 1
    assert raw > 0.2 > 0.05 > clipped  # one clipped logit would fail the limit on its own
    agrees = np.argmax(got[0], 1) == np.argmax(want[0], 1)
    assert metrics.top1_agreement == pytest.approx(agrees.mean()) and agrees.mean() >= 0.98

    assert metric_failures("held-out images", metrics, 0.2, 0.98) == []
    # The limit still applies to what is left.
    (failure,) = metric_failures("held-out images", metrics, clipped / 2, 0.98)
    assert f"relative error on held-out images {clipped:.3g} > {clipped / 2:.3g}" in failure
    assert f"clipping taken out ({raw:.3g} raw)" in failure

    # The report keeps the raw worst error and the count, in JSON and for people.
    report = VerificationReport("int8", "m", held_out=metrics)
    held = json.loads(report.to_json())["held_out"]
    assert held["relative_error"] == pytest.approx(raw)
    assert held["clipped_relative_error"] == pytest.approx(clipped)
    assert held["saturated_images"] == 1
    assert f"({raw:.3g} raw, 1 image clipped)" in report.summary()


def test_clipping_that_changes_the_top_class_still_fails_top1():
    rng = np.random.default_rng(1)
    got, want, details = _synthetic(rng, beyond=1.6)
    # In a tenth of the images two logits lie beyond the range: both clip to the top code,
    # and the int8 output can no longer tell which is larger.
    high = (127 - details["zero_point"]) * details["scale"]
    want[0][:10, 5], want[0][:10, 6] = 1.3 * high, 1.5 * high
    got = [_int8_output(want[0], details["scale"], details["zero_point"], rng)]
    metrics = compare_outputs(got, want, [quantized_range(details)])
    agrees = np.argmax(got[0], 1) == np.argmax(want[0], 1)
    assert metrics.top1_agreement == pytest.approx(agrees.mean()) and agrees.mean() < 0.98
    failures = metric_failures("held-out images", metrics, 0.2, 0.98)
    assert [f for f in failures if "top-1" in f] and not [f for f in failures if "relative" in f]


def test_float_outputs_keep_the_raw_relative_error():
    want = [np.linspace(-1, 1, 30, dtype="float32").reshape(10, 3)]
    got = [want[0] + 0.5]
    metrics = compare_outputs(got, want)
    assert metrics.checked_relative_error == metrics.relative_error == pytest.approx(0.5)
    assert metric_failures("x", metrics, 0.2, None)


@functools.cache
def _model(softmax=False):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax" if softmax else None)(x))


def _calibration():
    return np.random.default_rng(0).uniform(size=(32, SIZE, SIZE, 3)).astype("float32")


def _output_scale(tflite_bytes):
    interpreter, _ = make_interpreter(tflite_bytes, 1)
    ((_, details),) = signature_io(interpreter)[3]
    return io_details(details)["scale"]


@pytest.mark.parametrize("margin", [0.0, OUTPUT_MARGIN])
def test_the_int8_output_range_has_a_margin_over_the_calibration_logits(margin):
    logits = keras.ops.convert_to_numpy(_model()(_calibration()))
    width = max(logits.max(), 0.0) - min(logits.min(), 0.0)
    scale = _output_scale(convert_tflite(_model(), "int8", _calibration(), output_margin=margin))
    assert scale == pytest.approx(width * (1 + margin) / 255, rel=0.01)


def test_the_report_lists_the_widened_output_and_int8_leaves_the_softmax_out(tmp_path):
    logits = keras.ops.convert_to_numpy(_model()(_calibration()))
    report = export_tflite(_model(), tmp_path / "m.tflite", "int8", _calibration(), probes=False)
    assert report.output_margin == OUTPUT_MARGIN
    (widened,) = report.widened_outputs
    np.testing.assert_allclose(widened["calibrated"], [logits.min(), logits.max()], rtol=1e-4)
    np.testing.assert_allclose(
        widened["widened"], np.array(widened["calibrated"]) * (1 + OUTPUT_MARGIN), rtol=1e-6
    )
    assert f"int8 output range widened by {OUTPUT_MARGIN:.0%}" in report.summary()
    # Full int8 leaves a classifier's softmax to the app: the file outputs the same
    # logits, widened alike, and ends without SOFTMAX (whose int8 range is fixed).
    softmax = convert_tflite(_model(softmax=True), "int8", _calibration())
    assert _output_scale(softmax) == pytest.approx(_output_scale(convert_tflite(
        _model(), "int8", _calibration())), rel=1e-6)  # fmt: skip
    assert _output_scale(softmax) != pytest.approx(1 / 256)
