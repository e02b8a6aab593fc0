"""ONNX Runtime backend: explicit execution providers, throughput-tuned session options.

Device choice (``device``):

* ``"cpu"`` — ``CPUExecutionProvider`` only.
* ``"cuda"`` — ``CUDAExecutionProvider`` (then CPU for unsupported nodes); if the CUDA provider is not
  installed or cannot start (no GPU, missing CUDA libraries) this raises :class:`BackendError` listing the
  available providers — never a silent fall-back to the CPU.
* ``"auto"`` (default) — CUDA when ``onnxruntime-gpu`` is installed and a GPU starts, else the CPU.

Before the first CUDA session, :func:`preload_cuda_libraries` has ONNX Runtime load the CUDA and cuDNN
libraries of NVIDIA's pip packages (``onnxruntime.preload_dlls``): segflow's runtime never imports torch, which
otherwise is what puts them on the loader's path, so without this an ``onnxruntime-gpu`` that relies on those
packages cannot start its CUDA provider. Libraries it could not load are named in the error.

Session options: ``graph_optimization_level = ORT_ENABLE_ALL``, sequential execution, ``intra_op_num_threads``
= the physical cores this process may use (or ``threads``), and ``allow_spinning=False`` to stop idle worker
threads from burning CPU when segflow is embedded in a host application (costs a little latency).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import re
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from segflow.runtime.backends.base import Backend, TensorMeta

from segflow.errors import BackendError, ModelCardError, require_onnxruntime

__all__ = ["OrtBackend", "physical_cores", "available_providers", "session_options", "providers_for",
           "package_clash", "onnxruntime_packages", "cuda_provider_options",
           "preload_cuda_libraries", "CudaProviderError", "cuda_failure", "fall_back_to_cpu"]

_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
    "tensor(uint8)": np.uint8,
}
DEVICES = ("auto", "cpu", "cuda")


def physical_cores() -> int:
    """Physical CPU cores this process may run on (Linux: distinct (package, core) pairs within its affinity)."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:  # pragma: no cover - macOS/Windows
        allowed = set(range(os.cpu_count() or 1))
    cores: set[tuple[str, str]] = set()
    try:
        for block in Path("/proc/cpuinfo").read_text().split("\n\n"):
            fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
            fields = {k.strip(): v.strip() for k, v in fields.items()}
            if "processor" in fields and int(fields["processor"]) in allowed:
                cores.add((fields.get("physical id", "0"), fields.get("core id", fields["processor"])))
    except (OSError, ValueError):
        cores = set()
    return max(1, min(len(cores) or len(allowed), len(allowed)))


def available_providers() -> list[str]:
    """Execution providers this onnxruntime build offers."""
    ort = require_onnxruntime()

    return list(ort.get_available_providers())


def onnxruntime_packages() -> list[str]:
    """The installed distributions whose files make up the imported ``onnxruntime`` folder (``onnxruntime``,
    ``onnxruntime-gpu``, ...). They all install into that one folder, so with two of them there the last one
    installed wins, file by file. (A package in another folder that is only shadowed on the path is not one.)"""
    from importlib.metadata import distributions

    ort = require_onnxruntime()

    here = Path(ort.__file__).resolve()
    names = set()
    for dist in distributions():
        name = (dist.metadata.get("Name") or "").lower().replace("_", "-")  # a broken dist-info may have none
        if name.startswith(("onnxruntime", "ort-")) and any(  # not onnxruntime-extensions, -genai, ...
                f.name == "__init__.py" and f.parent.name == "onnxruntime"
                and Path(dist.locate_file(f)).resolve() == here for f in dist.files or ()):
            names.add(name)
    return sorted(names)


def _cuda_provider_files() -> bool:
    """Whether the ``onnxruntime`` folder holds a CUDA provider library (left there by a GPU build)."""
    ort = require_onnxruntime()

    return any((Path(ort.__file__).parent / "capi").glob("*onnxruntime_providers_cuda*"))


def package_clash(effect: str = "hides the CUDA provider") -> str | None:
    """The fix when ``onnxruntime`` and a GPU build (``onnxruntime-gpu``) are both installed, else None.

    The CPU package installed after the GPU one overwrites its files, and the CUDA provider disappears;
    uninstalling either one afterwards removes files the other needs. The cure is to remove both and reinstall
    the GPU package alone.
    """
    if not _cuda_provider_files():
        return None  # no GPU build's files in the folder: nothing to clash (and no package metadata to read)
    pkgs = onnxruntime_packages()
    gpu = sorted((p for p in pkgs if p != "onnxruntime"), key=lambda p: p != "onnxruntime-gpu")
    if "onnxruntime" not in pkgs or not gpu:
        return None
    reinstall = '"onnxruntime-gpu[cuda,cudnn]"' if gpu[0] == "onnxruntime-gpu" else gpu[0]  # with NVIDIA's libraries
    return (f"onnxruntime and {gpu[0]} are both installed and share one folder, which {effect}: "
            f"run `pip uninstall -y onnxruntime {gpu[0]} && pip install {reinstall}`")


def providers_for(device: str) -> list[str]:
    """Explicit provider list for ``device`` (see the module docstring)."""
    if device not in DEVICES:
        raise BackendError(f"unknown device {device!r}: choose one of {DEVICES}.")
    have = available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in have:
        if device == "auto" and _cuda_failure is not None:
            return ["CPUExecutionProvider"]  # it did not start earlier in this process (said once, then)
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    clash = package_clash()
    if device == "cuda":
        fix = clash if clash else ('install ONNX Runtime\'s GPU build (`pip uninstall -y onnxruntime && pip install '
                                   '"onnxruntime-gpu[cuda,cudnn]"`)')
        raise BackendError(
            f"the CUDA execution provider is not available (this onnxruntime offers {have}): "
            f"{fix} or choose --backend cpu."
        )
    if clash:
        warnings.warn(f"{clash}; until then segflow runs on the CPU.", RuntimeWarning, stacklevel=3)
    return ["CPUExecutionProvider"]


def cuda_provider_options(device_id: int = 0) -> dict[str, str]:
    """Options for ``CUDAExecutionProvider``: the device; the arena grown by what is asked (the sampler's shapes
    repeat, so doubling only wastes memory); TF32 off, so float32 ops compute in float32 (as TensorRT plans)."""
    return {"device_id": str(int(device_id)), "arena_extend_strategy": "kSameAsRequested", "use_tf32": "0"}


_preload_failures: list[str] | None = None
_cuda_failure: str | None = None  # why the CUDA provider did not start in this process (``auto`` then skips it)


_CAPTURE_LOCK = threading.Lock()  # file descriptor 2 is one per process: one capture at a time


@contextlib.contextmanager
def _captured_stderr() -> Iterator[io.StringIO]:
    """Capture what native code writes to file descriptor 2 (ONNX Runtime logs a failed provider there, in
    colour, before segflow can say the same in one sentence); the caller replays it when it is not explained.

    One capture at a time (threads opening CUDA sessions together take turns). Where no capture can be set up
    (no stderr, no writable temporary folder), nothing is captured. If the block raises, what was captured is
    written out before the exception goes on."""
    buf = io.StringIO()
    with _CAPTURE_LOCK:
        try:
            tmp = tempfile.TemporaryFile(mode="w+b")
        except OSError:
            yield buf
            return
        with tmp:
            try:
                if sys.stderr is not None:
                    sys.stderr.flush()
                saved = os.dup(2)
            except (OSError, ValueError):  # no file descriptor 2 to redirect
                yield buf
                return
            try:
                os.dup2(tmp.fileno(), 2)
            except OSError:
                os.close(saved)
                yield buf
                return
            ok = False
            try:
                yield buf
                ok = True
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                tmp.seek(0)
                buf.write(tmp.read().decode(errors="replace"))
                if not ok and buf.getvalue() and sys.stderr is not None:
                    sys.stderr.write(buf.getvalue())


# ONNX Runtime's lines about a provider that did not start (what segflow's sentence replaces)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_PROVIDER_LOG = re.compile(r"\[[EW]:onnxruntime|Failed to (load|create)|ExecutionProvider|cuDNN|CUDA \d")


class CudaProviderError(BackendError):
    """The CUDA execution provider did not start: ``why`` and ``fix`` (the message says both)."""

    def __init__(self, message: str, why: str, fix: str) -> None:
        super().__init__(message)
        self.why, self.fix = why, fix


def fall_back_to_cpu(why: str, fix: str | None = None) -> None:
    """``auto``: remember that CUDA did not start in this process (not tried again) and say so, once."""
    global _cuda_failure
    if _cuda_failure is None:
        advice = f"to use the GPU: {fix}; --backend cpu skips the attempt" if fix else \
            "--backend cpu skips the attempt"
        warnings.warn(f"the CUDA execution provider could not start ({why}), so segflow runs on the CPU "
                      f"({advice}).", RuntimeWarning, stacklevel=4)
    _cuda_failure = why


def cuda_failure() -> str | None:
    """Why the CUDA provider did not start for an ``auto`` session of this process (then not tried again), or
    None."""
    return _cuda_failure


def _no_driver() -> bool:
    """Linux: no NVIDIA driver (``libcuda.so.1``) can be loaded, so no CUDA provider can start."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return True
    return False


def cuda_start_problem(log: str, failures: list[str], cuda: str = "CUDA") -> tuple[str, str]:
    """``(why, fix)`` for a CUDA provider that did not start: no driver, the package clash, the library ONNX
    Runtime could not load (from its ``log``), the pip libraries :func:`preload_cuda_libraries` missed."""
    if _no_driver():
        return ("no NVIDIA driver: libcuda.so.1 cannot be loaded",
                "run it on a machine with an NVIDIA GPU and its driver")
    clash = package_clash("breaks its CUDA provider")
    if clash:
        why, fix = clash.split(": run ", 1)
        return why, "run " + fix
    plain = _ANSI.sub("", log)
    loaded = re.search(r"with error: ([^\n]+)", plain)
    missing = [Path(f.removeprefix("Failed to load ").split(": ")[0]).name for f in failures]
    if loaded or missing:
        why = loaded.group(1).strip() if loaded else f"could not load {', '.join(missing)}"
        return why, f'install the {cuda} / cuDNN 9 libraries (`pip install "onnxruntime-gpu[cuda,cudnn]"`)'
    return "no GPU visible, or a CUDA set-up this ONNX Runtime cannot use", "check `nvidia-smi` and the CUDA set-up"


def preload_cuda_libraries() -> list[str]:
    """Load NVIDIA's CUDA / cuDNN pip libraries for ONNX Runtime, once per process (module docstring).

    Returns ONNX Runtime's "Failed to load ..." lines (empty when everything loaded, and for builds without
    CUDA, where ``preload_dlls`` does nothing). ONNX Runtime prints them; segflow keeps them for its errors.
    """
    global _preload_failures
    if _preload_failures is None:
        ort = require_onnxruntime()

        buf = io.StringIO()
        if hasattr(ort, "preload_dlls"):  # onnxruntime >= 1.21
            try:
                with contextlib.redirect_stdout(buf):
                    ort.preload_dlls()
            except Exception as exc:  # noqa: BLE001 - advisory: the session start below is the real check
                buf.write(f"Failed to load CUDA/cuDNN: {exc}\n")
        _preload_failures = [line.strip() for line in buf.getvalue().splitlines() if line.startswith("Failed")]
    return _preload_failures


def session_options(*, threads: int | None = None, allow_spinning: bool = False) -> Any:
    """ONNX Runtime session options tuned for throughput (see the module docstring)."""
    ort = require_onnxruntime()

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = int(threads) if threads else physical_cores()
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    so.log_severity_level = 3
    return so


def _meta(args: list[Any]) -> dict[str, TensorMeta]:
    out = {}
    for a in args:
        shape = tuple(d if isinstance(d, int) else None for d in a.shape)
        out[a.name] = TensorMeta(a.name, np.dtype(_ORT_DTYPES.get(a.type, np.float32)), shape)
    return out


class OrtBackend(Backend):
    """Run one ONNX graph with ONNX Runtime.

    Parameters
    ----------
    path : str or Path
        The ``.onnx`` file.
    device : {"auto", "cpu", "cuda"}
        Where to run (see the module docstring).
    threads : int, optional
        Intra-op threads (default: physical cores).
    allow_spinning : bool
        Let idle ORT threads spin (slightly lower latency, burns CPU between calls).
    """

    name = "onnxruntime"
    thread_safe = True  # InferenceSession.run is thread-safe

    def __init__(self, path: str | Path, *, device: str = "auto", threads: int | None = None,
                 allow_spinning: bool = False) -> None:
        super().__init__(source=str(path))
        self.path = Path(path)
        self.device = device
        self.threads = threads
        self.allow_spinning = allow_spinning
        self.session: Any = None
        self._inputs: dict[str, TensorMeta] = {}
        self._outputs: dict[str, TensorMeta] = {}

    def _activate(self) -> None:
        ort = require_onnxruntime()

        if not self.path.is_file():
            raise ModelCardError(f"ONNX model {self.path} does not exist: check the --engine path.")
        providers = providers_for(self.device)
        failures = preload_cuda_libraries() if "CUDAExecutionProvider" in providers else []
        opts = session_options(threads=self.threads, allow_spinning=self.allow_spinning)
        chosen = [(p, cuda_provider_options(self._cuda_device())) if p == "CUDAExecutionProvider" else p
                  for p in providers]
        cuda_wanted = "CUDAExecutionProvider" in providers
        with _captured_stderr() if cuda_wanted else contextlib.nullcontext(io.StringIO()) as log:
            try:
                sess = ort.InferenceSession(str(self.path), sess_options=opts, providers=chosen)
            except Exception as exc:  # noqa: BLE001 - ORT raises several types for corrupt files
                sess, error = None, exc
        if sess is None:
            sys.stderr.write(log.getvalue())
            raise ModelCardError(
                f"{self.path} is not a readable ONNX model ({type(error).__name__}): re-export it.") from error
        if cuda_wanted and "CUDAExecutionProvider" not in sess.get_providers():
            major = str(getattr(ort, "cuda_version", "") or "").split(".")[0]  # what this build links against
            why, fix = cuda_start_problem(log.getvalue(), failures, f"CUDA {major}" if major else "CUDA")
            sys.stderr.write("".join(line for line in log.getvalue().splitlines(keepends=True)  # others' output
                                     if not _PROVIDER_LOG.search(line) and _ANSI.sub("", line).strip()))
            if self.device == "cuda":
                raise CudaProviderError(f"the CUDA execution provider could not start for {self.path} ({why}): "
                                        f"{fix} or choose --backend cpu.", why, fix)
            fall_back_to_cpu(why, fix)
        elif log.getvalue():
            sys.stderr.write(log.getvalue())  # not a failure segflow explains: ONNX Runtime's own words
        self.session = sess
        self._inputs = _meta(sess.get_inputs())
        self._outputs = _meta(sess.get_outputs())

    def _cuda_device(self) -> int:
        """The CUDA device the provider runs on (0: the first visible one; ``CUDA_VISIBLE_DEVICES`` picks)."""
        return 0

    def _infer(self, feed: dict[str, Any], to_host: bool) -> dict[str, Any]:
        outs = self.session.run(None, feed)
        return dict(zip(self._outputs, outs, strict=True))

    def _deactivate(self) -> None:
        self.session = None

    def input_metadata(self) -> dict[str, TensorMeta]:
        return dict(self._inputs)

    def output_metadata(self) -> dict[str, TensorMeta]:
        return dict(self._outputs)

    def metadata(self) -> dict[str, str]:
        """The graph's custom metadata (where the model card lives)."""
        return dict(self.session.get_modelmeta().custom_metadata_map) if self.session is not None else {}

    @property
    def providers(self) -> list[str]:
        """Providers the active session really uses."""
        return list(self.session.get_providers()) if self.session is not None else []

    def describe(self) -> dict[str, Any]:
        opts = self.session.get_session_options() if self.session is not None else None
        return {"name": self.name, "device": self.device, "providers": self.providers,
                "threads": opts.intra_op_num_threads if opts is not None else self.threads}
