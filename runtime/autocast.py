"""Convert an fp32 ONNX graph to fp16 or bf16 for a strongly typed TensorRT build.

TensorRT 11 removed the FP16/BF16 builder flags: a network's precision is the precision of its ONNX graph.
:func:`convert_precision` therefore rewrites the graph before the build:

* ``method="modelopt"`` — NVIDIA ModelOpt AutoCast (``modelopt.onnx.autocast.convert_to_mixed_precision``),
  with our numerically sensitive op types excluded and the graph's input/output types kept fp32.
* ``method="segflow"`` — our own cast pass (:func:`cast_model`), the default:

  - compute-heavy ops (Conv, ConvTranspose, MatMul, Gemm, Einsum) always run in low precision;
  - normalisation, reductions, softmax and transcendental ops (:data:`KEEP_FP32`: GroupNormalization,
    InstanceNormalization, LayerNormalization, ReduceMean, Softmax, Exp, Sin, Cos, ...) always run in fp32 —
    GroupNorm-style variance sums overflow fp16, sinusoidal time embeddings lose their phase;
  - every other op runs in fp32 if any of its float inputs comes from an fp32 op (so the affine/SiLU tail of
    a GroupNorm stays fp32 until the next convolution), else in low precision;
  - Cast nodes are inserted where a tensor crosses precisions, float initialisers feeding low-precision ops
    are stored in low precision, and graph inputs/outputs stay float32 (the runtime's contract).

* ``method="auto"`` — ModelOpt when importable, else ``segflow``.

``segflow`` is the default. On the shipped FlowSDF model and an SSB export, its fp16 graphs are closer to fp32
than AutoCast's (field relative error 3.4e-4 against 4.5e-4 for FlowSDF, 3.1e-4 against 5.8e-4 for SSB, ONNX
Runtime CPU, :func:`segflow.runtime.engine.sample_feeds` inputs; nvidia-modelopt 0.47.0), it takes 0.4 s
rather than 5 to 15 s, and it imports no torch: ``import modelopt.onnx.autocast`` imports torch and CuPy, and
``nvidia-modelopt[onnx]`` installs CUDA 12 builds (``cupy-cuda12x``, ``onnxruntime-gpu`` 1.24) beside segflow's
CUDA 13 stack.

bf16 needs ONNX opset 22 (where Conv and friends accept bfloat16); older graphs are version-converted first.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from segflow.errors import ModelCardError, require

#: ONNX metadata key naming the precision a converted graph computes in (absent: fp32, as exported)
PRECISION_KEY = "segflow_precision"

__all__ = ["PRECISION_KEY", "PRECISIONS", "METHODS", "KEEP_FP32", "LOW_PRECISION_OPS", "convert_precision",
           "conversion_method", "cast_model", "node_precisions", "load_graph"]

PRECISIONS = ("fp32", "fp16", "bf16")
METHODS = ("auto", "modelopt", "segflow")
KEEP_FP32 = frozenset({
    "GroupNormalization", "InstanceNormalization", "LayerNormalization", "BatchNormalization",
    "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp", "ReduceProd",
    "Softmax", "LogSoftmax", "Exp", "Log", "Pow", "Sqrt", "Reciprocal", "Sin", "Cos", "Erf",
    "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Range",
})
# Ops whose elementwise producers also run in fp32 (t * 1000 * freq before a Sin must not round in fp16).
BACKWARD_FP32 = frozenset({"Sin", "Cos", "Exp", "Log", "Pow", "Sqrt", "Reciprocal"})
LOW_PRECISION_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "Einsum"})
# (op, input index) that must stay float32 whatever the node's precision (ONNX type constraints).
FIXED_FP32_INPUTS = {"Resize": {1, 2}, "Upsample": {1}}
# Ops whose outputs have a type fixed by an attribute or by non-float semantics: left untouched.
PASSTHROUGH = frozenset({"Cast", "Shape", "Size", "Constant", "ConstantOfShape", "NonZero"})


def _lowp(precision: str) -> tuple[int, Any]:
    from onnx import TensorProto

    if precision == "fp16":
        return TensorProto.FLOAT16, np.float16
    if precision == "bf16":
        import ml_dtypes

        return TensorProto.BFLOAT16, ml_dtypes.bfloat16
    raise ValueError(f"precision must be 'fp16' or 'bf16' for a conversion, got {precision!r}")


def _float_tensors(model: Any) -> set[str]:
    """Names of every float32 tensor in the graph (shape inference + inputs + initialisers)."""
    import onnx
    from onnx import TensorProto

    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    names = {v.name for v in (*g.value_info, *g.input, *g.output)
             if v.type.tensor_type.elem_type == TensorProto.FLOAT}
    names |= {t.name for t in g.initializer if t.data_type == TensorProto.FLOAT}
    for node in g.node:  # Constant nodes are not always in value_info
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.t.data_type == TensorProto.FLOAT:
                    names.add(node.output[0])
    return names


def _backward_fp32(model: Any, floats: set[str]) -> set[int]:
    """Nodes feeding a phase/magnitude-sensitive op (:data:`BACKWARD_FP32`) through elementwise ops."""
    nodes = list(model.graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    forced: set[int] = set()
    todo = [i for i, n in enumerate(nodes) if n.op_type in BACKWARD_FP32]
    while todo:
        for name in nodes[todo.pop()].input:
            j = producer.get(name)
            if name in floats and j is not None and j not in forced and \
                    nodes[j].op_type not in LOW_PRECISION_OPS | PASSTHROUGH:
                forced.add(j)
                todo.append(j)
    return forced


def node_precisions(model: Any) -> dict[int, str]:
    """Decide ``"low"`` or ``"fp32"`` for every node (by index) with the rules of the module docstring."""
    floats = _float_tensors(model)
    forced = _backward_fp32(model, floats)
    from_fp32_op: set[str] = set()  # float tensors computed by fp32 ops (graph inputs and constants excluded)
    decision: dict[int, str] = {}
    for i, node in enumerate(model.graph.node):
        has_subgraph = any(a.g.node or a.graphs for a in node.attribute)
        if node.op_type in LOW_PRECISION_OPS:
            decision[i] = "low"
        elif node.op_type in PASSTHROUGH:
            decision[i] = "fp32"  # inputs and outputs keep the types the graph gives them
            continue
        elif node.op_type in KEEP_FP32 or has_subgraph or i in forced:
            decision[i] = "fp32"
        else:
            decision[i] = "fp32" if any(n in from_fp32_op for n in node.input) else "low"
        if decision[i] == "fp32":
            from_fp32_op.update(o for o in node.output if o in floats)
    return decision


def cast_model(model: Any, precision: str) -> Any:
    """Return a copy of ``model`` converted to ``precision`` (see the module docstring); I/O stays float32."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    low_type, low_np = _lowp(precision)
    if precision == "bf16":
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        if opset < 22:
            model = onnx.version_converter.convert_version(model, 22)
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    floats = _float_tensors(model)
    decision = node_precisions(model)
    inits = {t.name: t for t in g.initializer if t.data_type == TensorProto.FLOAT}
    dtype_of: dict[str, int] = {v.name: TensorProto.FLOAT for v in g.input}
    dtype_of.update({n: TensorProto.FLOAT for n in inits})
    casts: dict[tuple[str, int], str] = {}
    low_inits: dict[str, str] = {}
    new_nodes, new_inits = [], []

    def as_type(name: str, want: int) -> str:
        if name in inits and want == low_type:
            if name not in low_inits:
                arr = numpy_helper.to_array(inits[name]).astype(low_np)
                low_inits[name] = f"{name}__{precision}"
                t = helper.make_tensor(low_inits[name], low_type, arr.shape, arr.tobytes(), raw=True)
                new_inits.append(t)
            return low_inits[name]
        if dtype_of.get(name, want) == want:
            return name
        key = (name, want)
        if key not in casts:
            casts[key] = f"{name}__to_{'fp32' if want == TensorProto.FLOAT else precision}"
            new_nodes.append(helper.make_node("Cast", [name], [casts[key]], to=want, name=f"cast_{casts[key]}"))
        return casts[key]

    for i, node in enumerate(g.node):
        want = low_type if decision[i] == "low" else TensorProto.FLOAT
        fixed = FIXED_FP32_INPUTS.get(node.op_type, set())
        if node.op_type not in PASSTHROUGH:
            for j, name in enumerate(node.input):
                if name and name in floats:
                    node.input[j] = as_type(name, TensorProto.FLOAT if j in fixed else want)
        new_nodes.append(node)
        for o in node.output:
            if o in floats:
                dtype_of[o] = TensorProto.FLOAT if node.op_type in PASSTHROUGH else want
    for out in g.output:  # graph outputs stay float32
        if out.type.tensor_type.elem_type == TensorProto.FLOAT and dtype_of.get(out.name) == low_type:
            inner = f"{out.name}__{precision}"
            for node in new_nodes:
                node.output[:] = [inner if o == out.name else o for o in node.output]
                node.input[:] = [inner if n == out.name else n for n in node.input]
            new_nodes.append(helper.make_node("Cast", [inner], [out.name], to=TensorProto.FLOAT,
                                              name=f"cast_out_{out.name}"))
    del g.node[:]
    g.node.extend(new_nodes)
    g.initializer.extend(new_inits)
    used = {n for node in g.node for n in node.input}
    keep = [t for t in g.initializer if t.name in used or t.name in {v.name for v in g.input}]
    del g.initializer[:]
    g.initializer.extend(keep)
    del g.value_info[:]
    onnx.checker.check_model(model)
    return model


def _modelopt_available() -> bool:
    try:
        return importlib.util.find_spec("modelopt.onnx.autocast") is not None
    except ModuleNotFoundError:
        return False


def conversion_method(method: str) -> str:
    """The conversion ``method`` resolves to here: ``"modelopt"`` or ``"segflow"`` (``auto``: ModelOpt if installed)."""
    if method not in METHODS:
        raise ValueError(f"conversion method must be one of {METHODS}, got {method!r}")
    return "modelopt" if method == "modelopt" or (method == "auto" and _modelopt_available()) else "segflow"


@contextlib.contextmanager
def _quiet_modelopt() -> Iterator[None]:
    """ModelOpt's loggers at WARNING for the duration: at INFO it prints a line per node it classifies."""
    names = ["modelopt", *(n for n in logging.root.manager.loggerDict if n.startswith("modelopt"))]
    saved = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)


def _modelopt_convert(src: str | Path, precision: str, calibration: Mapping[str, np.ndarray] | None) -> Any:
    autocast = require("modelopt.onnx.autocast", '"nvidia-modelopt[onnx]"', "ModelOpt AutoCast")
    with tempfile.TemporaryDirectory(prefix="segflow-calib-") as folder, _quiet_modelopt():
        if calibration is not None:  # a folder of .npz files is taken as they are (one file: one batch)
            np.savez(Path(folder) / "batch0.npz", **calibration)
        return autocast.convert_to_mixed_precision(
            onnx_path=str(src), low_precision_type=precision, op_types_to_exclude=sorted(KEEP_FP32),
            keep_io_types=True, calibration_data=folder if calibration is not None else None)


def load_graph(onnx: Any, src: str | Path, **kw: Any) -> Any:
    """``onnx.load`` with one sentence naming the file when it holds no model (an empty file parses as one)."""
    try:
        model = onnx.load(str(src), **kw)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError, OSError, onnx's own errors
        raise ModelCardError(f"{src} is not a readable ONNX model ({type(exc).__name__}): export it again with "
                             "`trainer export`.") from exc
    if not model.graph.node or not model.graph.output:
        raise ModelCardError(f"{src} holds no ONNX graph (no nodes or outputs): export it again with `trainer export`.")
    return model


def convert_precision(src: str | Path, dst: str | Path, precision: str, *, method: str = "segflow",
                      calibration: Mapping[str, np.ndarray] | None = None) -> str:
    """Write ``src`` converted to ``precision`` at ``dst``; return the method used (``"none"`` for fp32).

    ``calibration`` (one batch of graph inputs by name) is ModelOpt's reference data: AutoCast runs the graph
    on it and keeps the nodes whose values exceed fp16's safe range in fp32. Without it ModelOpt makes random
    inputs with every dynamic dimension 1, which graphs with dynamic height and width (a U-Net's skip
    connections) cannot run: :func:`segflow.runtime.engine.sample_feeds` makes it for exported models. The
    segflow pass ignores it. Metadata (the model card) is carried over. Large models are saved with external
    data beside ``dst``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    onnx = require("onnx", "onnx", "converting an ONNX graph to fp16/bf16")
    method = conversion_method(method)
    if precision != "fp32" and method == "modelopt":  # ModelOpt reads the file itself: only the card from here
        meta = {p.key: p.value for p in load_graph(onnx, src, load_external_data=False).metadata_props}
        model, used = _modelopt_convert(src, precision, calibration), "modelopt"
    else:  # one read of the graph, checked
        model = load_graph(onnx, src)
        meta = {p.key: p.value for p in model.metadata_props}
        model, used = (model, "none") if precision == "fp32" else (cast_model(model, precision), "segflow")
    if used != "none":
        meta[PRECISION_KEY] = precision  # read back by the runtime (an fp16 graph on a CPU gets a warning)
    del model.metadata_props[:]
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    large = model.ByteSize() > 1_900_000_000
    onnx.save(model, str(dst), save_as_external_data=large, location=Path(dst).name + ".data" if large else None)
    return used
