"""LiteRT internals: the nodes of a prepared interpreter's execution plan; the v2 API's
CPU-acceleration verdict with its native log lines kept off stderr."""

import contextlib
import gc
import os
import sys
import tempfile


def interpreter_nodes(interpreter):
    """Every node of a prepared interpreter, delegate partitions included.

    Once `allocate_tensors()` has applied a delegate (XNNPACK by default), the list holds
    the model's original nodes followed by one node named `DELEGATE` per partition the
    delegate took, with that partition's input and output tensors. LiteRT has no public
    API for it; this reads `Interpreter._get_ops_details()`, as TensorFlow's quantisation
    debugger does.

    Returns:
        A list of dicts with `index`, `op_name`, `inputs` and `outputs` (tensor indices,
        `-1` for an absent optional input), `operand_types` and `result_types` (dtypes).
    """
    return interpreter._get_ops_details()  # noqa: SLF001


def compiled_model_fully_accelerated(tflite_bytes):
    """Whether LiteRT's v2 API, compiling the flatbuffer for its CPU accelerator (XNNPACK),
    runs every op on it (`CompiledModel.is_fully_accelerated`).

    The API is public, but compiling prints the accelerator registry's native INFO lines
    (one per accelerator and plugin tried) on file descriptor 2; they are caught here and
    added to the error if compilation fails, so a verification prints nothing.

    Raises:
        RuntimeError: the model could not be compiled.
    """
    from ai_edge_litert.compiled_model import CompiledModel
    from ai_edge_litert.hardware_accelerator import HardwareAccelerator

    with _captured_fd(2) as captured:
        try:
            model = CompiledModel.from_buffer(tflite_bytes, hardware_accel=HardwareAccelerator.CPU)
            fully = model.is_fully_accelerated()
            model.close()
            del model  # its environment logs its accelerators' teardown
            gc.collect()
            return fully
        except RuntimeError as error:
            failure, log = error, captured.text()[-2000:]
    raise RuntimeError(f"{failure} {log}") from failure


class _Captured:
    def __init__(self, path):
        self.path = path

    def text(self):
        with open(self.path, "rb") as f:
            return f.read().decode("utf-8", "replace")


@contextlib.contextmanager
def _captured_fd(fd):
    """File descriptor `fd` written to a temporary file for the block (`.text()` reads it)."""
    sys.stderr.flush()
    with tempfile.TemporaryDirectory() as directory:
        captured = _Captured(os.path.join(directory, "fd.log"))
        saved = os.dup(fd)
        with open(captured.path, "wb") as sink:
            os.dup2(sink.fileno(), fd)
        try:
            yield captured
        finally:
            os.dup2(saved, fd)
            os.close(saved)
