"""TensorRT / TensorRT-RTX plumbing shared by the engine builder and the TensorRT backend (no torch).

* :func:`import_trt` imports ``tensorrt`` (data-centre GPUs) or ``tensorrt_rtx`` (RTX workstation GPUs)
  lazily; both expose the same Python API shape (Builder, OnnxParser, Runtime, name-based execution).
* :func:`gpu_info` names the current GPU and its compute capability (CuPy, else ``nvidia-smi``).
* :class:`PlanInfo` is the JSON sidecar written beside every plan (``NAME.plan.json``): library, exact
  TensorRT version, GPU, profile ranges, precision. Plans are tied to the TensorRT version and GPU that built
  them, so :func:`check_plan` compares the sidecar with this machine *before* deserialising and refuses with
  one sentence naming the rebuild command.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from segflow.errors import BackendError, MissingDependency, ModelCardError

__all__ = ["LIBRARIES", "import_trt", "library_name", "GpuInfo", "gpu_info", "PlanInfo", "sidecar_path",
           "check_plan", "RTX_DEFAULT_TARGETS", "rebuild_hint", "plan_batch", "deferred_interrupt", "rtx_supports",
           "trt_logger", "use_trt_logger"]

LIBRARIES = ("tensorrt", "tensorrt_rtx")
BUILDERS = ("auto", *LIBRARIES)
# Libraries that run a version-compatible plan of full TensorRT: full TensorRT itself, or its lean runtime
# (pip tensorrt-lean-cu13-bindings + -libs, 44 MB, imported as tensorrt_lean_bindings; it runs no other plans)
VC_RUNNERS = ("tensorrt", "tensorrt_lean", "tensorrt_lean_bindings")
# --hardware-compatibility: TensorRT's HardwareCompatibilityLevel of each choice
HARDWARE_LEVELS = {"none": "NONE", "ampere+": "AMPERE_PLUS", "same-cc": "SAME_COMPUTE_CAPABILITY"}
PLAN_SCHEMA = 1
# Compute capabilities a TensorRT-RTX engine runs on by default (TensorRT-RTX docs, "CPU-only AOT").
RTX_DEFAULT_TARGETS = ("8.0", "8.6", "8.9", "12.0")
# pip packages of each library (TensorRT-RTX for RTX workstation GPUs, full TensorRT for data-centre GPUs)
PACKAGES = {"tensorrt_rtx": "tensorrt-rtx-cu13", "tensorrt": "tensorrt",
            "tensorrt_lean": "tensorrt-lean-cu13-bindings tensorrt-lean-cu13-libs"}


def import_trt(builder: str = "auto") -> ModuleType:
    """Import the TensorRT library for ``builder`` (``"auto"``: ``tensorrt``, else ``tensorrt_rtx``).

    Raises
    ------
    MissingDependency
        When the requested library (or, for ``"auto"``, neither) is installed.
    """
    if builder not in BUILDERS:
        raise ValueError(f"unknown TensorRT builder {builder!r}: choose one of {BUILDERS}")
    names = LIBRARIES if builder == "auto" else (builder,)
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    if builder == "auto":
        raise MissingDependency(
            "TensorRT engines need the `tensorrt` or `tensorrt_rtx` Python module, neither is installed: run "
            f"`pip install {PACKAGES['tensorrt_rtx']}` (RTX workstation GPUs) or `pip install {PACKAGES['tensorrt']}` "
            "(data-centre GPUs).")
    raise MissingDependency(f"TensorRT engines need the `{builder}` Python module, which is not installed: run "
                            f"`pip install {PACKAGES[builder]}`.")


_LOGGERS: dict[Any, Any] = {}  # trt.Logger class -> this process's logger (never dropped: TensorRT keeps it)


def trt_logger(trt: ModuleType, level: str = "WARNING") -> Any:
    """The one logger of this process for library ``trt``, at ``level``: TensorRT's messages on stderr.

    TensorRT registers the first logger it is given process-wide; a Builder or Runtime created with a different
    one logs a warning ("The logger passed into createInferRuntime differs from one already registered ...")
    and uses the first anyway. So every Builder and Runtime here shares one logger, and its level is set per use.
    It writes to stderr, beside segflow's own errors (``trt.Logger`` prints to stdout, so ``runtime build > log``
    would part an error from the library's reason for it).
    """
    logger = _LOGGERS.get(trt.Logger)  # keyed by the library's class: tests swap fake modules in and out
    if logger is None:
        logger = _LOGGERS[trt.Logger] = _stderr_logger(trt, getattr(trt.Logger, level))
    else:
        logger.min_severity = getattr(trt.Logger, level)
    return logger


def _stderr_logger(trt: ModuleType, min_severity: Any) -> Any:
    name = library_name(trt)

    class StderrLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.min_severity = min_severity

        def log(self, severity: Any, msg: str) -> None:
            if int(severity) <= int(self.min_severity):  # INTERNAL_ERROR 0, ERROR 1, WARNING 2, INFO 3, VERBOSE 4
                print(f"[{name}] [{getattr(severity, 'name', severity)}] {msg}", file=sys.stderr, flush=True)

    return StderrLogger()


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT), and a SIGTERM that Python handles, until the block has finished; then hand each to
    the handler that was installed (Python's default raises ``KeyboardInterrupt``; ``runtime``'s SIGTERM handler
    ends the command as an interruption; an application's own handler gets the call).

    Around TensorRT calls that log through a Python logger: TensorRT calls ``log`` for every message (filtered
    ones too), so an exception raised by a signal handler would surface inside ``log``, where the bindings catch
    it, print "Exception caught in log()" and carry on; the build would finish and be published. Also around
    steps that must not stop halfway (moving a build's files into place). Only in the main thread (where Python
    runs signal handlers), and only for signals Python owns: elsewhere, for an ignored SIGINT, a SIGTERM left at
    its default (the process ends at once), or a handler a host application embedding Python installed outside
    Python (``getsignal`` is None), the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: dict[int, Any] = {}  # signal -> the handler it had
    caught: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(sig)
        if callable(previous) or (sig == signal.SIGINT and previous == signal.SIG_DFL):
            held[sig] = previous
            signal.signal(sig, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        for sig, previous in held.items():
            signal.signal(sig, previous)
        for sig in dict.fromkeys(caught):  # what would have happened, now (also when the block raised)
            previous = held[sig]
            if callable(previous):
                previous(sig, sys._getframe())  # Python's default SIGINT handler raises KeyboardInterrupt
            else:
                signal.raise_signal(sig)  # SIG_DFL: the process ends as it would have


def use_trt_logger(trt: ModuleType, logger: Any) -> None:
    """Make ``logger`` (a ``trt.ILogger``) this process's logger for library ``trt``; call it before any Builder or
    Runtime exists (``scripts/rtx_probe.py`` records the library's own messages this way)."""
    _LOGGERS[trt.Logger] = logger


def library_name(trt: ModuleType) -> str:
    """``"tensorrt"``, ``"tensorrt_rtx"`` or ``"tensorrt_lean"`` for an imported library module."""
    name = trt.__name__.split(".")[0]
    return name[: -len("_bindings")] if name.endswith("_bindings") else name


def import_runner(info: PlanInfo) -> ModuleType:
    """The library that runs a plan with build record ``info``: the one that built it, or for a version-compatible
    plan of full TensorRT, full TensorRT or its lean runtime, whichever is installed."""
    if not info.version_compatible:
        try:
            return import_trt(info.library)
        except MissingDependency:
            if info.library != "tensorrt":
                raise
            for name in VC_RUNNERS[1:]:  # only the lean runtime here: check_plan says what to rebuild
                try:
                    return importlib.import_module(name)
                except ImportError:
                    continue
            raise
    found = []
    for name in VC_RUNNERS:
        try:
            found.append(importlib.import_module(name))
        except ImportError:
            continue
    for mod in found:  # the first that can run it (an older full TensorRT may sit beside a matching lean runtime)
        if vc_runs_on(info.trt_version, library_name(mod), str(mod.__version__)):
            return mod
    if found:
        return found[0]  # check_plan says why it cannot
    raise MissingDependency(f"this version-compatible plan needs TensorRT or its lean runtime, neither is "
                            f"installed: run `pip install {PACKAGES['tensorrt_lean']}` (44 MB, runs such plans "
                            f"only) or `pip install {PACKAGES['tensorrt']}`.")


def _major(version: str) -> int:
    return int(version.split(".")[0])


def vc_runs_on(built: str, library: str, running: str) -> bool:
    """Whether a version-compatible plan built by TensorRT ``built`` runs on ``library`` ``running``: full
    TensorRT per :func:`vc_runs`; the lean runtime only for plans of its own version (NVIDIA ships one lean
    runtime per version; running other versions' plans is the dispatch runtime's job)."""
    return running == built if library == "tensorrt_lean" else vc_runs(built, running)


def vc_runs(built: str, running: str) -> bool:
    """Whether a version-compatible plan built by TensorRT ``built`` runs on TensorRT ``running``: a later
    version of the same major, or across the two major steps NVIDIA supports (8 to 10, 10 to 11)."""
    try:
        b, r = tuple(int(v) for v in built.split(".")[:3]), tuple(int(v) for v in running.split(".")[:3])
    except ValueError:
        return built == running
    return r >= b and (r[0] == b[0] or (b[0], r[0]) in ((8, 10), (10, 11)))


@dataclass(frozen=True)
class GpuInfo:
    """A GPU's marketing name and compute capability (``"8.9"``)."""

    name: str
    compute_capability: str


def _gpu_from_cupy() -> GpuInfo | None:
    try:
        import cupy
    except ImportError:
        return None
    try:
        dev = cupy.cuda.Device()
        props = cupy.cuda.runtime.getDeviceProperties(dev.id)
    except Exception:  # noqa: BLE001 - no driver / no device
        return None
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    return GpuInfo(name, f"{props['major']}.{props['minor']}")


def parse_nvidia_smi(text: str) -> GpuInfo | None:
    """Parse the first line of ``nvidia-smi --query-gpu=name,compute_cap --format=csv,noheader``."""
    for line in text.splitlines():
        parts = [p.strip() for p in line.rsplit(",", 1)]
        if len(parts) == 2 and parts[0] and parts[1].replace(".", "", 1).isdigit():
            return GpuInfo(parts[0], parts[1])
    return None


def _gpu_from_smi() -> GpuInfo | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name,compute_cap", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_nvidia_smi(out.stdout) if out.returncode == 0 else None


def gpu_info() -> GpuInfo | None:
    """The current GPU (device 0 / CuPy's current device), or None when no GPU is visible."""
    return _gpu_from_cupy() or _gpu_from_smi()


def sidecar_path(plan: str | Path) -> Path:
    """``NAME.plan`` -> ``NAME.plan.json`` (the build record beside every plan)."""
    p = Path(plan)
    return p.with_name(p.name + ".json")


@dataclass(frozen=True)
class PlanInfo:
    """What built a plan, written as JSON beside it.

    Attributes
    ----------
    library : str
        ``"tensorrt"`` or ``"tensorrt_rtx"``.
    trt_version : str
        Exact library version (plans are only valid for the same version).
    precision : str
        ``"fp32"``, ``"fp16"`` or ``"bf16"`` (carried by the ONNX graph; the network is strongly typed).
    gpu_name, compute_capability : str or None
        The building GPU (None for a CPU-only TensorRT-RTX build).
    target_compute_capabilities : list of str
        TensorRT-RTX only: the GPUs the engine is compiled for; empty for TensorRT (the building GPU only).
    profiles : dict
        ``{input: [min_shape, opt_shape, max_shape]}`` of optimisation profile 0.
    workspace_bytes : int or None
        Workspace memory-pool limit used for the build.
    onnx : str
        Name of the ONNX graph the plan was built from (after precision conversion, its source).
    conversion : str
        How the ONNX was converted (``"none"``, ``"modelopt"`` or ``"segflow"``).
    onnx_path : str
        Absolute path of that source graph at build time (rebuild hints use it while it exists).
    version_compatible : bool
        Full TensorRT only: built with ``VERSION_COMPATIBLE`` (the plan embeds its lean runtime and also runs on
        later TensorRT versions and on the lean runtime ``tensorrt_lean``).
    hardware_compatibility : str
        Full TensorRT only: ``"none"`` (the building GPU's compute capability and model), ``"ampere+"`` (any
        GPU of compute capability 8.0 or later) or ``"same-cc"`` (any GPU of the building one's capability).
    """

    library: str
    trt_version: str
    precision: str
    gpu_name: str | None
    compute_capability: str | None
    target_compute_capabilities: list = field(default_factory=list)
    profiles: dict = field(default_factory=dict)
    workspace_bytes: int | None = None
    onnx: str = ""
    conversion: str = "none"
    onnx_path: str = ""
    version_compatible: bool = False
    hardware_compatibility: str = "none"
    segflow_version: str = ""
    schema: int = PLAN_SCHEMA

    def to_json(self) -> str:
        """Canonical JSON."""
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

    @classmethod
    def read(cls, plan: str | Path) -> PlanInfo:
        """Read the sidecar of ``plan``; one-sentence :class:`ModelCardError` if missing or unreadable."""
        path = sidecar_path(plan)
        if not path.is_file():
            raise ModelCardError(f"plan {plan} has no build record {path.name} beside it: "
                                 f"rebuild it with `runtime build` on this machine.")
        try:
            data = json.loads(path.read_text())
            names = {f.name for f in dataclasses.fields(cls)}
            info = cls(**{k: v for k, v in data.items() if k in names})
            text = (info.library, info.trt_version, info.precision, info.onnx, info.conversion, info.onnx_path)
            if not (all(isinstance(v, str) for v in text) and isinstance(info.profiles, dict)
                    and isinstance(info.target_compute_capabilities, list)
                    and all(isinstance(v, str) for v in info.target_compute_capabilities)
                    and isinstance(info.version_compatible, bool)
                    and info.hardware_compatibility in HARDWARE_LEVELS):
                raise TypeError("fields of the wrong type")
            return info
        except (ValueError, TypeError, AttributeError, OSError) as exc:  # bad JSON or text, not an object, ...
            raise ModelCardError(f"build record {path} is unreadable ({type(exc).__name__}): "
                                 f"rebuild the plan with `runtime build`.") from exc

    def profile_range(self, name: str) -> tuple[list[int], list[int]] | None:
        """``(min_shape, max_shape)`` of input ``name``, or None if it has no profile."""
        shapes = self.profiles.get(name)
        return (list(shapes[0]), list(shapes[2])) if shapes else None


def plan_batch(info: PlanInfo) -> tuple[int, int, int] | None:
    """(min, opt, max) of dim 0 of the plan's batched inputs (the ``--batch`` it was built with), or None."""
    try:
        ranges = {tuple(int(s[0]) for s in shapes) for shapes in info.profiles.values() if len(shapes) == 3}
    except (TypeError, ValueError, IndexError):  # a hand-edited record: no range to repeat
        return None
    return min(ranges, key=lambda r: r[2]) if ranges else None


def rebuild_hint(plan: str | Path, extra: str = "", info: PlanInfo | None = None, *, library: str | None = None,
                 batch: tuple[int, int, int] | None = None,
                 partner_batch: tuple[int, int, int] | None = None) -> str:
    """The ``runtime build`` command that rebuilds ``plan`` (and its partner plan) here, ``extra`` flags appended.

    With the plan's build record ``info`` it repeats what the build was given: the source graph (its path while
    it exists), precision, library (``library`` overrides it: the one this machine has), RTX targets and both
    batch ranges (the partner plan's from its own record; ``batch`` overrides this plan's, ``partner_batch`` the
    partner's); without a record, it guesses the graph's name from the plan's.
    """
    p = Path(plan)
    encoder = p.name.endswith(".encoder.plan")
    stem = p.name[: -len(".encoder.plan")] if encoder else p.stem
    field_plan = p.with_name(stem + ".plan")
    source, flags = f"{stem}.onnx", []
    ranges: dict[str, tuple[int, int, int] | None] = {"encoder" if encoder else "field": batch}
    if info is not None:
        named = info.onnx_path if info.onnx_path and Path(info.onnx_path).is_file() else info.onnx
        if named:
            source = named[: -len(".encoder.onnx")] + ".onnx" if named.endswith(".encoder.onnx") else named
        lib = library or info.library
        lib = "tensorrt" if lib == "tensorrt_lean" else lib  # the lean runtime builds nothing
        flags += [f"--precision {info.precision}", f"--builder {lib}"]
        if info.target_compute_capabilities and lib == "tensorrt_rtx" and "--compute-capability" not in extra:
            flags.append(f"--compute-capability {','.join(info.target_compute_capabilities)}")
        if info.version_compatible:
            flags.append("--version-compatible")
        if info.hardware_compatibility != "none":
            flags.append(f"--hardware-compatibility {info.hardware_compatibility}")
        ranges["encoder" if encoder else "field"] = batch or plan_batch(info)
        partner = p.with_name(stem + (".plan" if encoder else ".encoder.plan"))
        try:
            ranges["field" if encoder else "encoder"] = plan_batch(PlanInfo.read(partner))
        except ModelCardError:
            pass
    if partner_batch is not None:
        ranges["field" if encoder else "encoder"] = partner_batch
    ranges = {k: None if r is None else (1, *r[1:]) for k, r in ranges.items()}  # MIN 1: what builds accept now
    if ranges.get("field") is not None:
        flags.append(f"--batch {':'.join(map(str, ranges['field']))}")
    if ranges.get("encoder") is not None and ranges["encoder"] != ranges.get("field"):
        flags.append(f"--encoder-batch {':'.join(map(str, ranges['encoder']))}")
    tail = "".join(" " + f for f in flags) + extra
    return f"`runtime build --onnx {source} --out {field_plan}{tail}`"


def field_plan(plan: str | Path) -> Path:
    """The field plan that names the pair ``plan`` belongs to (``NAME.encoder.plan`` -> ``NAME.plan``)."""
    p = Path(plan)
    return p.with_name(p.name[: -len(".encoder.plan")] + ".plan") if p.name.endswith(".encoder.plan") else p


def _cc_tuple(cc: str) -> tuple[int, ...]:
    return tuple(int(v) for v in cc.split("."))


def rtx_supports(cc: str) -> bool:
    """Whether TensorRT-RTX compiles for compute capability ``cc``: its default targets, Turing (7.5, on
    request) and anything newer than the newest default; not Volta, Hopper (9.0) or data-centre Blackwell."""
    return cc in ("7.5", *RTX_DEFAULT_TARGETS) or _cc_tuple(cc) > _cc_tuple(RTX_DEFAULT_TARGETS[-1])


def rtx_targets_cover(targets: list[str] | tuple[str, ...], cc: str) -> bool:
    """Whether a TensorRT-RTX plan compiled for ``targets`` (empty: the library's defaults, which also cover
    later GPUs) runs on compute capability ``cc``."""
    if targets:
        return cc in targets
    return cc in RTX_DEFAULT_TARGETS or _cc_tuple(cc) > _cc_tuple(max(RTX_DEFAULT_TARGETS, key=_cc_tuple))


def check_plan(plan: str | Path, info: PlanInfo, library: str, version: str, gpu: GpuInfo | None) -> list[str]:
    """Refuse a plan built for another library, TensorRT version or GPU; return warnings for lesser mismatches.

    Raises
    ------
    BackendError
        One sentence naming what the plan was built for, what this machine has, and the rebuild command.
    """
    hint = rebuild_hint(plan, info=info, library=library)
    if info.version_compatible and info.library == "tensorrt" and library in ("tensorrt", "tensorrt_lean"):
        if library == "tensorrt_lean" and version != info.trt_version:
            v = info.trt_version
            raise BackendError(f"plan {plan} was built by TensorRT {v}, and the TensorRT lean runtime runs plans of "
                               f"its own version only, but {version} is installed: run `pip install "
                               f"tensorrt-lean-cu13-bindings=={v} tensorrt-lean-cu13-libs=={v}`, or rebuild with "
                               f"{hint}.")
        if not vc_runs(info.trt_version, version):
            raise BackendError(f"plan {plan} is version-compatible from TensorRT {info.trt_version}, which "
                               f"{library} {version} cannot run (it needs the same or a later version of that "
                               f"major release, or the next one): upgrade {library}, or rebuild with {hint}.")
    elif library == "tensorrt_lean":
        raise BackendError(f"plan {plan} is not version-compatible, and the TensorRT lean runtime installed here "
                           f"runs only such plans: rebuild it with "
                           f"{rebuild_hint(plan, ' --version-compatible', info, library='tensorrt')}, or install "
                           f"full TensorRT (`pip install {PACKAGES['tensorrt']}`).")
    elif info.library != library:
        raise BackendError(f"plan {plan} was built with {info.library} but this machine runs {library}: "
                           f"rebuild it with {hint}.")
    elif info.trt_version != version:
        raise BackendError(f"plan {plan} was built with {library} {info.trt_version} but this machine has "
                           f"{library} {version}: rebuild it here with {hint}.")
    if gpu is None:
        raise BackendError(f"plan {plan} needs an NVIDIA GPU, but none is visible (no driver or device): "
                           f"run it on a GPU machine or pass the .onnx model to run on the CPU.")
    warnings: list[str] = []
    if library == "tensorrt_rtx":
        targets = info.target_compute_capabilities or list(RTX_DEFAULT_TARGETS)
        ok = rtx_targets_cover(info.target_compute_capabilities, gpu.compute_capability)
        if not ok and rtx_supports(gpu.compute_capability):
            wanted = ",".join(sorted({*targets, gpu.compute_capability}, key=_cc_tuple))
            raise BackendError(f"plan {plan} was compiled for compute capabilities {', '.join(targets)} but this "
                               f"{gpu.name} is {gpu.compute_capability}: rebuild it with "
                               f"{rebuild_hint(plan, f' --compute-capability {wanted}', info)}.")
        if not ok:
            raise BackendError(f"plan {plan} was compiled for compute capabilities {', '.join(targets)} but this "
                               f"{gpu.name} is {gpu.compute_capability} (TensorRT-RTX lists no support for it): "
                               f"use the .onnx model with the CUDA provider, or full TensorRT (`--builder tensorrt`).")
        return warnings
    if info.hardware_compatibility == "ampere+":
        if _cc_tuple(gpu.compute_capability) < (8, 0):  # rebuilt for this pre-Ampere GPU alone
            here = rebuild_hint(plan, info=dataclasses.replace(info, hardware_compatibility="none"), library=library)
            raise BackendError(f"plan {plan} was built for Ampere and later GPUs (compute 8.0+) but this machine "
                               f"has {gpu.name} (compute {gpu.compute_capability}): rebuild it here with {here}.")
        return warnings
    if info.compute_capability != gpu.compute_capability:
        raise BackendError(f"plan {plan} was built on {info.gpu_name} (compute {info.compute_capability}) but this "
                           f"machine has {gpu.name} (compute {gpu.compute_capability}): rebuild it here with {hint}.")
    if info.gpu_name != gpu.name and info.hardware_compatibility != "same-cc":
        warnings.append(f"plan {field_plan(plan)} and its encoder plan were built on {info.gpu_name} and run on "
                        f"{gpu.name} (same compute capability {gpu.compute_capability}); rebuild them here for best "
                        f"speed.")
    return warnings


def describe_library(trt: Any) -> dict[str, str]:
    """``{"library": ..., "version": ...}`` of an imported TensorRT module."""
    return {"library": library_name(trt), "version": str(getattr(trt, "__version__", "unknown"))}
