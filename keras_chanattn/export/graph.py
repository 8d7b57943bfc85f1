"""A `.tflite`'s graph: its ops, the Keras layer of each, XNNPACK's partitions, float ops.

Ops are attributed to Keras layers through the TFLite tensor names, which carry the layer
names of the exported graph (e.g. `functional_1/squeeze_excite_1/Sigmoid`).
"""

import numpy as np

from keras_chanattn._compat.litert import interpreter_nodes
from keras_chanattn.export.ranges import builtin_names, scale_ratio_problems


def operator_codes(model):
    """`[(kind, name)]` per operator code of a flatbuffer `Model`: `("builtin", "ADD")`,
    `("custom", "FlexErf")`, ..."""
    from ai_edge_litert import schema_py_generated as schema

    names = builtin_names()
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema.BuiltinOperator.CUSTOM:
            custom = code.CustomCode()
            codes.append(("custom", custom.decode() if custom else "?"))
        else:
            codes.append(("builtin", names.get(builtin, f"BUILTIN_{builtin}")))
    return codes


def flatbuffer_ops(tflite_bytes):
    """The op of every operator in every subgraph of a `.tflite`, read from the flatbuffer.

    Returns:
        `(op_counts, custom_ops)`: `{builtin name: count}`, and the sorted custom op codes
        (Flex ops are custom ops named `Flex...`).
    """
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(tflite_bytes, 0)
    codes = operator_codes(model)
    counts, custom_ops = {}, set()
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for o in range(subgraph.OperatorsLength()):
            kind, name = codes[subgraph.Operators(o).OpcodeIndex()]
            if kind == "custom":
                custom_ops.add(name)
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items())), sorted(custom_ops)


def operator_outputs(tflite_bytes):
    """`[(op name, [output tensor names])]` of the main subgraph's operators, in order."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(tflite_bytes, 0)
    codes = operator_codes(model)
    subgraph = model.Subgraphs(0)
    found = []
    for o in range(subgraph.OperatorsLength()):
        operator = subgraph.Operators(o)
        names = [
            subgraph.Tensors(int(t)).Name().decode("utf-8", "replace")
            for t in operator.OutputsAsNumpy()
            if t >= 0
        ]
        found.append((codes[operator.OpcodeIndex()][1], names))
    return found


def attribute_layer(tensor_name, known_layers):
    """The Keras layer a TFLite tensor comes from, or `None`.

    The first of a fused name's parts (`a/b/op;a/b/other`) is a TF name path; the deepest
    segment equal to a known layer name, or to one followed by TF's `_<n>` uniquifying
    suffix, names the layer.
    """
    known = set(known_layers)
    segments = tensor_name.split(";")[0].split(":")[0].split("/")[:-1]
    for segment in reversed(segments):
        if segment in known:
            return segment
        stem, _, suffix = segment.rpartition("_")
        if suffix.isdigit() and stem in known:
            return stem
    return None


def _is_float(dtype):
    return np.issubdtype(np.dtype(dtype), np.floating)


def _per_channel(shape):
    return int(np.count_nonzero(np.asarray(shape[1:]) > 1)) <= 1


class PartitionGraph:
    """The nodes of a prepared interpreter, with XNNPACK's partitions resolved.

    Once `allocate_tensors()` has applied XNNPACK, the interpreter lists the model's nodes
    followed by one `DELEGATE` node per partition; their count is the number of partitions.
    The nodes a partition took are found by walking back from its outputs to its inputs;
    the rest run on LiteRT's own kernels.

    Args:
        interpreter: a prepared LiteRT interpreter (`litert.make_interpreter`).
        known_layers: the Keras layer names the nodes are attributed to.
    """

    def __init__(self, interpreter, known_layers):
        nodes = interpreter_nodes(interpreter)
        self.nodes = [n for n in nodes if n["op_name"] != "DELEGATE"]
        self.delegates = [n for n in nodes if n["op_name"] == "DELEGATE"]
        self.producer, self.consumers = {}, {}
        for node in self.nodes:
            for t in node["outputs"]:
                self.producer[int(t)] = node["index"]
            for t in node["inputs"]:
                self.consumers.setdefault(int(t), []).append(node["index"])
        self.by_index = {n["index"]: n for n in self.nodes}
        self.tensors = {d["index"]: d for d in interpreter.get_tensor_details()}
        self.known_layers = known_layers

    def tensor(self, index):
        """The interpreter's details of tensor `index` (name, shape, dtype, quantisation)."""
        return self.tensors[int(index)]

    def _own_layer(self, index):
        node = self.by_index[index]
        if not len(node["outputs"]):
            return None
        return attribute_layer(self.tensor(node["outputs"][0])["name"], self.known_layers)

    def layer_of(self, node):
        """The Keras layer of a node; for nodes whose tensor names carry none (the converter's
        QUANTIZE / DEQUANTIZE), the layer of a neighbouring node."""
        layer = self._own_layer(node["index"])
        if layer is not None:
            return layer
        neighbours = [self.producer.get(int(t)) for t in node["inputs"] if t >= 0]
        neighbours += [c for t in node["outputs"] for c in self.consumers.get(int(t), [])]
        for index in neighbours:
            if index is not None and (layer := self._own_layer(index)) is not None:
                return layer
        return None

    def describe(self, node):
        layer = self.layer_of(node)
        return f"{node['op_name']} ({layer})" if layer else node["op_name"]

    def scale_problems(self, node):
        """The XNNPACK scale limits an int8 ADD/SUB/MUL node breaks, as text (`[]`: none)."""
        if node["op_name"] not in ("ADD", "SUB", "MUL") or len(node["inputs"]) != 2:
            return []
        details = [self.tensor(t) for t in [*node["inputs"], *node["outputs"][:1]]]
        scales = [d["quantization_parameters"]["scales"] for d in details]
        if any(d["dtype"] != np.int8 for d in details) or any(len(s) != 1 for s in scales):
            return []
        return scale_ratio_problems(node["op_name"], [float(s[0]) for s in scales[:2]],
                                    float(scales[2][0]))  # fmt: skip

    def delegated(self):
        """Indices of the nodes inside some XNNPACK partition."""
        inside = set()
        for delegate in self.delegates:
            stop = {int(t) for t in delegate["inputs"]}
            stack = [int(t) for t in delegate["outputs"]]
            while stack:
                node = self.producer.get(stack.pop())
                if node is None or node in inside:
                    continue
                inside.add(node)
                stack.extend(
                    int(t) for t in self.by_index[node]["inputs"] if t >= 0 and int(t) not in stop
                )
        return inside

    def undelegated(self, inside=None):
        """The nodes outside XNNPACK (`inside`: `delegated()`), as `"OP (layer)"` with any
        scale limit they break."""
        inside = self.delegated() if inside is None else inside
        found = []
        for node in self.nodes:
            if node["index"] in inside:
                continue
            problems = self.scale_problems(node)
            suffix = f" [{'; '.join(problems)}]" if problems else ""
            found.append(self.describe(node) + suffix)
        return found

    def _declared(self, allowlist, is_float):
        """Indices of the float nodes the allow-list covers: its ops in its layers, and the
        DEQUANTIZE feeding only them and QUANTIZE fed only by them."""
        core = set()
        for node in self.nodes:
            if is_float[node["index"]]:
                layer = self.layer_of(node)
                if layer in allowlist and node["op_name"] in allowlist[layer]:
                    core.add(node["index"])
        allowed = set(core)
        for node in self.nodes:
            index = node["index"]
            if not is_float[index] or index in core:
                continue
            if node["op_name"] == "DEQUANTIZE":
                users = [c for t in node["outputs"] for c in self.consumers.get(int(t), [])]
                if users and all(u in core for u in users):
                    allowed.add(index)
            elif node["op_name"] == "QUANTIZE":
                makers = [self.producer.get(int(t)) for t in node["inputs"] if t >= 0]
                if makers and all(m in core for m in makers):
                    allowed.add(index)
        return allowed

    def float_ops(self, allowlist):
        """Each node touching a float tensor, as `{"op", "layer", "shape", "declared",
        "per_channel", "allowed"}`: allowed when the allow-list covers it and every float
        tensor it produces is per-channel."""
        is_float = {
            n["index"]: any(
                _is_float(t) for t in list(n["operand_types"]) + list(n["result_types"])
            )
            for n in self.nodes
        }
        allowed = self._declared(allowlist, is_float)
        found = []
        for node in self.nodes:
            index = node["index"]
            if not is_float[index]:
                continue
            outputs = [self.tensor(t) for t in node["outputs"]]
            shapes = [list(map(int, t["shape"])) for t in outputs]
            per_channel = all(
                _per_channel(s)
                for t, s in zip(outputs, shapes, strict=True)
                if _is_float(t["dtype"])
            )
            found.append(
                {
                    "op": node["op_name"],
                    "layer": self.layer_of(node),
                    "shape": shapes[0] if shapes else [],
                    "declared": index in allowed,
                    "per_channel": per_channel,
                    "allowed": index in allowed and per_channel,
                }
            )
        return found
