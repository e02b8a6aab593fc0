"""The device-resident sampler with its network run by PyTorch, against the CPU Segmenter on the exported graph.

On a GPU this is the whole CuPy-resident sampler (noise, integration, blending, reductions on the device) checked
with nothing but what a bare GPU machine already has (PyTorch, CuPy): the network runs on the GPU through
PyTorch, its inputs and outputs crossing as CuPy arrays through DLPack, so no ONNX Runtime GPU build or TensorRT
has to be carried there first. On the CPU the same test runs with numpy for CuPy and PyTorch on the CPU, which
checks the harness itself. The reference is the ordinary CPU Segmenter on the ONNX export of the same network,
from the same noise (``noise="host"``).

``TorchBackend`` is test scaffolding, not a runtime backend: the runtime never imports torch. Its DLPack
hand-over relies on CuPy and PyTorch both working on the legacy default stream, as the device sampler does
(it sets no CuPy stream of its own).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from segflow.runtime.backends.base import Backend
from segflow.runtime.backends.onnxrt import OrtBackend
from segflow.runtime.gpu import DeviceSegmenter
from segflow.runtime.session import Segmenter

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")  # the export (torchscript exporter: no onnxscript needed)

KW = {"samples": 2, "steps": 2, "method": "heun", "stride": 24, "batch_size": 4, "seed": 11, "threads": 1}


class TorchBackend(Backend):
    """A PyTorch module behind the backend protocol; the I/O metadata is the exported graph's."""

    name = "torch"
    thread_safe = False

    def __init__(self, module: Any, onnx_path, xp: Any, device: str) -> None:
        super().__init__(source=str(onnx_path))
        self.module, self.onnx_path, self.xp, self.device = module, onnx_path, xp, device
        self._inputs: dict = {}
        self._outputs: dict = {}

    def _activate(self) -> None:
        with OrtBackend(self.onnx_path, device="cpu", threads=1) as graph:
            self._inputs, self._outputs = graph.input_metadata(), graph.output_metadata()

    def _tensor(self, a: Any) -> Any:
        if self.xp is np or isinstance(a, np.ndarray):
            return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)
        return torch.from_dlpack(self.xp.ascontiguousarray(a))  # CuPy -> PyTorch, same GPU memory

    def _infer(self, feed: dict[str, Any], to_host: bool) -> dict[str, Any]:
        args = [self._tensor(feed[name]) for name in self._inputs]
        with torch.inference_mode():
            out = self.module(*args).contiguous()
        name = next(iter(self._outputs))
        if self.xp is np or to_host:
            return {name: out.cpu().numpy()}
        return {name: self.xp.from_dlpack(out)}  # PyTorch -> CuPy, same GPU memory

    def _deactivate(self) -> None:
        pass

    def input_metadata(self) -> dict:
        return dict(self._inputs)

    def output_metadata(self) -> dict:
        return dict(self._outputs)


class TorchDeviceSegmenter(DeviceSegmenter):
    """DeviceSegmenter whose field and encoder are the PyTorch modules the ONNX pair was exported from."""

    def __init__(self, engine, *, model: Any, device: str, **kwargs: Any) -> None:
        self._model, self._device = model, device
        super().__init__(engine, **kwargs)

    def _open_backends(self, backend: str, threads: int | None) -> tuple[Any, Any]:
        model = self._model.to(self._device)
        field = TorchBackend(model.field, self.paths.field, self.xp, self._device).activate()
        encoder = TorchBackend(model.encoder, self.paths.encoder, self.xp, self._device).activate()
        return field, encoder


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small random FlowSDF network (every weight non-zero) and its ONNX export."""
    from segflow.export.onnx import export_model
    from segflow.trainer.nets import NetConfig, SegModel

    from segflow.card import ModelCard

    torch.manual_seed(0)
    model = SegModel(NetConfig.from_name("lite", base=8, in_channels=3)).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    out = tmp_path_factory.mktemp("torchfield") / "net.onnx"
    export_model(model, ModelCard(preset="lite", tile=32, in_channels=3, feature_channels=8, threshold=0.0), out,
                 check=False, exporter="torchscript")  # the faster exporter: this graph is only the reference
    return model, out


def _image():
    return (np.random.default_rng(3).random((50, 41, 3)) * 255).astype(np.uint8)  # 2 x 2 tiles of 32


@pytest.mark.torch
@pytest.mark.parametrize("where", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_device_sampler_with_a_torch_field_matches_the_cpu_segmenter(exported, where, monkeypatch):
    model, onnx_path = exported
    if where == "cuda":
        import cupy as xp

        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # float32 maths on both sides
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    else:
        xp = np
    with Segmenter(onnx_path, backend="cpu", **KW) as seg:
        want = seg(_image())
    with TorchDeviceSegmenter(onnx_path, model=model, device=where, xp=xp, **KW) as seg:
        assert seg.device_resident and seg.backend_info["array_module"] == xp.__name__
        got = seg(_image())
    assert np.abs(want.mean_sdf).max() > 0.05  # a field that moves the samples, not a zero network
    np.testing.assert_allclose(got.mean_sdf, want.mean_sdf, atol=2e-4)
    np.testing.assert_allclose(got.std, want.std, atol=2e-4)
    assert np.mean(got.mask != want.mask) < 1e-3
