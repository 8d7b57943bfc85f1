"""benchmarks/int8_output_margin.py runs end to end on a tiny model and prints one row per
margin, whose figures agree with each other."""

import importlib.util
import pathlib

import keras

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "int8_output_margin.py"


def _script():
    spec = importlib.util.spec_from_file_location("int8_output_margin", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_margin_benchmark_prints_a_row_per_margin(tmp_path, capsys):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    path = tmp_path / "tiny.keras"
    keras.Model(inputs, keras.layers.Dense(10)(x)).save(path)
    argv = [str(path), "--margins", "0,0.5", "--draws", "1", "--calibration", "4"]
    _script().main(argv)
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if str(path) in line]
    assert [float(row[1]) for row in rows] == [0.0, 0.5]
    for _, _, raw, clipped_out, _, top1 in rows:
        assert float(clipped_out) <= float(raw) and 0 <= float(top1) <= 1
    # Calibrated on 4 images, some held-out logits clip; half the range again clips fewer.
    assert float(rows[0][4]) > float(rows[1][4])
