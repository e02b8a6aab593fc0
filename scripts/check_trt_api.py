#!/usr/bin/env python3
"""Check that a real TensorRT / TensorRT-RTX has every Python API name segflow's engine code calls.

segflow's builder (``segflow.runtime.engine``) and plan backend (``segflow.runtime.backends.tensorrt``) are
tested here against a fake ``tensorrt`` module (``tests/runtime/fake_trt.py``). This script closes the gap to
the real library without a GPU: ``API`` lists, per TensorRT class, the names segflow uses (a test keeps it in
step with the code), and the script looks each one up

* in an installed library (default: every one of ``tensorrt``, ``tensorrt_rtx`` and the lean runtime
  ``tensorrt_lean`` / ``tensorrt_lean_bindings`` that imports; the lean one for the run-side names): the class
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
           "ExecutionContextAllocationStrategy", "BuilderFlag", "HardwareCompatibilityLevel"),
    "BuilderFlag": ("TF32", "VERSION_COMPATIBLE"),
    "HardwareCompatibilityLevel": ("AMPERE_PLUS", "SAME_COMPUTE_CAPABILITY"),
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
                       "get_compute_capability", "clear_flag", "set_flag", "hardware_compatibility_level"),
    "IOptimizationProfile": ("set_shape",),
    "ITimingCache": ("serialize",),
    "Runtime": ("deserialize_cuda_engine", "get_engine_validity", "engine_host_code_allowed"),
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


# Used only with full TensorRT: version- and hardware-compatible plans (`runtime build --version-compatible`,
# `--hardware-compatibility`), which TensorRT-RTX does not make.
FULL_ONLY = {(None, "HardwareCompatibilityLevel"), ("BuilderFlag", "VERSION_COMPATIBLE"),
             ("HardwareCompatibilityLevel", "AMPERE_PLUS"), ("HardwareCompatibilityLevel", "SAME_COMPUTE_CAPABILITY"),
             ("IBuilderConfig", "hardware_compatibility_level"), ("Runtime", "engine_host_code_allowed")}
# What building needs; the lean runtime (tensorrt_lean, which runs version-compatible plans) has none of it.
BUILD_CLASSES = {"Builder", "OnnxParser", "NetworkDefinitionCreationFlag", "MemoryPoolType", "INetworkDefinition",
                 "ITensor", "IBuilderConfig", "IOptimizationProfile", "ITimingCache", "BuilderFlag",
                 "HardwareCompatibilityLevel", "ComputeCapability"}
LIBRARY_NAMES = ("tensorrt", "tensorrt_rtx", "tensorrt_lean")


def _rows():
    for cls, names in API.items():
        for name in names:
            yield cls, name


def required(library: str, cls: str | None, name: str) -> bool:
    """Whether segflow uses ``cls.name`` with ``library`` (``tensorrt``, ``tensorrt_rtx`` or ``tensorrt_lean``)."""
    if library == "tensorrt_rtx":
        return (cls, name) not in FULL_ONLY
    if (cls, name) in RTX_ONLY:
        return False
    return library != "tensorrt_lean" or (cls not in BUILD_CLASSES and name not in BUILD_CLASSES)


def _library(name: str) -> str:
    name = name.split(".")[0].lower()
    return "tensorrt_rtx" if "rtx" in name else "tensorrt_lean" if "lean" in name else "tensorrt"


def check_module(mod) -> list[tuple[str, bool, bool]]:
    """``(qualified name, required, present)`` for every API name, looked up on an imported library."""
    lib = _library(mod.__name__)
    out = []
    for cls, name in _rows():
        owner = mod if cls is None else getattr(mod, cls, None)
        out.append((name if cls is None else f"{cls}.{name}", required(lib, cls, name),
                    owner is not None and hasattr(owner, name)))
    return out


def check_wheel(path: Path) -> tuple[str, list[tuple[str, bool, bool]]]:
    """``(library, rows)`` for a bindings wheel: each name must occur in its compiled module or Python files."""
    with zipfile.ZipFile(path) as zf:
        blobs = [zf.read(i) for i in zf.namelist() if i.endswith((".so", ".pyd", ".py"))]
    if not blobs:
        raise SystemExit(f"{path} holds no compiled bindings or Python files: pass a tensorrt*-bindings wheel.")
    lib = _library(path.name)
    out = []
    for cls, name in _rows():
        key = name.encode()
        out.append((name if cls is None else f"{cls}.{name}", required(lib, cls, name), any(key in b for b in blobs)))
    return lib, out


def report(label: str, rows: list[tuple[str, bool, bool]]) -> int:
    """Print the table for one library; the number of required names that are missing."""
    print(f"\n{label}")
    print(f"  {'name':45s} {'required':9s} present")
    for qual, required, present in rows:
        state = "yes" if present else ("MISSING" if required else "no (not used with this library)")
        print(f"  {qual:45s} {'yes' if required else 'no':9s} {state}")
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
    missing, checked, seen = 0, 0, set()
    if args.wheel:
        for w in args.wheel:
            if not w.is_file():
                raise SystemExit(f"--wheel {w} does not exist: download it with pip download --no-deps "
                                 "tensorrt-cu13-bindings==VERSION.")
            lib, rows = check_wheel(w)
            missing += report(f"{w.name} ({lib}; presence in the compiled bindings)", rows)
            checked += 1
    else:
        for lib in (*LIBRARY_NAMES, "tensorrt_lean_bindings"):
            if lib == "tensorrt_lean_bindings" and "tensorrt_lean" in seen:
                continue
            try:
                mod = importlib.import_module(lib)
                seen.add(_library(lib))
            except Exception as exc:  # noqa: BLE001 - any import failure means "not usable here"
                print(f"{lib}: not importable ({type(exc).__name__}: {exc})")
                continue
            missing += report(f"{lib} {getattr(mod, '__version__', '?')} (installed; attribute lookup)",
                              check_module(mod))
            checked += 1
        if not checked:
            print("no TensorRT library is installed: pip install tensorrt-rtx-cu13, or pass --wheel.",
                  file=sys.stderr)
            return 2
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
