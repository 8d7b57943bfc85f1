"""Accelerator coverage of a `.tflite`: LiteRT's CPU accelerator (v2 API) and the GPU delegate.

- CPU: `ai_edge_litert.compiled_model.CompiledModel` compiled for the CPU accelerator
  (XNNPACK) says whether it took every op (`is_fully_accelerated`). It gives no op list; the
  ops it leaves are those the v1 interpreter's XNNPACK delegate leaves (`undelegated_ops`),
  the same delegate.
- GPU: `tf.lite.experimental.Analyzer.analyze(..., gpu_compatibility=True)` checks each op
  against the GPU delegate's rules and prints `GPU COMPATIBILITY WARNING: <reason>` after an
  op it refuses. Some TensorFlow builds ship the analyzer without those rules: they call
  every graph compatible. `gpu_checker_active()` tells them apart with a graph the delegate
  cannot take (a GATHER_ND); such a build gets the package's own screen of the delegate's
  documented rules instead (`gpu_rules`), labelled `checked: "rules"`, never a false "all".
"""

import contextlib
import functools
import io
import re

from keras_chanattn._compat.litert import compiled_model_fully_accelerated
from keras_chanattn.export.gpu_rules import is_quantized, screen_gpu_rules

_OP = re.compile(r"^\s*Op#(\d+) (\w+)\(")
_WARNING = "GPU COMPATIBILITY WARNING: "
_SUMMARY = re.compile(r"Subgraph#\d+ has GPU delegate compatibility issues")
_SUBGRAPH = re.compile(r"^Subgraph#(\d+)")


def cpu_fully_accelerated(tflite_bytes):
    """`(fully, error)`: whether LiteRT's CPU accelerator (v2 `CompiledModel`) takes every op
    of the flatbuffer, and why it could not compile it (`fully` is then `None`)."""
    try:
        return compiled_model_fully_accelerated(tflite_bytes), None
    except RuntimeError as error:
        return None, " ".join(str(error).split())[:500]


def parse_gpu_analysis(text):
    """The ops the GPU delegate refuses, from the Analyzer's text (`gpu_compatibility=True`).

    Returns:
        `[{"subgraph", "index", "op", "reason"}]`, one per refused op, in graph order.
    """
    if not isinstance(text, str):
        raise TypeError(
            f"parse_gpu_analysis takes the Analyzer's printed text as a str, got "
            f"{type(text).__name__}; decode bytes first (text.decode('utf-8'))."
        )
    refused, subgraph, last_op = [], 0, None
    for line in text.splitlines():
        found = _SUBGRAPH.match(line)
        if found:
            subgraph, last_op = int(found.group(1)), None
            continue
        found = _OP.match(line)
        if found:
            last_op = (int(found.group(1)), found.group(2))
            continue
        if line.startswith(_WARNING) and not _SUMMARY.search(line) and last_op is not None:
            index, op = last_op
            reason = line[len(_WARNING) :].strip()
            refused.append({"subgraph": subgraph, "index": index, "op": op, "reason": reason})
    return refused


def analyzer_text(tflite_bytes):
    """What `tf.lite.experimental.Analyzer.analyze` prints for the flatbuffer, with the GPU
    delegate check (it prints from Python, so `redirect_stdout` captures it)."""
    import tensorflow as tf

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        tf.lite.experimental.Analyzer.analyze(model_content=tflite_bytes, gpu_compatibility=True)
    return buffer.getvalue()


@functools.cache
def gpu_checker_active():
    """Whether this TensorFlow's Analyzer applies the GPU delegate's rules: it must refuse a
    GATHER_ND, an op the GPU delegate does not have. Computed once per process."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec((1, 4, 4, 2), tf.float32)])
    def gather(x):
        return tf.gather_nd(x, [[0, 1], [0, 2]])

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [gather.get_concrete_function()], gather
    )
    return bool(parse_gpu_analysis(analyzer_text(converter.convert())))


RULES_NOTE = (
    "the package's screen of the GPU delegate's documented rules (export.gpu_rules), not "
    "the delegate: this TensorFlow's Analyzer has no GPU rules"
)
QUANTIZED_NOTE = (
    "; an 8-bit file runs on the GPU delegate as a float view (weights dequantized, "
    "8-bit inputs and outputs converted on the CPU)"
)


def gpu_compatibility(tflite_bytes):
    """The GPU delegate's verdict on the flatbuffer, as plain data.

    Returns:
        `{"checked", "accepts_all", "refused", "note"}`: `checked` is `"analyzer"` where
        this TensorFlow's Analyzer applies the GPU rules, else `"rules"` (the package's
        screen, `gpu_rules.screen_gpu_rules`); `refused` lists `{"subgraph", "index", "op",
        "reason"}` per op refused.
    """
    if gpu_checker_active():
        refused = parse_gpu_analysis(analyzer_text(tflite_bytes))
        return {"checked": "analyzer", "accepts_all": not refused, "refused": refused, "note": ""}
    refused = screen_gpu_rules(tflite_bytes)
    note = RULES_NOTE + (QUANTIZED_NOTE if is_quantized(tflite_bytes) else "")
    return {"checked": "rules", "accepts_all": not refused, "refused": refused, "note": note}


def gpu_column(gpu):
    """The bench table's short `gpu` cell: `all`, `<n> refused`, or `?` (not checked: a
    report written before the rules screen, or none)."""
    if not gpu or not gpu.get("checked"):
        return "?"
    return "all" if gpu["accepts_all"] else f"{len(gpu['refused'])} refused"
