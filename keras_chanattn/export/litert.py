"""The LiteRT interpreter: creation with XNNPACK, running a `.tflite`, its graph and ops."""


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
