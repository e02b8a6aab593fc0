"""fp16/bf16 ONNX conversion for strongly typed TensorRT builds, checked with ONNX Runtime / the ONNX reference."""

from __future__ import annotations

import sys
import types

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper
from segflow.runtime import autocast

from segflow.card import METADATA_KEY

C = 8


def unet_block(seed: int = 0, size: int = 16) -> onnx.ModelProto:
    """A U-Net-like block as the dynamo exporter writes it: time embedding (Sin/Cos), conv, GroupNorm
    (Reshape + InstanceNormalization + Reshape + affine), SiLU, single-head attention, residual, output conv."""
    rng = np.random.default_rng(seed)

    def init(name, *shape, scale=0.3):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [init("w1", C, 1, 3, 3), init("b1", C), init("wt", 8, C), init("gamma", C, 1, 1, scale=1.0),
             init("beta", C, 1, 1), init("wq", C, C, 1, 1), init("wk", C, C, 1, 1), init("wv", C, C, 1, 1),
             init("w2", 1, C, 3, 3), numpy_helper.from_array(np.array([1000.0], np.float32), "k1000"),
             numpy_helper.from_array(np.exp(-np.arange(4, dtype=np.float32)), "freqs"),
             numpy_helper.from_array(np.array([1], np.int64), "ax1"),
             numpy_helper.from_array(np.array([0, 2, -1], np.int64), "gshape"),
             numpy_helper.from_array(np.array([0, C, -1], np.int64), "flat"),
             numpy_helper.from_array(np.ones(2, np.float32), "ones2"),
             numpy_helper.from_array(np.zeros(2, np.float32), "zeros2"),
             numpy_helper.from_array(np.array([C ** -0.5], np.float32), "scale")]
    n = helper.make_node
    nodes = [
        n("Unsqueeze", ["t", "ax1"], ["t1"]), n("Mul", ["t1", "k1000"], ["tk"]), n("Mul", ["tk", "freqs"], ["ang"]),
        n("Sin", ["ang"], ["s"]), n("Cos", ["ang"], ["c"]), n("Concat", ["s", "c"], ["emb"], axis=1),
        n("MatMul", ["emb", "wt"], ["te"]), n("Unsqueeze", ["te", "ax23"], ["te4"]),
        n("Conv", ["x", "w1", "b1"], ["h0"], pads=[1, 1, 1, 1]), n("Add", ["h0", "te4"], ["h1"]),
        n("Shape", ["h1"], ["hs"]), n("Reshape", ["h1", "gshape"], ["g"]),
        n("InstanceNormalization", ["g", "ones2", "zeros2"], ["gn"], epsilon=1e-5),
        n("Reshape", ["gn", "hs"], ["gn4"]), n("Mul", ["gn4", "gamma"], ["ga"]), n("Add", ["ga", "beta"], ["gb"]),
        n("Sigmoid", ["gb"], ["sg"]), n("Mul", ["gb", "sg"], ["h2"]),
        n("Conv", ["h2", "wq"], ["q"]), n("Conv", ["h2", "wk"], ["k"]), n("Conv", ["h2", "wv"], ["v"]),
        n("Reshape", ["q", "flat"], ["qf"]), n("Reshape", ["k", "flat"], ["kf"]), n("Reshape", ["v", "flat"], ["vf"]),
        n("Transpose", ["qf"], ["qt"], perm=[0, 2, 1]), n("MatMul", ["qt", "kf"], ["att"]),
        n("Mul", ["att", "scale"], ["atts"]), n("Softmax", ["atts"], ["p"], axis=-1),
        n("Transpose", ["p"], ["pt"], perm=[0, 2, 1]), n("MatMul", ["vf", "pt"], ["o"]),
        n("Reshape", ["o", "hs"], ["o4"]), n("Add", ["h2", "o4"], ["h3"]),
        n("Conv", ["h3", "w2"], ["out"], pads=[1, 1, 1, 1]),
    ]
    inits.append(numpy_helper.from_array(np.array([2, 3], np.int64), "ax23"))
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TP.FLOAT, ["B", 1, size, size]),
                                               helper.make_tensor_value_info("t", TP.FLOAT, ["B"])],
                              [helper.make_tensor_value_info("out", TP.FLOAT, ["B", 1, size, size])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.metadata_props.add(key=METADATA_KEY, value='{"kind": "flowsdf"}')
    onnx.checker.check_model(model, full_check=True)
    return model


def _feed(batch=3, seed=1, size=16):
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((batch, 1, size, size)).astype(np.float32),
            "t": rng.random(batch).astype(np.float32)}


def _run(model, feed):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feed)[0]


def _input_types(model) -> dict[str, list[int]]:
    """op_type -> elem types of its first float input, per node, after shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    types_ = {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.value_info, *inferred.graph.input)}
    types_.update({t.name: t.data_type for t in inferred.graph.initializer})
    out: dict[str, list[int]] = {}
    for node in inferred.graph.node:
        out.setdefault(node.op_type, []).append(types_.get(node.input[0]))
    return out


def test_fp16_agrees_with_fp32_within_fp16_tolerance():
    model = unet_block()
    conv = autocast.cast_model(model, "fp16")
    feed = _feed()
    ref, got = _run(model, feed), _run(conv, feed)
    assert got.dtype == np.float32 and got.shape == ref.shape
    rel = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    assert 1e-6 < rel < 2e-3  # really converted (not identical), yet within fp16 accuracy


def test_fp16_keeps_norms_softmax_and_time_embedding_fp32():
    conv = autocast.cast_model(unet_block(), "fp16")
    kinds = _input_types(conv)
    for op in ("InstanceNormalization", "Softmax", "Sin", "Cos", "Sigmoid"):
        assert set(kinds[op]) == {TP.FLOAT}, op
    assert set(kinds["Conv"]) == {TP.FLOAT16} and set(kinds["MatMul"]) == {TP.FLOAT16}
    by_name = {n.output[0]: n for n in conv.graph.node}
    assert by_name["tk"].op_type == "Mul" and _input_types(conv)["Unsqueeze"][0] == TP.FLOAT  # t*1000 in fp32
    assert [i.type.tensor_type.elem_type for i in conv.graph.input] == [TP.FLOAT, TP.FLOAT]
    assert conv.graph.output[0].type.tensor_type.elem_type == TP.FLOAT
    w16 = {t.name: t.data_type for t in conv.graph.initializer}
    assert w16["w1__fp16"] == TP.FLOAT16 and "w1" not in w16  # unused fp32 copies are dropped


def test_all_fp16_time_embedding_would_be_worse():
    """The rule that keeps t*1000*freq in fp32 matters: forcing it to fp16 costs accuracy."""
    model, feed = unet_block(), _feed()
    ref = _run(model, feed)
    good = np.linalg.norm(_run(autocast.cast_model(model, "fp16"), feed) - ref)
    saved = autocast.BACKWARD_FP32
    try:
        autocast.BACKWARD_FP32 = frozenset()
        bad = np.linalg.norm(_run(autocast.cast_model(model, "fp16"), feed) - ref)
    finally:
        autocast.BACKWARD_FP32 = saved
    assert bad > 3 * good


def test_node_precisions_rules():
    model = unet_block()
    dec = autocast.node_precisions(model)
    by_out = {n.output[0]: dec[i] for i, n in enumerate(model.graph.node)}
    assert by_out["h0"] == "low" and by_out["att"] == "low"  # Conv, MatMul
    assert by_out["gn"] == "fp32" and by_out["gb"] == "fp32" and by_out["h2"] == "fp32"  # norm and its tail
    assert by_out["ang"] == "fp32" and by_out["tk"] == "fp32"  # feeds Sin/Cos
    assert by_out["o4"] == "low" and by_out["atts"] == "low"  # after the MatMul, before Softmax


def test_bf16_structure_and_reference_numerics():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    from onnx.reference import ReferenceEvaluator

    model = unet_block(size=4)  # the ONNX reference evaluator is slow in bf16: keep it tiny
    conv = autocast.cast_model(model, "bf16")
    assert next(o.version for o in conv.opset_import if o.domain in ("", "ai.onnx")) >= 22
    kinds = _input_types(conv)
    assert set(kinds["Conv"]) == {TP.BFLOAT16} and set(kinds["InstanceNormalization"]) == {TP.FLOAT}
    feed = _feed(batch=1, size=4)
    ref = _run(model, feed)
    with np.errstate(over="ignore"):
        got = ReferenceEvaluator(conv).run(None, feed)[0]
    assert got.dtype == np.float32 and ml_dtypes is not None
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 2e-2


def test_convert_precision_files_keep_the_card(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(unet_block(), src)
    assert autocast.convert_precision(src, tmp_path / "h.onnx", "fp16", method="segflow") == "segflow"
    assert autocast.convert_precision(src, tmp_path / "f.onnx", "fp32") == "none"
    meta = {p.key: p.value for p in onnx.load(tmp_path / "h.onnx").metadata_props}
    assert meta[METADATA_KEY] == '{"kind": "flowsdf"}'
    with pytest.raises(ValueError, match="precision"):
        autocast.convert_precision(src, tmp_path / "x.onnx", "int8")
    with pytest.raises(ValueError, match="method"):
        autocast.convert_precision(src, tmp_path / "x.onnx", "fp16", method="magic")


def test_modelopt_autocast_is_called_when_installed(tmp_path, monkeypatch):
    calls = {}
    fake = types.ModuleType("modelopt.onnx.autocast")

    def convert_to_mixed_precision(**kw):
        calls.update(kw)
        return autocast.cast_model(onnx.load(kw["onnx_path"]), kw["low_precision_type"])

    fake.convert_to_mixed_precision = convert_to_mixed_precision
    for name in ("modelopt", "modelopt.onnx"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "modelopt.onnx.autocast", fake)
    src = tmp_path / "m.onnx"
    onnx.save(unet_block(), src)
    assert autocast.convert_precision(src, tmp_path / "h.onnx", "bf16", method="modelopt") == "modelopt"
    assert calls["low_precision_type"] == "bf16" and calls["keep_io_types"] is True
    assert {"InstanceNormalization", "GroupNormalization", "Softmax", "ReduceMean"} <= set(
        calls["op_types_to_exclude"])


def test_modelopt_missing_is_one_sentence(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "modelopt", None)
    src = tmp_path / "m.onnx"
    onnx.save(unet_block(), src)
    from segflow.errors import MissingDependency

    with pytest.raises(MissingDependency, match=r"pip install \"nvidia-modelopt\[onnx\]\""):
        autocast.convert_precision(src, tmp_path / "h.onnx", "fp16", method="modelopt")
    assert autocast.convert_precision(src, tmp_path / "h.onnx", "fp16", method="auto") == "segflow"
