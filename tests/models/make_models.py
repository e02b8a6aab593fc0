"""Build the tiny ONNX test models in this folder (run: ``python tests/models/make_models.py``).

Every engine is a pair ``NAME.onnx`` (vector field: inputs ``x`` [B,1,H,W], ``t`` [B], ``features`` [B,F,H,W];
output ``out``) + ``NAME.encoder.onnx`` (input ``image`` [B,C,H,W]; output ``features``), both carrying the same
segflow model card (tile 16, F = 2) in their metadata, with dynamic B, H and W. They are hand-written with the
``onnx`` helper API, so the expected outputs are known exactly (see ``meta.py``):

=============  =============================================  ==============================================
engine         encoder                                        field
=============  =============================================  ==============================================
``negx``       channel mean (1×1 conv), grayscale             ``v = -x`` (Euler N steps: x1 = (1-1/N)^N x0)
``const``      channel mean, grayscale                        ``v = 0.5`` (x1 = x0 + 0.5 for every method)
``dirac``      channel mean, grayscale                        OT velocity towards the features:
                                                              ``v = (f0 - (1-s) x) / (1 - (1-s) t)``,
                                                              exact for every method: x1 = f0 + s·x0
``dirac_rgb``  channel mean, RGB                              as ``dirac``
``blur``       5×5 box blur with zero padding (edge effects)  as ``dirac`` (tiles disagree near their edges)
=============  =============================================  ==============================================

``s`` is the card's ``sigma_min`` (1e-4 here), so the identity-like engines return the normalised image up to
``1e-4·|x0|``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
TILE, F, SIGMA = 16, 2, 1e-4
OPSET, IR_VERSION = 17, 8


def card(name: str, in_channels: int, **extra) -> dict:
    """The model card of a test engine (JSON fields of segflow.card.ModelCard)."""
    d = {"kind": "flowsdf", "preset": "custom", "tile": TILE, "in_channels": in_channels, "feature_channels": F,
         "normalisation": {"mode": "dtype"}, "sdf_delta": 8.0, "threshold": 0.0, "target": "sdf",
         "sigma_min": SIGMA, "training_data": f"none (hand-built test graph {name!r})", "licence": "MIT",
         "version": "test", "sampling": {"steps": 4, "method": "euler", "samples": 2}}
    d.update(extra)
    return d


def _vi(name: str, elem: int, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _save(graph: onnx.GraphProto, path: Path, card_json: str) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="segflow-tests")
    model.ir_version = IR_VERSION
    helper.set_model_props(model, {"segflow.card": card_json})
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def encoder_graph(in_channels: int, blur: int = 0) -> onnx.GraphProto:
    """features = channel mean (repeated F times), optionally box-blurred with zero padding."""
    k = max(1, blur)
    w = np.full((F, in_channels, k, k), 1.0 / (in_channels * k * k), np.float32)
    node = helper.make_node("Conv", ["image", "w"], ["features"], pads=[k // 2] * 4, kernel_shape=[k, k])
    return helper.make_graph(
        [node], "encoder",
        [_vi("image", TensorProto.FLOAT, ["B", in_channels, "H", "W"])],
        [_vi("features", TensorProto.FLOAT, ["B", F, "H", "W"])],
        initializer=[numpy_helper.from_array(w, "w")],
    )


def _field_io() -> tuple[list, list]:
    inputs = [_vi("x", TensorProto.FLOAT, ["B", 1, "H", "W"]), _vi("t", TensorProto.FLOAT, ["B"]),
              _vi("features", TensorProto.FLOAT, ["B", F, "H", "W"])]
    return inputs, [_vi("out", TensorProto.FLOAT, ["B", 1, "H", "W"])]


def field_graph(kind: str) -> onnx.GraphProto:
    """The vector-field graph ``kind`` in {"negx", "const", "dirac"} (see the module docstring)."""
    inputs, outputs = _field_io()
    c = numpy_helper.from_array
    if kind == "negx":
        # t and features are read (times zero) so that every input is used, as in a real field
        nodes = [helper.make_node("Neg", ["x"], ["nx"]),
                 helper.make_node("ReduceSum", ["features"], ["fs"], keepdims=1),
                 helper.make_node("Mul", ["fs", "zero"], ["f0"]),
                 helper.make_node("Unsqueeze", ["t", "axes"], ["t4"]),
                 helper.make_node("Mul", ["t4", "zero"], ["t0"]),
                 helper.make_node("Add", ["nx", "f0"], ["a"]),
                 helper.make_node("Add", ["a", "t0"], ["out"])]
        init = [c(np.array(0.0, np.float32), "zero"), c(np.array([1, 2, 3], np.int64), "axes")]
    elif kind == "const":
        nodes = [helper.make_node("Mul", ["x", "zero"], ["z"]),
                 helper.make_node("ReduceSum", ["features"], ["fs"], keepdims=1),
                 helper.make_node("Mul", ["fs", "zero"], ["f0"]),
                 helper.make_node("Unsqueeze", ["t", "axes"], ["t4"]),
                 helper.make_node("Mul", ["t4", "zero"], ["t0"]),
                 helper.make_node("Add", ["z", "f0"], ["a"]),
                 helper.make_node("Add", ["a", "t0"], ["b"]),
                 helper.make_node("Add", ["b", "half"], ["out"])]
        init = [c(np.array(0.0, np.float32), "zero"), c(np.array(0.5, np.float32), "half"),
                c(np.array([1, 2, 3], np.int64), "axes")]
    elif kind == "dirac":
        nodes = [helper.make_node("Slice", ["features", "s0", "s1", "ax1"], ["f0"]),
                 helper.make_node("Mul", ["x", "a"], ["ax"]),
                 helper.make_node("Sub", ["f0", "ax"], ["num"]),
                 helper.make_node("Unsqueeze", ["t", "axes"], ["t4"]),
                 helper.make_node("Mul", ["t4", "a"], ["at"]),
                 helper.make_node("Sub", ["one", "at"], ["den"]),
                 helper.make_node("Div", ["num", "den"], ["out"])]
        init = [c(np.array([0], np.int64), "s0"), c(np.array([1], np.int64), "s1"),
                c(np.array([1], np.int64), "ax1"), c(np.array(1.0 - SIGMA, np.float32), "a"),
                c(np.array(1.0, np.float32), "one"), c(np.array([1, 2, 3], np.int64), "axes")]
    else:
        raise ValueError(kind)
    return helper.make_graph(nodes, f"field_{kind}", inputs, outputs, initializer=init)


ENGINES = {  # name -> (field kind, in_channels, encoder blur)
    "negx": ("negx", 1, 0),
    "const": ("const", 1, 0),
    "dirac": ("dirac", 1, 0),
    "dirac_rgb": ("dirac", 3, 0),
    "blur": ("dirac", 1, 5),
}


def build(out_dir: Path = HERE) -> list[Path]:
    """Write every engine of :data:`ENGINES` into ``out_dir``; return the field graph paths."""
    paths = []
    for name, (field, channels, blur) in ENGINES.items():
        cj = json.dumps(card(name, channels), sort_keys=True)
        _save(field_graph(field), out_dir / f"{name}.onnx", cj)
        _save(encoder_graph(channels, blur), out_dir / f"{name}.encoder.onnx", cj)
        paths.append(out_dir / f"{name}.onnx")
    return paths


if __name__ == "__main__":
    for p in build(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE):
        print(p)
