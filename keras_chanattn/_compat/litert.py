"""LiteRT interpreter internals: the nodes of a prepared interpreter's execution plan."""


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
