#!/usr/bin/env python3
"""Check that a real TensorRT / TensorRT-RTX has every Python API name segflow's engine code calls.

segflow's builder (``segflow.runtime.engine``) and plan backend (``segflow.runtime.backends.tensorrt``) are
tested here against a fake ``tensorrt`` module (``tests/runtime/fake_trt.py``). This script closes the gap to
the real library without a GPU: ``API`` lists, per TensorRT class, the names segflow uses (a test keeps it in
step with the code), and the script looks each one up

* in an installed library (default: every one of ``tensorrt`` and ``tensorrt_rtx`` that imports): the class
  must have the attribute — an exact check, and importing needs no GPU;
* or in a bindings wheel (``--wheel tensorrt_cu13_bindings-*.whl``; ``pip download --no-deps
  tensorrt-cu13-bindings==VERSION``): the name must occur in the compiled bindings or the package's Python
  files — a presence check for libraries whose native part cannot be installed here (full TensorRT's
  ``tensorrt-cu13-libs`` is published only on pypi.nvidia.com).

    python scripts/check_trt_api.py                      # installed libraries
    python scripts/check_trt_api.py --wheel W.whl [...]  # downloaded bindings wheels

Prints one table row per name and exits 1 if a required name is missing.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import zipfile
from pathlib import Path

# class (None: the module itself) -> names segflow uses on it. Both libraries unless marked in RTX_ONLY.
API: dict[str | None, tuple[str, ...]] = {
    None: ("__version__", "Logger", "ILogger", "Builder", "OnnxParser", "Runtime", "NetworkDefinitionCreationFlag",
           "MemoryPoolType", "TensorIOMode", "nptype", "ComputeCapability", "CudaGraphStrategy",
           "ExecutionContextAllocationStrategy", "BuilderFlag"),
    "BuilderFlag": ("TF32",),
    "ExecutionContextAllocationStrategy": ("USER_MANAGED",),
    "CudaGraphStrategy": ("WHOLE_GRAPH_CAPTURE",),
    "Logger": ("WARNING", "min_severity"),
    "ILogger": ("Severity", "log"),
    "NetworkDefinitionCreationFlag": ("STRONGLY_TYPED",),
    "MemoryPoolType": ("WORKSPACE",),
    "TensorIOMode": ("INPUT",),
    "Builder": ("create_network", "create_builder_config", "create_optimization_profile",
                "build_serialized_network"),
    "INetworkDefinition": ("num_inputs", "get_input", "num_outputs"),
    "ITensor": ("name", "shape"),
    "OnnxParser": ("parse_from_file", "num_errors", "get_error"),
    "IBuilderConfig": ("set_memory_pool_limit", "add_optimization_profile", "create_timing_cache",
                       "set_timing_cache", "num_compute_capabilities", "set_compute_capability",
                       "get_compute_capability", "clear_flag"),
    "IOptimizationProfile": ("set_shape",),
    "ITimingCache": ("serialize",),
    "Runtime": ("deserialize_cuda_engine", "get_engine_validity"),
    "ICudaEngine": ("num_io_tensors", "get_tensor_name", "get_tensor_dtype", "get_tensor_shape", "get_tensor_mode",
                    "get_tensor_profile_shape", "create_execution_context", "create_runtime_config",
                    "device_memory_size_v2"),
    "IExecutionContext": ("set_input_shape", "set_tensor_address", "get_tensor_shape", "execute_async_v3",
                          "set_device_memory"),
    "IRuntimeConfig": ("create_runtime_cache", "set_runtime_cache", "cuda_graph_strategy"),
    "IRuntimeCache": ("serialize", "deserialize"),
}
# Used only when the library is tensorrt_rtx (segflow checks with hasattr/library_name before using them).
RTX_ONLY = {(None, "ComputeCapability"), ("IBuilderConfig", "num_compute_capabilities"),
            ("IBuilderConfig", "set_compute_capability"), ("IBuilderConfig", "get_compute_capability"),
            ("Runtime", "get_engine_validity"), ("ICudaEngine", "create_runtime_config"),
            ("IRuntimeConfig", "create_runtime_cache"), ("IRuntimeConfig", "set_runtime_cache"),
            ("IRuntimeCache", "serialize"), ("IRuntimeCache", "deserialize"), (None, "CudaGraphStrategy"),
            ("CudaGraphStrategy", "WHOLE_GRAPH_CAPTURE"), ("IRuntimeConfig", "cuda_graph_strategy")}


def _rows():
    for cls, names in API.items():
        for name in names:
            yield cls, name, (cls, name) in RTX_ONLY


def check_module(mod) -> list[tuple[str, bool, bool]]:
    """``(qualified name, required, present)`` for every API name, looked up on an imported library."""
    rtx = mod.__name__.split(".")[0] == "tensorrt_rtx"
    out = []
    for cls, name, rtx_only in _rows():
        owner = mod if cls is None else getattr(mod, cls, None)
        out.append((name if cls is None else f"{cls}.{name}", rtx or not rtx_only,
                    owner is not None and hasattr(owner, name)))
    return out


def check_wheel(path: Path) -> tuple[str, list[tuple[str, bool, bool]]]:
    """``(library, rows)`` for a bindings wheel: each name must occur in its compiled module or Python files."""
    with zipfile.ZipFile(path) as zf:
        blobs = [zf.read(i) for i in zf.namelist() if i.endswith((".so", ".pyd", ".py"))]
    if not blobs:
        raise SystemExit(f"{path} holds no compiled bindings or Python files: pass a tensorrt*-bindings wheel.")
    rtx = "rtx" in path.name.lower()
    out = []
    for cls, name, rtx_only in _rows():
        key = name.encode()
        out.append((name if cls is None else f"{cls}.{name}", rtx or not rtx_only, any(key in b for b in blobs)))
    return ("tensorrt_rtx" if rtx else "tensorrt"), out


def report(label: str, rows: list[tuple[str, bool, bool]]) -> int:
    """Print the table for one library; the number of required names that are missing."""
    print(f"\n{label}")
    print(f"  {'name':45s} {'required':9s} present")
    for qual, required, present in rows:
        state = "yes" if present else ("MISSING" if required else "no (not used by this library)")
        print(f"  {qual:45s} {'yes' if required else 'rtx only':9s} {state}")
    need = [q for q, r, _p in rows if r]
    missing = [q for q, r, p in rows if r and not p]
    print(f"  {len(need) - len(missing)}/{len(need)} required names found"
          + (f"; missing: {', '.join(missing)}" if missing else ""))
    return len(missing)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheel", type=Path, nargs="+", help="TensorRT bindings wheels to check instead of the "
                    "installed libraries (pip download --no-deps tensorrt-cu13-bindings==VERSION)")
    args = ap.parse_args(argv)
    missing, checked = 0, 0
    if args.wheel:
        for w in args.wheel:
            if not w.is_file():
                raise SystemExit(f"--wheel {w} does not exist: download it with pip download --no-deps "
                                 "tensorrt-cu13-bindings==VERSION.")
            lib, rows = check_wheel(w)
            missing += report(f"{w.name} ({lib}; presence in the compiled bindings)", rows)
            checked += 1
    else:
        for lib in ("tensorrt", "tensorrt_rtx"):
            try:
                mod = importlib.import_module(lib)
            except Exception as exc:  # noqa: BLE001 - any import failure means "not usable here"
                print(f"{lib}: not importable ({type(exc).__name__}: {exc})")
                continue
            missing += report(f"{lib} {getattr(mod, '__version__', '?')} (installed; attribute lookup)",
                              check_module(mod))
            checked += 1
        if not checked:
            print("neither tensorrt nor tensorrt_rtx is installed: pip install tensorrt-rtx-cu13, or pass --wheel.",
                  file=sys.stderr)
            return 2
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
