"""The `chanattn` command keeps TensorFlow's native log lines off stderr, and nothing else."""

import re
import subprocess
import sys

import pytest

from keras_chanattn import native_logs

# What a newcomer counts as TensorFlow log lines (native format and TF's notices).
TF_LOG_LINE = re.compile(r"^[IWE][0-9]{4} |oneDNN custom operations|cuda drivers|absl::Initialize")

NOISE = [
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    b"I0000 00:00:1796292851.752772    8046 cudart_stub.cc:31] Could not find cuda drivers\n",
    b"W0000 00:00:1796292851.752772    8046 tf_tfl_flatbuffer_helpers.cc:365] Ignored output\n",
    b"I1203 10:06:40.123456  4989 external/loader.cc:12] Reading SavedModel from: /tmp/x\n",
    b"To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow "
    b"with the appropriate compiler flags.\n",
    b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n",
    b"E0000 00:00:1796301089.878807   30417 cuda_platform.cc:52] failed call to cuInit: "
    b"INTERNAL: CUDA error\n",
    b"E0000 00:00:1796301090.794628   30417 node_def_util.cc:682] NodeDef mentions attribute "
    b"use_unbounded_threadpool which is not in the op definition: Op<name=MapDataset>\n",
    b"fully_quantize: 0, inference_type: 6, input_inference_type: INT8, output_inference_type: "
    b"INT8\n",
    b"2026-12-03 10:00:00.1: I tensorflow/core/util/port.cc:153] oneDNN custom operations are on\n",
]
KEPT = [
    b"E0000 00:00:1796292851.752772    8046 interpreter.cc:9] Node number 3 failed to invoke\n",
    b"Traceback (most recent call last):\n",
    b"ValueError: Unknown blocks ['nope']\n",
    b"UserWarning: I0000 is only a prefix here\n",
]


def test_filter_drops_native_info_and_warning_lines_and_keeps_errors():
    assert all(native_logs.is_noise(line) for line in NOISE)
    assert not any(native_logs.is_noise(line) for line in KEPT)


@pytest.mark.slow
def test_filter_on_file_descriptor_2_passes_errors_through_in_order():
    code = (
        "import os, sys\n"
        "from keras_chanattn import native_logs\n"
        "native_logs.start()\n"
        f"os.write(2, {b''.join(NOISE + KEPT)!r})\n"
        "print('python stderr', file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    lines = result.stderr.decode().splitlines(keepends=True)
    after = lines[lines.index(KEPT[0].decode()) :]  # what TensorFlow's import printed comes first
    assert after == [k.decode() for k in KEPT] + ["python stderr\n"]


def test_command_prints_no_tensorflow_log_lines():
    result = subprocess.run(
        [sys.executable, "-m", "keras_chanattn", "list"],
        capture_output=True,
        timeout=120,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "se " in result.stdout
    noisy = [line for line in result.stderr.splitlines() if TF_LOG_LINE.search(line)]
    assert noisy == []
