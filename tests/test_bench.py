"""Tests of `keras_chanattn.bench`: side-by-side export, timing and reports of small models.

One bench run is shared by most tests: three tiny models (16x16x3 input, one conv, the block,
max pooling, a 10-way Dense; plain, SE and ECA), briefly trained on the embedded digits, in the
four TFLite formats, with a few latency runs.
"""

import csv
import json
import os

import keras
import numpy as np
import pytest

from keras_chanattn import create_attention
from keras_chanattn.bench import (
    COLUMNS,
    REPORT_FILES,
    TFLITE_DIR,
    backbone_models,
    bench,
    measure_latency,
    ratio_column,
)
from keras_chanattn.cli import main as cli_main
from keras_chanattn.data import load_digits_images
from keras_chanattn.export import QUANTIZATIONS
from keras_chanattn.export.accelerators import gpu_column
from keras_chanattn.models import cifar_resnet

# Every test reading the module's `run` fixture (a bench of three models) on one worker.
pytestmark = pytest.mark.xdist_group("bench_run")

SIZE = 16
FILTERS = 8
POOL = 4
CLASSES = 10
RUNS = 4
WARMUP = 1
HELD_OUT = 64
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def digits():
    (x, y), (xt, yt) = load_digits_images(SIZE)
    return x, y, xt, yt  # the whole test split; most tests take HELD_OUT of it


def tiny_model(block, x, y):
    inputs = keras.Input((SIZE, SIZE, 3))
    h = keras.layers.Conv2D(FILTERS, 3, padding="same", activation="relu")(inputs)
    if block is not None:
        h = create_attention(block)(h)
    h = keras.layers.Flatten()(keras.layers.MaxPooling2D(POOL)(h))
    outputs = keras.layers.Dense(CLASSES)(h)
    model = keras.Model(inputs, outputs, name=block or "plain")
    model.compile(
        keras.optimizers.Adam(1e-2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y, epochs=2, batch_size=64, verbose=0)
    return model


@pytest.fixture(scope="module")
def run(digits, tmp_path_factory):
    x, y, xt, yt = digits
    xt, yt = xt[:HELD_OUT], yt[:HELD_OUT]
    keras.utils.set_random_seed(0)
    models = {name: tiny_model(block, x, y) for name, block in [("plain", None), ("se", "se")]}
    models["eca"] = tiny_model("eca", x, y)
    out = tmp_path_factory.mktemp("bench")
    result = bench(
        models,
        out,
        representative_data=x[:64],
        validation_data=(xt, yt),
        runs=RUNS,
        warmup=WARMUP,
        verbose=0,
    )
    return models, result, out


SATURATION_COLUMNS = ("saturated_images", "clipped_relative_error")


def test_every_column_is_present_for_every_model_and_format(run):
    models, result, _ = run
    expected = list(COLUMNS)
    expected.insert(expected.index("latency_min_ms") + 1, ratio_column("plain"))
    assert result.columns == expected
    assert result.baselines == ["plain"]
    assert [(r["model"], r["format"]) for r in result.rows] == [
        (m, f) for m in models for f in QUANTIZATIONS
    ]
    for row in result.rows:
        assert list(row) == expected
        assert row["error"] is None
        # Only a full-int8 output is quantised, and has saturation figures.
        optional = {"error", "softmax_head"} | (
            set() if row["format"] == "int8" else set(SATURATION_COLUMNS)
        )
        missing = [c for c in expected if row[c] is None and c not in optional]
        assert not missing, (row["model"], row["format"], missing)


def test_latencies_are_positive_and_ratios_follow_the_baseline(run):
    _, result, _ = run
    for row in result.rows:
        assert row["runs"] == RUNS and row["threads"] == 2 and row["xnnpack"] is True
        assert 0 < row["latency_min_ms"] <= row["latency_median_ms"] <= row["latency_p90_ms"]
        assert row["latency_min_ms"] <= row["latency_mean_ms"]
        base = result.row("plain", row["format"])["latency_median_ms"]
        assert row[ratio_column("plain")] == pytest.approx(row["latency_median_ms"] / base)
    assert all(result.row("plain", f)[ratio_column("plain")] == 1.0 for f in QUANTIZATIONS)


def test_sizes_match_the_files_and_partitions_are_counted(run):
    _, result, out = run
    for row in result.rows:
        path = row["path"]
        assert os.path.dirname(path) == str(out / TFLITE_DIR)
        assert path.endswith(f"{row['model']}_{row['format']}.tflite")
        assert row["size_bytes"] == os.path.getsize(path)
        report = result.reports[(row["model"], row["format"])]
        assert row["size_bytes"] == report.size_bytes
        assert os.path.isfile(path[: -len(".tflite")] + ".json")  # the verification report
        assert row["partitions"] == report.xnnpack_partitions >= 1
        assert row["undelegated_ops"] == report.undelegated_ops
        assert row["cpu_fully_accelerated"] is report.cpu_fully_accelerated is True
        assert row["gpu"] == gpu_column(report.gpu_delegate)
        assert isinstance(row["float_ops"], list)


def test_params_and_flops(run):
    models, result, _ = run
    conv_macs = SIZE * SIZE * FILTERS * 3 * 3 * 3
    dense_macs = (SIZE // POOL) ** 2 * FILTERS * CLASSES
    assert result.row("plain", "float32")["flops"] == conv_macs + dense_macs
    for name, model in models.items():
        row = result.row(name, "int8")
        assert row["params"] == model.count_params()
        assert row["trainable_params"] == sum(
            int(np.prod(w.shape)) for w in model.trainable_weights
        )
        if name != "plain":
            assert row["flops"] > result.row("plain", "int8")["flops"]
            assert row["params"] > result.row("plain", "int8")["params"]


def test_fidelity_and_accuracy_figures(run):
    _, result, _ = run
    for row in result.rows:
        for key in ("top1_agreement", "probe_top1_agreement", "accuracy", "keras_accuracy"):
            assert 0.0 <= row[key] <= 1.0, key
        if row["format"] != "float32":  # quantised: never exact, or the wrong file was run
            assert row["relative_error"] > 0 and row["max_abs_error"] > 0
            assert row["image_relative_error_median"] > 0
        # Per image: the median and 99th percentile lie below the worst image's error.
        assert 0 <= row["image_relative_error_median"] <= row["image_relative_error_p99"]
        assert row["image_relative_error_p99"] <= row["relative_error"]
        if row["format"] == "int8":
            assert 0 <= row["saturated_images"] <= HELD_OUT
            assert 0 < row["clipped_relative_error"] <= row["relative_error"]
        else:
            assert [row[c] for c in SATURATION_COLUMNS] == [None, None]
        assert row["held_out_source"] == "validation_data"
        assert isinstance(row["verified"], bool)
        assert row["verified"] == (not row["failures"])
        if row["format"] == "float32":
            assert row["relative_error"] < 1e-4
            assert row["verified"]
            # Same predictions as Keras, so the same accuracy, up to one near-tie.
            assert abs(row["accuracy"] - row["keras_accuracy"]) <= 1 / HELD_OUT
    assert result.config["held_out_samples"] == {"plain": HELD_OUT, "se": HELD_OUT, "eca": HELD_OUT}


def test_verification_uses_every_held_out_image_asked_for(digits, tmp_path):
    """Past export_tflite's own default of 256: the agreement is over `max_samples`."""
    x, y, xt, yt = digits
    count = 300
    assert len(xt) >= count
    keras.utils.set_random_seed(0)
    result = bench(
        {"plain": tiny_model(None, x, y)},
        tmp_path,
        formats=["float32"],
        validation_data=(xt, yt),
        max_samples=count,
        runs=1,
        warmup=0,
        flops=False,
        plots=False,
        verbose=0,
    )
    assert result.config["held_out_samples"] == {"plain": count}
    with open(tmp_path / "tflite" / "plain_float32.json") as file:
        assert json.load(file)["held_out"]["samples"] == count


def test_report_files_hold_the_rows(run):
    _, result, out = run
    assert set(result.files) == set(REPORT_FILES)
    for kind, name in REPORT_FILES.items():
        assert result.files[kind] == str(out / name) and os.path.getsize(out / name) > 0
    with open(out / REPORT_FILES["json"]) as f:
        saved = json.load(f)
    assert saved["rows"] == json.loads(result.to_json())["rows"]
    assert saved["columns"] == result.columns and saved["baselines"] == ["plain"]
    with open(out / REPORT_FILES["csv"], newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == result.columns
    assert len(rows) == len(result.rows)
    for got, want in zip(rows, result.rows, strict=True):
        assert int(got["size_bytes"]) == want["size_bytes"]
        assert float(got["latency_median_ms"]) == pytest.approx(want["latency_median_ms"])
    table = (out / REPORT_FILES["table"]).read_text()
    assert table.splitlines()[0].split()[:2] == ["model", "format"]
    assert all(name in table for name in ("plain", "se", "eca", "x plain"))


def test_plots_are_valid_pngs(run):
    from matplotlib.image import imread

    _, result, _ = run
    for kind in ("latency_plot", "fidelity_plot"):
        path = result.files[kind]
        with open(path, "rb") as f:
            assert f.read(8) == PNG_SIGNATURE
        image = imread(path)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
        assert np.ptp(image) > 0  # something is drawn


def test_existing_reports_are_kept_unless_overwrite(run):
    models, result, out = run
    before = (out / REPORT_FILES["json"]).read_bytes()
    with pytest.raises(FileExistsError, match="overwrite"):
        bench(models, out, formats=["float32"], verbose=0)
    assert (out / REPORT_FILES["json"]).read_bytes() == before


def test_overwrite_replaces_the_reports(run, tmp_path):
    models, first, _ = run
    exported = {m: {"float32": first.reports[(m, "float32")]} for m in models}

    def bench_again(overwrite):
        return bench(
            models, tmp_path, formats=["float32"], exported=exported, runs=2, warmup=0,
            plots=False, overwrite=overwrite, verbose=0,
        )  # fmt: skip

    bench_again(overwrite=False)
    report = tmp_path / REPORT_FILES["json"]
    report.write_text("a report the user keeps\n")
    with pytest.raises(FileExistsError, match="overwrite"):
        bench_again(overwrite=False)
    assert report.read_text() == "a report the user keeps\n"
    result = bench_again(overwrite=True)
    assert report.read_text() == result.to_json() + "\n"


def test_exported_files_are_timed_without_exporting_again(run, tmp_path):
    models, first, _ = run
    formats = ["float32", "int8"]
    exported = {m: {f: first.reports[(m, f)] for f in formats} for m in models}
    result = bench(
        models, tmp_path, formats=formats, baseline=["se", "plain"], exported=exported,
        runs=2, warmup=0, plots=False, verbose=0,
    )  # fmt: skip
    assert not (tmp_path / TFLITE_DIR).exists()
    assert sorted(os.listdir(tmp_path)) == ["bench.csv", "bench.json", "bench.txt"]
    for row in result.rows:
        before = first.row(row["model"], row["format"])
        assert row["path"] == before["path"] and row["top1_agreement"] == before["top1_agreement"]
        assert row["accuracy"] is None  # no labelled data given
        assert row["latency_median_ms"] > 0
    assert result.row("se", "int8")[ratio_column("se")] == 1.0
    assert result.columns.index(ratio_column("se")) + 1 == result.columns.index(
        ratio_column("plain")
    )


def test_bad_arguments_are_clear_errors(run, tmp_path):
    models, _, _ = run
    with pytest.raises(ValueError, match="not among the models"):
        bench(models, tmp_path, baseline="srm", verbose=0)
    with pytest.raises(ValueError, match="representative_data"):
        bench(models, tmp_path, formats=["int8"], verbose=0)
    with pytest.raises(ValueError, match="Unknown TFLite format"):
        bench(models, tmp_path, formats=["int4"], verbose=0)
    with pytest.raises(ValueError, match="Two models are named 'se'"):
        bench([models["se"], models["se"]], tmp_path, verbose=0)
    with pytest.raises(ValueError, match="runs"):
        bench(models, tmp_path, formats=["float32"], runs=0, verbose=0)
    assert not os.listdir(tmp_path)


class _FakeInterpreter:
    """Records the order of `invoke()` calls."""

    def __init__(self, name, calls):
        self.name, self.calls = name, calls

    def get_input_details(self):
        return [{"shape": np.array([1, 4, 4, 3]), "dtype": np.int8, "index": 0,
                 "quantization": (1 / 128, 0)}]  # fmt: skip

    def set_tensor(self, index, value):
        assert value.dtype == np.int8 and value.shape == (1, 4, 4, 3)

    def invoke(self):
        self.calls.append(self.name)


def test_latency_runs_are_interleaved_in_shuffled_rounds(monkeypatch):
    from keras_chanattn.bench import latency

    calls = []
    monkeypatch.setattr(
        latency,
        "make_interpreter",
        lambda content, threads: (_FakeInterpreter(content, calls), None),
    )
    names = [b"a", b"b", b"c", b"d"]
    stats = measure_latency({n.decode(): n for n in names}, warmup=2, runs=10, seed=1)
    rounds = [calls[i : i + len(names)] for i in range(0, len(calls), len(names))]
    assert len(rounds) == 12
    assert all(sorted(r) == names for r in rounds)  # every model once per round
    assert len({tuple(r) for r in rounds}) > 1  # in varying order
    assert all(s.runs == 10 and s.xnnpack for s in stats.values())


def test_backbone_models_build_plain_and_blocks_and_skip_what_cannot_build():
    def resnet8(attention=None, **kwargs):
        return cifar_resnet(8, attention, **kwargs)

    models, skipped = backbone_models(resnet8, ["se", "sa"], input_shape=(SIZE, SIZE, 3))
    assert list(models) == ["plain", "se"]
    assert models["plain"].name == "plain_resnet8" and models["se"].name == "se_resnet8"
    assert list(skipped) == ["sa"] and "groups" in skipped["sa"]
    models, _ = backbone_models("resnet50", ["eca"], include_plain=False, input_shape=(32, 32, 3))
    blocks = [layer for layer in models["eca"].layers if layer.name.endswith("attention")]
    kernels = [layer.kernel_size for layer in blocks]
    assert sorted(set(kernels)) == [3, 5, 7]  # ECA's official per-stage kernels
    with pytest.raises(ValueError, match="Unknown blocks"):
        backbone_models("resnet20", ["nope"])
    with pytest.raises(ValueError, match="Unknown backbone"):
        backbone_models("resnet21")


def test_cli_bench(run, tmp_path, capsys):
    models, _, _ = run
    paths = []
    for name in ("plain", "se"):
        paths.append(str(tmp_path / f"{name}.keras"))
        models[name].save(paths[-1])
    out = tmp_path / "bench"
    common = ["--formats", "float32", "--runs", "3", "--warmup", "1", "--max-samples", "32"]
    argv = ["bench", "--models", ",".join(paths), *common, "--out", str(out)]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert "plain" in printed and "x plain" in printed
    saved = json.loads((out / "bench.json").read_text())
    assert [(r["model"], r["format"]) for r in saved["rows"]] == [
        ("plain", "float32"),
        ("se", "float32"),
    ]
    assert all(r["accuracy"] > 0.5 and r["latency_median_ms"] > 0 for r in saved["rows"])
    assert saved["config"]["held_out_samples"] == {"plain": 32, "se": 32}
    # A backbone and blocks, into the same folder: built, then refused before any export.
    argv = ["bench", "resnet20", "--blocks", "se,sa", "--image-size", str(SIZE), *common]
    assert cli_main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "skipping sa" in err and "already exists" in err
    assert not (out / TFLITE_DIR / "plain_resnet20_float32.tflite").exists()
