"""ONNX Runtime on the CUDA provider with I/O binding, so sampling state stays on the device.

:class:`OrtCudaBackend` is :class:`~segflow.runtime.backends.onnxrt.OrtBackend` pinned to the CUDA provider.
``infer(feed, to_host=False)`` binds CuPy inputs by device pointer (numpy inputs are bound as host inputs and
copied once by ONNX Runtime), lets ONNX Runtime allocate the outputs on the GPU and returns them as CuPy arrays
that own a reference to ONNX Runtime's buffers — no host round trip between integration steps. The caller's
current CuPy stream is synchronised before the run, after strided inputs were made contiguous on it (inputs are
complete); ONNX Runtime synchronises its own stream when ``run_with_iobinding`` returns (outputs are
complete).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from segflow.runtime.backends.onnxrt import OrtBackend

from segflow.errors import require_cupy

__all__ = ["OrtCudaBackend", "is_device_array"]


def is_device_array(x: Any) -> bool:
    """True for a CuPy array (checked by type, without importing CuPy)."""
    return type(x).__module__.split(".")[0] == "cupy"


class OrtCudaBackend(OrtBackend):
    """ONNX Runtime CUDA backend with I/O binding (see the module docstring).

    Parameters
    ----------
    path : str or Path
        The ``.onnx`` file.
    device_id : int, optional
        CUDA device of the provider and of the bound buffers; default: CuPy's current device, where the CuPy
        arrays that are bound live.
    """

    name = "onnxruntime-cuda"
    #: ONNX Runtime device of the bound buffers and of the provider; tests set "cpu" to run this class's
    #: binding code on ONNX Runtime's CPU provider with a numpy-backed CuPy stand-in.
    device_type = "cuda"

    def __init__(self, path: str | Path, *, device_id: int | None = None, **options: Any) -> None:
        options.pop("device", None)
        super().__init__(path, device=self.device_type, **options)
        self.device_id = None if device_id is None else int(device_id)
        self.cp: Any = None

    def _activate(self) -> None:
        self.cp = require_cupy("device-resident ONNX Runtime inference")
        if self.device_id is None:
            self.device_id = int(self.cp.cuda.Device().id)
        super()._activate()

    def _cuda_device(self) -> int:
        return int(self.device_id)

    def _infer(self, feed: dict[str, Any], to_host: bool) -> dict[str, Any]:
        if to_host and not any(is_device_array(a) for a in feed.values()):
            return super()._infer(feed, to_host)
        cp = self.cp
        io = self.session.io_binding()
        # strided inputs are copied on the caller's stream, so before the synchronisation below
        feed = {n: cp.ascontiguousarray(a) if is_device_array(a) else a for n, a in feed.items()}
        cp.cuda.get_current_stream().synchronize()
        for name, arr in feed.items():
            if is_device_array(arr):
                io.bind_input(name, self.device_type, self.device_id, arr.dtype.type, tuple(arr.shape),
                              int(arr.data.ptr))
            else:
                io.bind_cpu_input(name, np.ascontiguousarray(arr))
        for name in self._outputs:
            io.bind_output(name, self.device_type, self.device_id)
        self.session.run_with_iobinding(io)
        outs = {}
        for name, value in zip(self._outputs, io.get_outputs(), strict=True):
            dtype, shape = np.dtype(self._outputs[name].dtype), tuple(value.shape())
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            mem = cp.cuda.UnownedMemory(int(value.data_ptr()), nbytes, owner=value)
            outs[name] = cp.ndarray(shape, dtype=dtype, memptr=cp.cuda.MemoryPointer(mem, 0))
        if to_host:
            return {n: cp.asnumpy(a) for n, a in outs.items()}
        return outs

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(name=self.name, io_binding=True, device_id=self.device_id)
        return d
