"""Keeps TensorFlow's and LiteRT's native (C++) log lines off the `chanattn` command's stderr.

TensorFlow prints `I0000 ... cudart_stub.cc` lines at import even with
`TF_CPP_MIN_LOG_LEVEL=3` (they are written before absl's logging starts), and the TFLite
converter and interpreter print their loader and delegate lines. No setting turns those off,
so the command line routes file descriptor 2 through a filter that drops informational and
warning lines of that native format and passes everything else (errors, Python warnings,
tracebacks) through unchanged. `chanattn --verbose` leaves stderr alone.
"""

import atexit
import os
import re
import sys
import threading

# Native INFO and WARNING lines (`I1203 10:06:40.123456  4989 file.cc:31] ...`), two
# ERROR lines that are not errors on a CPU machine (no CUDA driver; tf.data's graph carrying
# an attribute its kernel predates), absl's pre-initialisation notice, the CPU-feature and
# oneDNN notices, LiteRT's delegate notice, the quantiser's settings line.
_NATIVE = rb"[\d:.]+\s+\d+ [\w./-]+:\d+\] "
NOISE = re.compile(
    rb"^(?:[IW]\d{4} " + _NATIVE + rb"|E\d{4} " + _NATIVE + rb"failed call to cuInit"
    rb"|E\d{4} " + _NATIVE + rb"NodeDef mentions attribute \w+ which is not in the op def"
    rb"|fully_quantize: \d, inference_type: "
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|To enable the following instructions: .* rebuild TensorFlow"
    rb"|INFO: Created TensorFlow Lite XNNPACK delegate"
    rb"|.*oneDNN custom operations are on)"
)

_state = {}


def is_noise(line):
    """Whether one stderr line (bytes) is a native info/warning line the filter drops."""
    return bool(NOISE.match(line))


def _pump(read_fd, out_fd):
    with os.fdopen(read_fd, "rb") as source:
        for line in source:
            if not is_noise(line):
                os.write(out_fd, line)


def start():
    """Routes file descriptor 2 through the filter until `stop()` (or exit). Idempotent."""
    if _state:
        return
    sys.stderr.flush()
    read_fd, write_fd = os.pipe()
    saved = os.dup(2)
    os.dup2(write_fd, 2)
    os.close(write_fd)
    thread = threading.Thread(target=_pump, args=(read_fd, saved), daemon=True)
    thread.start()
    _state.update(saved=saved, thread=thread)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    atexit.register(stop)


def stop():
    """Puts the original stderr back and lets the filter pass on what it still holds."""
    if not _state:
        return
    sys.stderr.flush()
    os.dup2(_state["saved"], 2)  # the pipe loses its last writer: the pump reads to the end
    _state["thread"].join(timeout=2)
    os.close(_state.pop("saved"))
    _state.clear()


def started_as_command():
    """Whether this process is the `chanattn` command (or `python -m keras_chanattn`)."""
    argv = getattr(sys, "orig_argv", sys.argv)
    as_module = "-m" in argv and "keras_chanattn" in argv
    is_script = os.path.basename(sys.argv[0]) == "chanattn"
    return (as_module or is_script) and "--verbose" not in argv
