"""Ask TensorRT-RTX itself whether it runs on this GPU, and print what it says (its own log and return values).

segflow's runtime refuses an RTX plan on a GPU that TensorRT-RTX does not list (Hopper, compute capability 9.0)
before the library is asked (runtime/trtlib.py ``check_plan``), so its messages never reach the user there.
This probe goes around that gate, step by step, and records the library's own answer:

1. build a small plan from ``models/demo-intensity.onnx`` with segflow's own builder and the library's default
   targets (no GPU needed);
2. ``Runtime.get_engine_validity`` on the plan's header;
3. ``Runtime.deserialize_cuda_engine``;
4. ``ICudaEngine.create_execution_context`` and one ``execute_async_v3`` on zero inputs (CuPy buffers).

Every log line the library emits, and the result of each step, is printed; the probe stops at the first step
that fails and exits 0 either way (it reports, it does not judge). Used by ``scripts/gpu_session.sh test``.

    python scripts/rtx_probe.py [--onnx models/demo-intensity.onnx]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--onnx", type=Path, default=ROOT / "models" / "demo-intensity.onnx")
    args = ap.parse_args(argv)
    try:
        import tensorrt_rtx as trt
    except ImportError as exc:
        print(f"rtx_probe: tensorrt_rtx is not importable ({exc}); nothing to probe")
        return 0

    messages: list[str] = []

    class Recorder(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):
            level = getattr(severity, "name", str(severity))
            if level == "VERBOSE" and "compute capability" not in msg:
                return  # the build's layer-by-layer detail; the capability checks are kept
            messages.append(f"[{level}] {msg}")
            print(f"  tensorrt_rtx log [{level}] {msg}", flush=True)

    logger = Recorder()
    print(f"tensorrt_rtx {trt.__version__}; GPU: {_gpu()}", flush=True)

    def step(name, fn):
        print(f"{name} ...", flush=True)
        try:
            out = fn()
        except Exception as exc:  # noqa: BLE001 - the library's own exception is the finding
            print(f"{name}: raised {type(exc).__name__}: {exc}", flush=True)
            return None, False
        print(f"{name}: returned {out!r}", flush=True)
        return out, True

    from segflow.runtime.engine import build_plan
    from segflow.runtime.trtlib import use_trt_logger

    use_trt_logger(trt, logger)  # segflow's builder below logs through the recorder too
    with tempfile.TemporaryDirectory() as tmp:
        plan_path = Path(tmp) / "probe.plan"
        _info, ok = step("segflow's build_plan (fp32, batch 1, 32x32) -> build_serialized_network (default targets)",
                         lambda: build_plan(args.onnx, plan_path, batch=(1, 1, 1), spatial=32,
                                            builder="tensorrt_rtx", precision="fp32"))
        if not ok:
            return 0
        data = plan_path.read_bytes()
    print(f"plan: {len(data)} bytes", flush=True)
    runtime, ok = step("Runtime", lambda: trt.Runtime(logger))
    if not ok:
        return 0
    if hasattr(runtime, "get_engine_validity"):
        step("get_engine_validity", lambda: runtime.get_engine_validity(
            data[: int(getattr(runtime, "engine_header_size", 64))]))
    engine, ok = step("deserialize_cuda_engine", lambda: runtime.deserialize_cuda_engine(data))
    if not ok or engine is None:
        return 0
    context, ok = step("create_execution_context", engine.create_execution_context)
    if not ok or context is None:
        return 0

    def run():
        import cupy as cp

        keep = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                context.set_input_shape(name, tuple(engine.get_tensor_profile_shape(name, 0)[1]))
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            buf = cp.zeros(tuple(context.get_tensor_shape(name)), dtype=trt.nptype(engine.get_tensor_dtype(name)))
            keep.append(buf)
            context.set_tensor_address(name, int(buf.data.ptr))
        stream = cp.cuda.Stream(non_blocking=True)
        ok = context.execute_async_v3(stream.ptr)
        stream.synchronize()
        return ok

    step("execute_async_v3 on zero inputs", run)
    print(f"rtx_probe: done; {len(messages)} log messages from the library", flush=True)
    return 0


def _gpu() -> str:
    try:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(0)
        return f"{props['name'].decode()} (compute {props['major']}.{props['minor']})"
    except Exception as exc:  # noqa: BLE001
        return f"none visible ({type(exc).__name__})"


if __name__ == "__main__":
    sys.exit(main())
