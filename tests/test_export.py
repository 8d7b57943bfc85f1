"""Tests of `keras_chanattn.export`: SavedModel and verified TFLite for every registered block.

The models are small (16x16x3 input, one conv, one block, pooling, a 10-way Dense), trained
for two epochs on scikit-learn's embedded digits so that their outputs are decisive and
top-1 agreement means something. Each block's weights are randomised first, so that no
gate is left at its (often trivial) initial value.
"""

import functools
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

import keras_chanattn
from keras_chanattn.cli import main as cli_main
from keras_chanattn.export import (
    DEFAULT_THRESHOLDS,
    QUANTIZATIONS,
    ConversionError,
    ExportVerificationError,
    ImageSpec,
    PreparedModel,
    convert_tflite,
    export_saved_model,
    export_tflite,
    inference_model,
    verify_tflite,
)
from keras_chanattn.export import files as export_files
from keras_chanattn.export import prepared as prepared_module
from keras_chanattn.export import saved_model as saved_model_module
from keras_chanattn.export.artifacts import export_artifacts
from keras_chanattn.export.inference import export_hints
from keras_chanattn.export.verify import attribute_layer, compare_outputs, quantized_range
from keras_chanattn.images import as_images, image_input_spec, probe_images
from keras_chanattn.layers import AttentionLayer
from tests.layer_cases import (
    CASES,
    case_variants,
    export_variants,
    int8_form_names,
    known_export_failures,
    randomize_weights,
)
from tests.marks import slow_unless

SIZE = 16
BLOCKS = keras_chanattn.list_attention()
FAST_BLOCKS = ("se", "sa")  # the fast suite's share of the every-block, every-format cases

# (block, format) -> why its export fails verification on the model below: each block's
# LayerCase declares its own (`known_export_failures`). strict=True: when a block's
# inference form fixes it, the test XPASSes, and fails until the entry is removed.
KNOWN_FAILURES = known_export_failures()


# --- data and models ------------------------------------------------------------------------


@functools.cache
def _digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype("float32")[..., None]
    images = np.clip(tf.image.resize(images, (SIZE, SIZE)).numpy(), 0.0, 1.0)
    return np.repeat(images, 3, axis=-1), digits.target.astype("int32")


def train_split():
    x, y = _digits()
    return x[:800], y[:800]


def calibration_images():
    # 200 images, the export's default: with 64, the classifier's largest held-out logits
    # lay beyond the calibrated int8 output range (saturated by up to 1.6).
    return _digits()[0][800:1000]


def held_out_images():
    return _digits()[0][1000:1128]


def small_model(block=None, channels=16):
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(channels, 3, padding="same", activation="relu")(inputs)
    if block is not None:
        x = block(x)
    x = keras.layers.MaxPooling2D(4)(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x))


def fit(model, epochs=2):
    model.compile(
        keras.optimizers.Adam(0.01),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(*train_split(), epochs=epochs, batch_size=32, verbose=0)
    return model


@functools.cache
def trained(name):
    """A small classifier around block `name`, randomised then trained (cached per block)."""
    # The classifier puts each block after a ReLU; a case's `export_kwargs` adapt the block
    # to that place (SRM's scaled inference form).
    case = CASES.get(name)
    kwargs, channels = ({**case.kwargs, **case.export_kwargs}, case.channels) if case else ({}, 16)
    keras.utils.set_random_seed(0)
    block = keras_chanattn.create_attention(name, **kwargs)
    model = small_model(block, channels)
    randomize_weights(block)
    return fit(model)


@functools.cache
def plain_model():
    keras.utils.set_random_seed(1)
    return fit(small_model(), epochs=1)


def _block_of(model):
    return next(layer for layer in model.layers if isinstance(layer, AttentionLayer))


def _scale(x):
    return float(np.max(np.abs(x)))


def _tflite_params():
    params = []
    for name in BLOCKS:
        for quantization in QUANTIZATIONS:
            reason = KNOWN_FAILURES.get((name, quantization))
            marks = ()
            if reason:
                marks = pytest.mark.xfail(
                    strict=True, raises=(ExportVerificationError, ConversionError), reason=reason
                )
            fast = name in FAST_BLOCKS
            params.append(
                slow_unless(fast, name, quantization, marks=marks, id=f"{name}-{quantization}")
            )
    return params


# --- every block, every format --------------------------------------------------------------


@pytest.mark.parametrize(("name", "quantization"), _tflite_params())
def test_tflite_export_passes_verification(name, quantization, tmp_path):
    model = trained(name)
    path = tmp_path / f"{name}_{quantization}.tflite"
    report = export_tflite(model, path, quantization, calibration_images(), held_out_images())
    assert report.passed, report.summary()
    assert path.stat().st_size == report.size_bytes
    assert report.thresholds == DEFAULT_THRESHOLDS[quantization]
    assert report.held_out.samples == len(held_out_images())
    assert report.held_out_source == "validation_data"
    assert report.probes.samples == len(report.probe_names) == len(report.probe_errors)
    assert report.xnnpack_partitions == 1 and report.undelegated_ops == []
    assert report.custom_ops == []
    assert report.input["shape"] == [1, SIZE, SIZE, 3]
    expected_io = "int8" if quantization == "int8" else "float32"
    assert {report.input["dtype"], *(o["dtype"] for o in report.outputs)} == {expected_io}
    assert json.loads(report.to_json())["passed"] is True


# Variants whose graphs differ from the registry cases above (each case's
# `export_variants`); each must export as well.
VARIANTS = export_variants()
FAST_VARIANT = next(iter(VARIANTS))  # the fast suite's one variant, in int8


@functools.cache
def trained_variant(variant):
    name, kwargs = VARIANTS[variant]
    keras.utils.set_random_seed(0)
    block = keras_chanattn.create_attention(name, **kwargs)
    model = small_model(block)
    randomize_weights(block)
    return fit(model)


@pytest.mark.parametrize(
    ("variant", "quantization"),
    [
        slow_unless(
            (variant, quantization) == (FAST_VARIANT, "int8"),
            variant,
            quantization,
            id=f"{variant}-{quantization}",
        )
        for variant in VARIANTS
        for quantization in QUANTIZATIONS
    ],
)
def test_block_variants_export_in_one_partition(variant, quantization, tmp_path):
    model = trained_variant(variant)
    path = tmp_path / f"{variant}.tflite"
    report = export_tflite(model, path, quantization, calibration_images(), held_out_images())
    assert report.passed, report.summary()
    assert report.xnnpack_partitions == 1 and report.undelegated_ops == []
    # Only the per-channel paths a block declares (export_float_ops) stay in float.
    assert all(f["allowed"] for f in report.float_ops)


def test_blocks_built_for_any_size_export_at_the_given_image_size():
    """A model with unknown H, W is cloned with its inference forms at unknown size, then
    traced at the export's size: the blocks must take their static-size graphs there."""
    keras.utils.set_random_seed(5)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    for name, kwargs in [("ge", {"extent": 3, "use_mlp": True, "reduction": 2}), ("cbam", {})]:
        block = keras_chanattn.create_attention(name, **kwargs)
        x = block(x)
        randomize_weights(block)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(10)(x))
    tflite = _convert_float(model, (SIZE, SIZE))
    report = verify_tflite(tflite, model, "float32", image_size=(SIZE, SIZE))
    assert report.passed, report.summary()
    assert report.xnnpack_partitions == 1 and "TILE" not in report.op_counts


@pytest.mark.parametrize("name", [slow_unless(n in FAST_BLOCKS, n, id=n) for n in BLOCKS])
def test_saved_model_reloads_and_matches_keras(name, tmp_path):
    model = trained(name)
    report = export_saved_model(model, tmp_path / "saved")
    assert report.passed and report.input_shape == [1, SIZE, SIZE, 3]
    assert report.relative_error <= 1e-4

    signature = tf.saved_model.load(str(tmp_path / "saved")).signatures["serving_default"]
    assert tuple(signature.structured_input_signature[1]["images"].shape) == (1, SIZE, SIZE, 3)
    images = held_out_images()[:3]
    got = np.concatenate([signature(images=images[i : i + 1])["output_0"] for i in range(3)])
    want = keras.ops.convert_to_numpy(model(images, training=False))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * _scale(want))


def test_saved_model_with_dynamic_batch_and_image_size(tmp_path):
    model = plain_model()
    report = export_saved_model(model, tmp_path / "dynamic", batch_size=None)
    assert report.passed and report.input_shape == [None, SIZE, SIZE, 3]
    signature = tf.saved_model.load(str(tmp_path / "dynamic")).signatures["serving_default"]
    images = held_out_images()[:3]
    want = keras.ops.convert_to_numpy(model(images, training=False))
    np.testing.assert_allclose(signature(images=images)["output_0"], want, atol=1e-5 * _scale(want))

    inputs = keras.Input((None, None, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    any_size = keras.Model(inputs, keras.layers.Dense(3)(x))
    report = export_saved_model(any_size, tmp_path / "any_size")
    assert report.passed and report.input_shape == [1, None, None, 3]
    signature = tf.saved_model.load(str(tmp_path / "any_size")).signatures["serving_default"]
    assert signature(images=np.zeros((1, 24, 20, 3), "float32"))["output_0"].shape == (1, 3)


# The blocks with inference forms of their own (folded BatchNorm, rewritten statistics) are
# SA, SRM, SGE, GC, CBAM, Triplet, GE; the fast suite keeps SA and SRM of them.
@pytest.mark.parametrize("name", [slow_unless(n in (*FAST_BLOCKS, "srm"), n, id=n) for n in BLOCKS])
def test_inference_model_keeps_outputs(name):
    model = trained(name)
    block = _block_of(model)
    layers_before = list(model.layers)
    clone, replaced = inference_model(model)
    assert model.layers == layers_before  # the original is untouched
    form_type = type(block.inference_layer())
    if form_type is type(block):
        assert replaced == [] and any(layer is block for layer in clone.layers)
    else:
        assert len(replaced) == 1 and form_type.__name__ in replaced[0]
        assert not any(layer is block for layer in clone.layers)
        assert any(isinstance(layer, form_type) for layer in clone.layers)
    images = held_out_images()[:32]
    want = keras.ops.convert_to_numpy(model(images, training=False))
    got = keras.ops.convert_to_numpy(clone(images, training=False))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * _scale(want))


# The blocks whose inference forms are rewritten for full int8 (rescaled statistics, float
# per-channel paths declared in export_float_ops).
INT8_FORMS = int8_form_names()


def _activations(kind, shape, rng):
    if kind == "far from zero":
        return rng.normal(300.0, 30.0, shape)
    x = np.maximum(rng.normal(0.0, 1.0, shape), 0.0)  # "relu": with dead channels
    x[..., ::3] = 0.0
    return x


@pytest.mark.parametrize("name", INT8_FORMS)
def test_int8_inference_forms_match_the_reference(name):
    """Every variant's form against the NumPy reference, on activations far from zero mean,
    with dead channels, and on 1x1 maps; the form also survives its config."""
    case = CASES[name]
    rng = np.random.default_rng(0)
    for i, kwargs in enumerate(case_variants(case)):
        layer = keras_chanattn.create_attention(name, **kwargs)
        layer.build((None, None, None, case.channels))
        randomize_weights(layer, seed=i)
        form = layer.inference_layer()
        assert type(form) is not type(layer) and form.export_float_ops
        assert form.inference_layer() is form
        restored = keras.layers.deserialize(keras.layers.serialize(form))  # built
        restored.set_weights(form.get_weights())
        for kind, hw in [("far from zero", (9, 7)), ("relu", (9, 7)), ("relu", (1, 1))]:
            x = _activations(kind, (2, *hw, case.channels), rng)
            want = case.reference(layer, x, False)
            for got in (form(x.astype("float32")), restored(x.astype("float32"))):
                np.testing.assert_allclose(
                    keras.ops.convert_to_numpy(got),
                    want,
                    rtol=0,
                    atol=1e-5 * _scale(want),
                    err_msg=f"{name} {kwargs} on {kind} {hw}",
                )


def test_srm_after_relu_needs_channel_scaling_and_says_so():
    """After a ReLU (the classifier here), SRM's default form, without channel scaling, fails
    full int8's verification on top-1 agreement; the failure names `scale_statistics=True`,
    and that form passes (measured: relative error 0.109 and top-1 agreement 0.961 unscaled,
    0.040 and 0.992 scaled)."""
    model = trained("srm")
    unscaled = keras.models.clone_model(model)
    unscaled.set_weights(model.get_weights())
    _block_of(unscaled).scale_statistics = False
    reports = {}
    for label, m in (("scaled", model), ("unscaled", unscaled)):
        tflite = convert_tflite(m, "int8", calibration_images())
        reports[label] = verify_tflite(tflite, m, "int8", held_out_images(), enforce=False)
    scaled, plain = reports["scaled"].held_out, reports["unscaled"].held_out
    for label, m in (("scaled", scaled), ("unscaled", plain)):  # the README's figures (-s)
        print(f"srm {label}: int8 rel err {m.relative_error:.3f}, top-1 {m.top1_agreement:.3f}")
    assert reports["scaled"].passed and not reports["scaled"].hints
    assert not reports["unscaled"].passed
    assert scaled.relative_error < 0.5 * plain.relative_error
    assert scaled.top1_agreement > plain.top1_agreement
    message = str(ExportVerificationError(reports["unscaled"]))
    assert "scale_statistics=True" in message and _block_of(unscaled).name in message
    assert "scale_statistics=True" in reports["unscaled"].summary()


def test_srm_default_form_on_a_batchnorm_output_passes_int8(tmp_path):
    """In the papers' place (on a BatchNorm output, as at the end of a residual branch) the
    default form, one int8 pass cheaper, passes full int8's verification."""
    keras.utils.set_random_seed(0)
    block = keras_chanattn.create_attention("srm")
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(16, 3, padding="same")(x)
    x = block(keras.layers.BatchNormalization()(x))
    x = keras.layers.Flatten()(keras.layers.MaxPooling2D(4)(x))
    model = keras.Model(inputs, keras.layers.Dense(10)(x))
    randomize_weights(block)
    fit(model)
    assert not block.scale_statistics
    path = tmp_path / "srm.tflite"
    report = export_tflite(model, path, "int8", calibration_images(), held_out_images())
    assert report.passed and path.exists(), report.summary()
    assert report.xnnpack_partitions == 1


def test_export_hints_come_from_the_layers_for_their_format():
    model = small_model(keras_chanattn.create_attention("srm", name="srm_block"))
    assert export_hints(model, "float16") == []
    (hint,) = export_hints(model, "int8")
    assert hint.startswith("srm_block (SRM)") and "scale_statistics=True" in hint
    scaled = small_model(keras_chanattn.create_attention("srm", scale_statistics=True))
    assert export_hints(scaled, "int8") == []
    assert export_hints(plain_model(), "int8") == []


# --- inference forms of any model ----------------------------------------------------------


class _Doubler(keras.layers.Layer):
    """Not an attention block: any layer with `inference_layer()` gets swapped."""

    def call(self, x):
        return x * 2.0

    def inference_layer(self):
        return keras.layers.Rescaling(2.0, name=f"{self.name}_rescaling")


def test_inference_model_replaces_any_layer_in_nested_models():
    inner_input = keras.Input((SIZE, SIZE, 4))
    inner = keras.Model(inner_input, _Doubler(name="doubler")(inner_input), name="inner")
    inputs = keras.Input((SIZE, SIZE, 3))
    conv = keras.layers.Conv2D(4, 3, padding="same")
    x = keras.layers.GlobalAveragePooling2D()(inner(conv(inputs)))
    model = keras.Model(inputs, keras.layers.Dense(3)(x))
    clone, replaced = inference_model(model)
    assert replaced == ["doubler (_Doubler) -> doubler_rescaling (Rescaling)"]
    assert any(layer is conv for layer in clone.layers)  # unchanged layers are reused
    images = held_out_images()[:4]
    np.testing.assert_allclose(clone(images), model(images), rtol=1e-6, atol=1e-6)


def test_inference_model_of_models_without_forms_and_of_subclassed_models():
    model = plain_model()
    assert inference_model(model) == (model, [])

    class Subclassed(keras.Model):
        def __init__(self, block):
            super().__init__()
            self.block = block

        def call(self, x):
            return self.block(x)

    with pytest.raises(ValueError, match="subclassed model.*functional"):
        inference_model(Subclassed(_Doubler()))
    unchanged = Subclassed(keras_chanattn.create_attention("se", reduction=4))
    assert inference_model(unchanged) == (unchanged, [])


# --- what verification catches --------------------------------------------------------------


class _TiledGate(keras.layers.Layer):
    """A gate broadcast with TILE, which XNNPACK does not delegate."""

    def call(self, x):
        pooled = ops.mean(x, axis=(1, 2), keepdims=True)
        return x * ops.sigmoid(ops.tile(pooled, (1, x.shape[1], x.shape[2], 1)))


def test_graph_split_by_xnnpack_fails_and_writes_nothing(tmp_path):
    keras.utils.set_random_seed(2)
    model = small_model(_TiledGate(name="tiled_gate"))
    path = tmp_path / "tiled.tflite"
    with pytest.raises(ExportVerificationError, match="XNNPACK partitions") as info:
        export_tflite(model, path, "float32", validation_data=held_out_images())
    report = info.value.report
    assert report.xnnpack_partitions == 2
    assert report.undelegated_ops == ["TILE (tiled_gate)"]
    assert report.held_out.relative_error < 1e-4  # the numbers are fine; the graph is not
    assert list(tmp_path.iterdir()) == []

    report = export_tflite(model, path, enforce=False)
    assert path.is_file() and not report.passed
    relaxed = {"max_partitions": None, "max_undelegated_ops": None}
    assert verify_tflite(path, model, "float32", thresholds=relaxed).passed


class _RmsGate(keras.layers.Layer):
    """A per-channel gate whose square root full int8 keeps in float, by declaration."""

    export_float_ops = ("SQRT",)

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        rms = ops.sqrt(ops.mean(x * x, axis=(1, 2), keepdims=True))
        return x * ops.sigmoid(self.scale * rms)


class _SpatialFloatGate(keras.layers.Layer):
    """Declares a float op on a full (H, W) map: not a per-channel path, so not allowed."""

    export_float_ops = ("LOGISTIC",)

    def call(self, x):
        return x * ops.sigmoid(ops.mean(x, axis=-1, keepdims=True))


def test_int8_keeps_only_declared_per_channel_ops_in_float(tmp_path):
    keras.utils.set_random_seed(3)
    model = fit(small_model(_RmsGate(name="rms_gate")), epochs=1)
    images = calibration_images()
    calibration = tf.data.Dataset.from_tensor_slices((images, np.zeros(len(images)))).batch(8)
    report = export_tflite(model, tmp_path / "rms.tflite", "int8", calibration, held_out_images())
    assert report.passed, report.summary()
    assert report.float_allowlist == {"rms_gate": ["SQRT"]}
    floats = {(f["op"], f["layer"], f["allowed"]) for f in report.float_ops}
    assert ("SQRT", "rms_gate", True) in floats
    assert {op for op, _, _ in floats} <= {"DEQUANTIZE", "SQRT", "QUANTIZE"}

    with pytest.raises(ExportVerificationError, match=r"float ops .*SQRT \(rms_gate\)"):
        verify_tflite(report.path, model, "int8", held_out_images(), float_allowlist={})

    keras.utils.set_random_seed(4)
    spatial = small_model(_SpatialFloatGate(name="spatial_gate"))
    with pytest.raises(
        ExportVerificationError, match=r"LOGISTIC \(spatial_gate, not per-channel\)"
    ):
        export_tflite(spatial, tmp_path / "spatial.tflite", "int8", calibration_images())


def test_ops_without_builtin_fail_conversion_and_flex_ops_fail_verification(tmp_path):
    class DeterminantGate(keras.layers.Layer):
        def call(self, x):
            blocks = tf.transpose(x[:, :4, :4, :], (0, 3, 1, 2))  # (N, C, 4, 4)
            return x * tf.linalg.det(blocks)[:, None, None, :]

    model = small_model(DeterminantGate())
    with pytest.raises(ConversionError, match="no TFLite builtin: MatrixDeterminant"):
        export_tflite(model, tmp_path / "determinant.tflite")
    assert list(tmp_path.iterdir()) == []

    spec = [tf.TensorSpec((1, SIZE, SIZE, 3), tf.float32)]
    function = tf.function(lambda x: model(x, training=False)).get_concrete_function(*spec)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], model)
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.TFLITE_BUILTINS,
        tf.lite.OpsSet.SELECT_TF_OPS,
    ]
    with pytest.raises(ExportVerificationError, match=r"Flex .*FlexMatrixDeterminant") as info:
        verify_tflite(converter.convert(), model, "float32")
    assert info.value.report.custom_ops == ["FlexMatrixDeterminant"]


def test_report_attributes_ops_to_layers():
    layers = ["conv2d", "squeeze_excite", "srm_folded"]
    assert attribute_layer("functional_1/squeeze_excite_1/reduce_1/MatMul", layers) == (
        "squeeze_excite"
    )
    assert attribute_layer("functional_1/srm_folded/Sqrt;functional_1/srm_folded/add", layers) == (
        "srm_folded"
    )
    assert attribute_layer("StatefulPartitionedCall_1:0", layers) is None


def test_comparison_names_the_images_behind_the_relative_error():
    rng = np.random.default_rng(0)
    want = [rng.normal(size=(40, 5)).astype("float32"), rng.normal(size=(40, 2, 3))]
    got = [w + rng.uniform(-0.01, 0.01, size=w.shape) for w in want]
    got[0][7, np.argmin(want[0][7])] += 9.0  # the outlier; top-1 flips to the lowest class
    got[1][3, 1, 2] += 0.5  # second worst, in the second output; top-1 kept
    got[0][11, 0] = np.nan  # counted as non-finite; its finite errors still score
    got[0][12] = np.nan  # nothing finite: left out of the per-image figures
    got[1][12] = np.inf
    metrics = compare_outputs(got, want)

    # NumPy reference: each image's largest finite error over both outputs.
    scale = max(np.abs(w).max() for w in want)
    per_image = {}
    for i in range(40):
        errors = np.concatenate(
            [np.abs(g[i] - w[i]).ravel() for g, w in zip(got, want, strict=True)]
        )
        if np.isfinite(errors).any():
            per_image[i] = errors[np.isfinite(errors)].max() / scale
    values = np.array(list(per_image.values()))
    assert metrics.relative_error == pytest.approx(values.max())
    assert metrics.median_image_relative_error == pytest.approx(np.median(values))
    assert metrics.p99_image_relative_error == pytest.approx(np.percentile(values, 99))
    assert metrics.median_image_relative_error < 0.02 / scale
    assert [w["index"] for w in metrics.worst_images] == sorted(
        per_image, key=per_image.get, reverse=True
    )[:3]
    assert metrics.worst_images[:2] == [
        {
            "index": 7,
            "relative_error": pytest.approx(per_image[7]),
            "top1_agrees": False,
            "saturated": None,
        },
        {
            "index": 3,
            "relative_error": pytest.approx(per_image[3]),
            "top1_agrees": True,
            "saturated": None,
        },
    ]
    assert metrics.nonfinite_outputs == 1 + 5 + 6
    assert metrics.top1_agreement == pytest.approx(
        np.mean(np.argmax(got[0], 1) == np.argmax(want[0], 1))
    )
    summary = metrics.image_error_summary()
    assert f"median {np.median(values):.3g}" in summary
    assert (
        f"worst #7 {per_image[7]:.3g} (other top-1), #3 {per_image[3]:.3g} (same top-1)" in summary
    )

    # Without a class output there is no top-1 to report, per image either.
    features = compare_outputs([got[1]], [want[1]])
    assert {w["top1_agrees"] for w in features.worst_images} == {None}
    assert "top-1" not in features.image_error_summary()
    # Nothing finite at all: no per-image figures, and the summary says nothing.
    broken = compare_outputs([np.full((2, 3), np.nan)], [np.ones((2, 3))])
    assert broken.median_image_relative_error is None and broken.worst_images == []
    assert broken.image_error_summary() == ""


def test_comparison_separates_the_quantised_outputs_clipping():
    rng = np.random.default_rng(1)
    want = [rng.normal(size=(30, 4)), rng.normal(size=(30, 3))]
    got = [w + rng.uniform(-0.01, 0.01, size=w.shape) for w in want]
    ranges = [(-1.5, 1.0), None]  # the second output is float: never saturated
    got[0] = np.clip(got[0], *ranges[0])  # what an int8 output does beyond its range
    metrics = compare_outputs(got, want, ranges)

    # NumPy reference: an image is saturated when a Keras value of the quantised output
    # lies outside its range; the clipped error compares with the clipped Keras values.
    beyond = ((want[0] < -1.5) | (want[0] > 1.0)).any(1)
    scale = max(np.abs(w).max() for w in want)
    clipped = max(
        np.abs(got[0] - np.clip(want[0], -1.5, 1.0)).max(), np.abs(got[1] - want[1]).max()
    )
    assert metrics.saturated_images == beyond.sum() > 0
    assert metrics.clipped_relative_error == pytest.approx(clipped / scale)
    assert metrics.clipped_relative_error < 0.02 / scale < metrics.relative_error
    for w in metrics.worst_images:
        assert w["saturated"] == bool(beyond[w["index"]])
    assert metrics.worst_images[0]["saturated"]  # the largest errors are the clipping's
    assert (
        f"{beyond.sum()} of 30 images beyond the quantised output's range (relative error "
        f"{clipped / scale:.3g} within it)" in metrics.image_error_summary()
    )
    first = metrics.worst_images[0]
    assert (
        f"worst #{first['index']} {first['relative_error']:.3g} "
        f"({'same' if first['top1_agrees'] else 'other'} top-1, saturated)"
    ) in metrics.image_error_summary()

    # Float outputs only: no saturation figures, and nothing about them in the summary.
    floats = compare_outputs(got, want, [None, None])
    assert floats.saturated_images is None and floats.clipped_relative_error is None
    assert {w["saturated"] for w in floats.worst_images} == {None}
    assert "saturated" not in floats.image_error_summary()
    assert "beyond" not in floats.image_error_summary()


def test_saturated_int8_output_is_named_with_the_calibration_fix():
    model = plain_model()
    held_out = held_out_images()
    # Calibrated on dimmed images, the int8 output range is too narrow for the held-out
    # logits: the largest of them clip.
    tflite = convert_tflite(model, "int8", calibration_images() * 0.3)
    with pytest.raises(ExportVerificationError, match="relative error on held-out") as info:
        verify_tflite(tflite, model, "int8", held_out, probes=False)
    report = info.value.report
    # The values that round to one of the int8 codes -128..127 (half a step beyond both).
    scale, zero_point = report.outputs[0]["scale"], report.outputs[0]["zero_point"]
    low, high = (-128.5 - zero_point) * scale, (127.5 - zero_point) * scale
    assert quantized_range(report.outputs[0]) == pytest.approx((low, high))
    logits = keras.ops.convert_to_numpy(model(held_out, training=False))
    saturated = int(((logits < low) | (logits > high)).any(1).sum())
    held = report.held_out
    assert held.saturated_images == saturated > 0
    assert held.clipped_relative_error < held.relative_error
    assert held.worst_images[0]["saturated"]
    hint = next(h for h in report.hints if "calibrat" in h)
    assert f"{saturated} of {len(held_out)} held-out images" in hint
    assert "num_calibration_samples" in hint and "--num-calibration" in hint
    # Calibrated on the images themselves, nothing saturates and no such hint is given.
    fine = verify_tflite(
        convert_tflite(model, "int8", held_out), model, "int8", held_out, probes=False,
        thresholds={"max_relative_error": 1e-6}, enforce=False,
    )  # fmt: skip
    assert fine.held_out.saturated_images == 0
    assert not any("calibrat" in h for h in fine.hints)


def test_relative_error_failure_gives_the_per_image_errors():
    model = plain_model()
    with pytest.raises(ExportVerificationError, match="relative error on held-out") as info:
        verify_tflite(
            convert_tflite(model, "int8", calibration_images()),
            model,
            "int8",
            held_out_images(),
            thresholds={"max_relative_error": 1e-6},
            probes=False,
        )
    held = info.value.report.held_out
    failure = next(f for f in info.value.report.failures if "relative error" in f)
    assert held.image_error_summary() in failure
    assert f"median {held.median_image_relative_error:.3g}" in failure
    assert held.median_image_relative_error <= held.p99_image_relative_error
    assert held.p99_image_relative_error <= held.relative_error
    assert held.worst_images[0]["relative_error"] == pytest.approx(held.relative_error)
    assert held.image_error_summary() in info.value.report.summary()


# --- several exports of one model ------------------------------------------------------------


def test_prepared_model_shares_one_saved_model_and_the_keras_outputs(tmp_path, monkeypatch):
    """With one `PreparedModel`, the SavedModel and every format come from one batch-1
    SavedModel, written once, and a second format computes no Keras output; the reports and
    files are those of exports made alone."""
    model = trained("srm")  # an inference form: the clone is shared too
    calls = {"write_saved_model": 0, "keras_outputs": 0}

    def counted(name):
        original = getattr(prepared_module, name)

        def wrapper(*args, **kwargs):
            calls[name] += 1
            return original(*args, **kwargs)

        return wrapper

    for name in calls:
        monkeypatch.setattr(prepared_module, name, counted(name))
    with PreparedModel(model) as prepared:
        saved = export_saved_model(model, tmp_path / "saved", prepared=prepared)
        reports = {}
        # The float formats share one converter: each must set every option it reads.
        for fmt in ("float16", "dynamic", "float32", "int8"):
            reports[fmt] = export_tflite(
                model, tmp_path / f"{fmt}.tflite", fmt, calibration_images(), held_out_images(),
                prepared=prepared,
            )  # fmt: skip
            if fmt == "float16":
                keras_calls = calls["keras_outputs"]
        assert calls["keras_outputs"] == keras_calls
        assert calls["write_saved_model"] == 1
        directory = prepared.saved_model(image_input_spec(model))
        with pytest.raises(ValueError, match="PreparedModel"):
            export_tflite(plain_model(), tmp_path / "other.tflite", prepared=prepared)
    assert not os.path.exists(directory)  # the temporary SavedModel goes with the context
    assert saved.passed and saved.inference_forms == inference_model(model)[1]

    monkeypatch.undo()
    alone = export_saved_model(model, tmp_path / "saved_alone")
    assert {**saved.to_dict(), "path": None} == {**alone.to_dict(), "path": None}
    for fmt, report in reports.items():
        alone = export_tflite(
            model, tmp_path / f"alone_{fmt}.tflite", fmt, calibration_images(), held_out_images()
        )
        assert {**report.to_dict(), "path": None} == {**alone.to_dict(), "path": None}
        assert (tmp_path / f"{fmt}.tflite").read_bytes() == (
            tmp_path / f"alone_{fmt}.tflite"
        ).read_bytes()


# --- atomic writes and the overwrite guard ---------------------------------------------------


def _half_then_interrupt(path, data):
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    raise KeyboardInterrupt


def test_interrupted_tflite_write_leaves_nothing_and_keeps_the_old_file(tmp_path, monkeypatch):
    model = plain_model()
    monkeypatch.setattr(export_files, "_write_file", _half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        export_tflite(model, tmp_path / "new_dir" / "model.tflite")
    assert list(tmp_path.iterdir()) == []  # not even the directory made for it

    (tmp_path / "model.tflite").write_bytes(b"the user's model")
    with pytest.raises(KeyboardInterrupt):
        export_tflite(model, tmp_path / "model.tflite", overwrite=True)
    assert os.listdir(tmp_path) == ["model.tflite"]
    assert (tmp_path / "model.tflite").read_bytes() == b"the user's model"


def test_failed_saved_model_leaves_nothing_and_keeps_the_old_one(tmp_path, monkeypatch):
    model = plain_model()
    export_saved_model(model, tmp_path / "saved")

    def snapshot():
        return {str(p): p.stat().st_mtime_ns for p in (tmp_path / "saved").rglob("*")}

    before = snapshot()

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(saved_model_module, "check_saved_model", interrupt)
    with pytest.raises(KeyboardInterrupt):
        export_saved_model(model, tmp_path / "saved", overwrite=True)
    with pytest.raises(KeyboardInterrupt):
        export_saved_model(model, tmp_path / "other")
    assert os.listdir(tmp_path) == ["saved"]
    assert snapshot() == before


def test_existing_outputs_are_kept_unless_overwrite(tmp_path):
    model = plain_model()
    path = tmp_path / "model.tflite"
    path.write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_tflite(model, path)
    assert path.read_bytes() == b"mine"
    report = export_tflite(model, path, overwrite=True)
    assert report.passed and path.read_bytes()[4:8] == b"TFL3"
    assert os.listdir(tmp_path) == ["model.tflite"]

    export_saved_model(model, tmp_path / "saved")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_saved_model(model, tmp_path / "saved")
    assert export_saved_model(model, tmp_path / "saved", overwrite=True).passed
    assert sorted(os.listdir(tmp_path)) == ["model.tflite", "saved"]

    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "cat.jpg").write_bytes(b"cat")
    with pytest.raises(FileExistsError, match=r"did not write \(no saved_model.pb\)"):
        export_saved_model(model, photos, overwrite=True)
    with pytest.raises(IsADirectoryError):
        export_tflite(model, photos, overwrite=True)
    assert os.listdir(photos) == ["cat.jpg"]
    (tmp_path / "empty").mkdir()  # an empty folder holds nothing to protect
    assert export_saved_model(model, tmp_path / "empty").passed


# --- bad input -------------------------------------------------------------------------------


def test_bad_format_and_calibration_data_are_clear_errors(tmp_path):
    model = plain_model()
    path = tmp_path / "model.tflite"
    with pytest.raises(ValueError, match=r"Unknown TFLite format 'int4'.*'float16'"):
        export_tflite(model, path, "int4")
    with pytest.raises(ValueError, match=r"needs representative_data.*\(N, 16, 16, 3\)"):
        export_tflite(model, path, "int8")
    wrong = np.zeros((4, 32, 32, 3), "float32")
    with pytest.raises(ValueError, match=r"\(N, 16, 16, 3\).*\(4, 32, 32, 3\)"):
        export_tflite(model, path, "int8", wrong)
    with pytest.raises(ValueError, match="holds no images"):
        export_tflite(model, path, "int8", np.zeros((0, 16, 16, 3), "float32"))
    with pytest.raises(ValueError, match="NaN"):
        export_tflite(model, path, "int8", np.full((2, 16, 16, 3), np.nan, "float32"))
    with pytest.raises(ValueError, match=r"validation_data.*\(N, 16, 16, 3\).*\(16, 16\)"):
        export_tflite(model, path, "float32", validation_data=np.zeros((16, 16)))
    with pytest.raises(ValueError, match="Unknown thresholds"):
        export_tflite(model, path, thresholds={"max_error": 1.0})
    with pytest.raises(ValueError, match="batch_size"):
        export_saved_model(model, tmp_path / "saved", batch_size=0)
    with pytest.raises(ValueError, match="Unknown export format"):
        export_artifacts(model, tmp_path, ["tflite"])
    assert list(tmp_path.iterdir()) == []


def _model_on(shape, dtype="float32", inputs=1):
    tensors = [keras.Input(shape, dtype=dtype) for _ in range(inputs)]
    x = ops.cast(tensors[0] if inputs == 1 else keras.layers.Concatenate()(tensors), "float32")
    x = ops.mean(x, axis=tuple(range(1, len(shape) + 1)))[:, None]
    return keras.Model(tensors, keras.layers.Dense(2)(x))


@pytest.mark.parametrize(
    ("model_fn", "message"),
    [
        (lambda: _model_on((10,)), r"image input of shape \(batch, height, width, channels\)"),
        (lambda: _model_on((3, SIZE, SIZE)), "channels-last"),
        (lambda: _model_on((SIZE, SIZE, 3), inputs=2), "one image input"),
        (lambda: _model_on((SIZE, SIZE, 3), dtype="int32"), "floating-point"),
        (lambda: _model_on((None, None, 3)), r"image_size=\(height, width\)"),
    ],
    ids=["vector", "channels-first", "two-inputs", "integer", "unknown-size"],
)
def test_models_without_an_nhwc_image_input_are_rejected(model_fn, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        export_tflite(model_fn(), tmp_path / "model.tflite")
    assert list(tmp_path.iterdir()) == []


def test_unknown_image_size_can_be_given():
    inputs = keras.Input((None, None, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3)(x))
    report = verify_tflite(
        _convert_float(model, (SIZE, SIZE)), model, "float32", image_size=(SIZE, SIZE)
    )
    assert report.passed and report.input["shape"] == [1, SIZE, SIZE, 3]
    assert report.held_out_source.startswith("synthetic")
    with pytest.raises(ValueError, match="fixes it to 16"):
        verify_tflite(b"", plain_model(), "float32", image_size=(SIZE, 8))


def _convert_float(model, image_size):
    from keras_chanattn.export import convert_tflite

    return convert_tflite(model, "float32", image_size=image_size)


def test_image_sources_are_read_alike():
    spec = ImageSpec(SIZE, SIZE, 3, "float32")
    x = held_out_images()[:10]
    y = np.arange(10)
    sources = [
        x,
        (x, y),
        list(x),
        tf.data.Dataset.from_tensor_slices(x),
        tf.data.Dataset.from_tensor_slices((x, y)),
        tf.data.Dataset.from_tensor_slices((x, y)).batch(4),
        lambda: ([x[i : i + 1]] for i in range(10)),  # TFLite's representative_dataset style
        lambda: iter(x),
    ]
    for source in sources:
        np.testing.assert_array_equal(as_images(source, spec, "data"), x)
    assert as_images(x, spec, "data", limit=3).shape == (3, SIZE, SIZE, 3)
    with pytest.raises(ValueError, match="dicts"):
        as_images(tf.data.Dataset.from_tensor_slices({"image": x}), spec, "data")
    names, probes = probe_images(spec, 0.0, 1.0)
    assert probes.shape == (len(names), SIZE, SIZE, 3)
    assert probes.min() == 0.0 and probes.max() == 1.0


# --- the command line ------------------------------------------------------------------------


def test_cli_export_writes_verified_artefacts(tmp_path, capsys):
    model_path = tmp_path / "se_net.keras"
    trained("se").save(model_path)
    np.save(tmp_path / "calibration.npy", calibration_images())
    np.savez(tmp_path / "held_out.npz", images=held_out_images())
    out = tmp_path / "out"
    argv = [
        "export", str(model_path), "--format", "savedmodel,float32", "--format", "int8",
        "--calibration", str(tmp_path / "calibration.npy"),
        "--validation", str(tmp_path / "held_out.npz"), "--out", str(out),
    ]  # fmt: skip
    assert cli_main(argv) == 0
    assert sorted(os.listdir(out)) == [
        "se_net_float32.json",
        "se_net_float32.tflite",
        "se_net_int8.json",
        "se_net_int8.tflite",
        "se_net_saved_model",
        "se_net_saved_model.json",
    ]
    report = json.loads((out / "se_net_int8.json").read_text())
    assert report["passed"] and report["input"]["dtype"] == "int8"
    assert report["held_out"]["samples"] == len(held_out_images())
    assert "int8: PASSED" in capsys.readouterr().out

    before = {name: os.stat(out / name).st_mtime_ns for name in os.listdir(out)}
    assert cli_main(argv) == 2
    assert "already exists" in capsys.readouterr().err
    assert {name: os.stat(out / name).st_mtime_ns for name in os.listdir(out)} == before
    assert cli_main([*argv[:2], "--format", "int4", "--out", str(out)]) == 2
