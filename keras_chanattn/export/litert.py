"""The LiteRT interpreter: created with XNNPACK as a phone would, run on images, its I/O."""

import numpy as np

from keras_chanattn.export.saved_model import output_order


def make_interpreter(tflite_bytes, num_threads):
    """A prepared LiteRT interpreter and why XNNPACK refused the model (or `None`).

    The interpreter applies its default XNNPACK delegate, as a phone would; when XNNPACK
    cannot prepare the model, it is built again on LiteRT's own kernels.

    Returns:
        `(interpreter, xnnpack_error)`: `xnnpack_error` is `None` when XNNPACK took it.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_content=tflite_bytes, num_threads=num_threads)
    try:
        interpreter.allocate_tensors()
        return interpreter, None
    except RuntimeError as error:
        reason = " ".join(str(error).split())
    interpreter = Interpreter(
        model_content=tflite_bytes,
        num_threads=num_threads,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    interpreter.allocate_tensors()
    return interpreter, reason


def quantize(x, details):
    """Float `x` as the input tensor `details` (a signature runner's) takes it."""
    scale, zero_point = details["quantization"]
    dtype = np.dtype(details["dtype"])
    if not np.issubdtype(dtype, np.integer):
        return x.astype(dtype)
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)


def dequantize(q, details):
    """An output tensor's values `q` as float32."""
    scale, zero_point = details["quantization"]
    if np.issubdtype(np.asarray(q).dtype, np.integer) and scale:
        return ((q.astype("float32") - zero_point) * scale).astype("float32")
    return np.asarray(q, "float32")


def io_details(details):
    """A signature tensor's name, shape, dtype, scale and zero point, as plain data."""
    scale, zero_point = details["quantization"]
    return {
        "name": details["name"],
        "shape": [int(d) for d in details["shape"]],
        "dtype": np.dtype(details["dtype"]).name,
        "scale": float(scale),
        "zero_point": int(zero_point),
    }


def signature_io(interpreter):
    """`(runner, input name, input details, [(output name, details), ...])` in model order."""
    signatures = interpreter.get_signature_list()
    if len(signatures) != 1:
        raise ValueError(
            f"Expected a .tflite with one signature (as export_tflite writes), found "
            f"{sorted(signatures)}."
        )
    runner = interpreter.get_signature_runner(next(iter(signatures)))
    inputs = runner.get_input_details()
    if len(inputs) != 1:
        raise ValueError(f"Expected a .tflite with one image input, found inputs {sorted(inputs)}.")
    ((input_name, input_details),) = inputs.items()
    outputs = runner.get_output_details()
    return runner, input_name, input_details, [(n, outputs[n]) for n in output_order(outputs)]


def run_tflite(interpreter, images):
    """Runs a prepared interpreter on `images` one at a time; returns float32 output arrays."""
    runner, input_name, input_details, outputs = signature_io(interpreter)
    results = []
    for image in images:
        got = runner(**{input_name: quantize(image[None], input_details)})
        results.append([dequantize(got[name], details) for name, details in outputs])
    return [np.concatenate(parts) for parts in zip(*results, strict=True)]
