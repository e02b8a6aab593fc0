"""Build TensorRT / TensorRT-RTX plans from the exported ONNX graphs, on the target machine, without torch.

:func:`build_engine` turns ``NAME.onnx`` + ``NAME.encoder.onnx`` into ``NAME.plan`` + ``NAME.encoder.plan``,
writes the model card as ``NAME.card.json`` (the naming convention of :func:`segflow.card.resolve_engine`) and
one build record per plan (``NAME.plan.json``, see :class:`segflow.runtime.trtlib.PlanInfo`).

Build recipe (the same on TensorRT 10, TensorRT 11 and TensorRT-RTX):

* the network is always **strongly typed**; precision comes from the ONNX graph, converted beforehand for
  fp16/bf16 by :func:`segflow.runtime.autocast.convert_precision` (TensorRT 11 has no FP16/BF16 flags);
* one optimisation profile: the batch dimension (dim 0) of every dynamic input spans ``batch = (min, opt,
  max)`` samples (K x tiles); other dynamic dimensions are fixed at the card's tile size;
* the workspace memory pool is limited to ``workspace_bytes``;
* full TensorRT reuses a timing cache file (loaded if it was written by the same TensorRT version on the
  same GPU, saved after the build). TensorRT-RTX ignores timing caches (its kernels are compiled just in time
  on the user's GPU, and its builder needs no GPU at all), so the cache is skipped there.

:func:`convert_engine` writes the fp16 conversion as an ONNX pair (``OUT.onnx``, ``OUT.encoder.onnx``,
``OUT.card.json``) for ONNX Runtime, where no TensorRT library can be installed (its CUDA provider runs fp16 on
tensor cores), after checking it against the fp32 graphs on ONNX Runtime's CPU provider. bf16 stays a
TensorRT precision: ONNX Runtime has no bf16 kernels for these graphs.
"""

from __future__ import annotations

import contextlib
import json
import operator
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from segflow.runtime.autocast import METHODS, PRECISIONS, conversion_method, convert_precision, load_graph
from segflow.runtime.trtlib import (
    HARDWARE_LEVELS,
    PlanInfo,
    deferred_interrupt,
    gpu_info,
    import_trt,
    library_name,
    rtx_supports,
    rtx_targets_cover,
    sidecar_path,
    trt_logger,
)

from segflow import __version__
from segflow.card import ModelCard, card_from_onnx, resolve_engine
from segflow.errors import BackendError, InputError, ModelCardError, require_onnxruntime
from segflow.imageio import STAGE_OWNER, default_file_mode, staging

__all__ = ["parse_batch", "parse_bytes", "profile_shapes", "build_plan", "build_engine", "BuildResult",
           "convert_engine", "ConvertResult", "sample_feeds", "DEFAULT_BATCH", "DEFAULT_WORKSPACE"]

DEFAULT_BATCH = (1, 16, 64)
DEFAULT_WORKSPACE = 4 << 30
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_MAX_BATCH = 2**31 - 1


def parse_batch(text: str) -> tuple[int, int, int]:
    """Parse ``"MIN:OPT:MAX"`` (or a single ``"N"``) into a batch range with 1 <= min <= opt <= max.

    Examples
    --------
    >>> parse_batch("1:16:64"), parse_batch("8")
    ((1, 16, 64), (8, 8, 8))
    """
    parts = str(text).split(":")
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"batch {text!r} must be MIN:OPT:MAX integers, e.g. 1:16:64") from None
    if len(vals) == 1:
        vals = vals * 3
    if len(vals) != 3 or not 1 <= vals[0] <= vals[1] <= vals[2]:
        raise ValueError(f"batch {text!r} must be MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX, e.g. 1:16:64")
    if vals[2] > _MAX_BATCH:
        raise ValueError(f"batch {text!r} goes beyond {_MAX_BATCH} (TensorRT's dimensions are 32-bit)")
    return vals[0], vals[1], vals[2]


def parse_bytes(text: str | int) -> int:
    """Parse a size like ``"4G"``, ``"512M"``, ``"1.5G"`` or ``1048576`` (binary units) into bytes.

    Examples
    --------
    >>> parse_bytes("4G"), parse_bytes("512m"), parse_bytes(1024)
    (4294967296, 536870912, 1024)
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", str(text))
    if not m:
        raise ValueError(f"size {text!r} must be a number with an optional K/M/G/T suffix, e.g. 4G")
    value = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if value <= 0:
        raise ValueError(f"size {text!r} must be at least one byte")
    if value >= 1 << 63:
        raise ValueError(f"size {text!r} is beyond what TensorRT takes (less than 8 EiB)")
    return value


def profile_shapes(shape: tuple[int, ...], batch: tuple[int, int, int], spatial: int
                   ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None:
    """Min/opt/max shapes of one input with (TensorRT-style) ``-1`` for dynamic dimensions.

    Dim 0 takes the batch range; any other dynamic dim of a rank-4 (B, C, H, W) input at H or W takes
    ``spatial`` (the tile). Returns None for a fully static input. A dynamic channel dim is an error.

    Examples
    --------
    >>> profile_shapes((-1, 1, -1, -1), (1, 16, 64), 128)
    ((1, 1, 128, 128), (16, 1, 128, 128), (64, 1, 128, 128))
    >>> profile_shapes((-1,), (2, 4, 8), 128)
    ((2,), (4,), (8,))
    """
    if all(d >= 0 for d in shape):
        return None
    rest = []
    for axis, d in enumerate(shape[1:], start=1):
        if d >= 0:
            rest.append(int(d))
        elif len(shape) == 4 and axis >= 2:
            rest.append(int(spatial))
        else:
            raise ValueError(f"input shape {list(shape)} has a dynamic dimension {axis} that is neither the "
                             f"batch nor H/W: export the model with static channels")
    first = [shape[0]] * 3 if shape[0] >= 0 else list(batch)
    return tuple((first[i], *rest) for i in range(3))  # type: ignore[return-value]


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


STAGE_PREFIX = ".segflow-build-"


@contextlib.contextmanager
def staged_outputs(folder: Path, progress: Callable[[str], None] | None = None) -> Iterator[Path]:
    """:func:`segflow.imageio.staging` for build outputs: a hidden staging folder inside ``folder``, removed
    (with the folders made for it) on failure; staging folders that killed builds left are removed first
    (``progress`` is told of each)."""
    def unwritable(where: Path, exc: OSError) -> InputError:
        return InputError(f"cannot write to the output folder {where} ({exc.strerror or exc}): choose a writable "
                          f"--out or fix the folder's permissions.")

    with staging(folder, STAGE_PREFIX, STAGE_PREFIX + "*", progress or (lambda _msg: None), unwritable) as stage:
        yield stage


def _publish(stage: Path, folder: Path, names: list[str]) -> None:
    """Move ``names`` from ``stage`` into ``folder`` in that order (the caller puts the file that makes the set
    usable last), with the default file mode."""
    with deferred_interrupt():  # all five renames or none started: a Ctrl-C here acts once they are done
        for name in names:
            os.chmod(stage / name, default_file_mode())
            os.replace(stage / name, folder / name)


def _refuse_folders(paths: list[Path]) -> None:
    for p in paths:
        if p.is_dir():
            raise InputError(f"{p} is a folder, where runtime build writes a file: remove it or choose another --out.")


def _parse_onnx(trt: ModuleType, builder: Any, logger: Any, onnx_path: Path, source: Path) -> Any:
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if flag is None else 1 << int(flag))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or "no details"
        raise ModelCardError(f"{library_name(trt)} cannot parse {source} ({errors}): re-export the model "
                             f"with a supported opset or upgrade {library_name(trt)}.")
    if network.num_inputs == 0 or network.num_outputs == 0:  # the parser takes any bytes for an empty graph
        raise ModelCardError(f"{source} holds no graph {library_name(trt)} can build (no inputs or outputs): "
                             f"export the model again with `trainer export`.")
    return network, parser


def _network_inputs(network: Any) -> dict[str, tuple[int, ...]]:
    return {network.get_input(i).name: tuple(int(d) for d in network.get_input(i).shape)
            for i in range(network.num_inputs)}


def _timing_cache(trt: ModuleType, config: Any, path: Path | None, stamp: dict[str, Any]) -> Any:
    """Attach a timing cache (loaded when its stamp matches this TensorRT + GPU) and return it, or None."""
    if path is None or library_name(trt) == "tensorrt_rtx":
        return None
    data = b""
    stamp_file = path.with_name(path.name + ".json")
    if path.is_file():
        try:
            old = json.loads(stamp_file.read_text()) if stamp_file.is_file() else {}
        except (OSError, ValueError):  # an unreadable stamp: the cache cannot be trusted, so it is rebuilt
            old = {}
        if old == stamp:
            data = path.read_bytes()
    cache = config.create_timing_cache(data)
    config.set_timing_cache(cache, False)
    return cache


def build_plan(onnx_path: str | Path, out_plan: str | Path, *, batch: tuple[int, int, int] = DEFAULT_BATCH,
               spatial: int = 128, workspace_bytes: int = DEFAULT_WORKSPACE, timing_cache: str | Path | None = None,
               builder: str = "auto", precision: str = "fp32", conversion: str = "none",
               source: str | Path | None = None, log_level: str = "WARNING",
               compute_capabilities: tuple[str, ...] = (), version_compatible: bool = False,
               hardware_compatibility: str = "none") -> PlanInfo:
    """Build one plan from one ONNX graph (already in its final precision) and write its build record.

    ``source`` is the user's graph when ``onnx_path`` is a converted copy: messages and the record name it.

    Returns
    -------
    PlanInfo
        What was written to ``out_plan + ".json"``.
    """
    trt = import_trt(builder)
    lib = library_name(trt)
    onnx_path, out_plan = Path(onnx_path), Path(out_plan)
    source = Path(source) if source is not None else onnx_path
    logger = trt_logger(trt, log_level)
    b = trt.Builder(logger)
    with deferred_interrupt():
        network, _parser = _parse_onnx(trt, b, logger, onnx_path, source)
    config = b.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    # TF32 is on by default and rounds float32 convolution and matmul inputs to 10-bit mantissas: off, so the
    # float32 ops (all of an fp32 plan, and those the fp16/bf16 conversion keeps in float32) compute in float32
    config.clear_flag(trt.BuilderFlag.TF32)
    profile = b.create_optimization_profile()
    profiles = {}
    for name, shape in _network_inputs(network).items():
        shapes = profile_shapes(shape, batch, spatial)
        if shapes is not None:
            profile.set_shape(name, *shapes)
            profiles[name] = [list(s) for s in shapes]
    if profiles:
        config.add_optimization_profile(profile)
    _set_targets(trt, config, compute_capabilities)
    _set_portability(trt, config, version_compatible, hardware_compatibility)
    gpu = gpu_info()
    stamp = {"library": lib, "version": str(trt.__version__),
             "gpu": None if gpu is None else [gpu.name, gpu.compute_capability]}
    cache_path = Path(timing_cache) if timing_cache else None
    cache = _timing_cache(trt, config, cache_path, stamp)
    with deferred_interrupt():  # a Ctrl-C acts when the build returns (see deferred_interrupt)
        plan = b.build_serialized_network(network, config)
    if plan is None:
        raise BackendError(f"{lib} failed to build a plan from {source} (see its log above): check the "
                           f"workspace limit (--workspace) and the batch range (--batch).")
    out_plan.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(out_plan, bytes(plan))
    if cache is not None and cache_path is not None:
        _atomic_write(cache_path, bytes(cache.serialize()))
        _atomic_write(cache_path.with_name(cache_path.name + ".json"), json.dumps(stamp).encode())
    targets = []
    if lib == "tensorrt_rtx" and hasattr(config, "num_compute_capabilities"):
        targets = [_cc_name(config.get_compute_capability(i)) for i in range(config.num_compute_capabilities)]
    info = PlanInfo(library=lib, trt_version=str(trt.__version__), precision=precision,
                    gpu_name=None if gpu is None else gpu.name,
                    compute_capability=None if gpu is None else gpu.compute_capability,
                    target_compute_capabilities=[t for t in targets if t], profiles=profiles,
                    workspace_bytes=int(workspace_bytes), onnx=source.name, onnx_path=str(source.resolve()),
                    conversion=conversion, version_compatible=bool(version_compatible),
                    hardware_compatibility=hardware_compatibility, segflow_version=__version__)
    _atomic_write(sidecar_path(out_plan), info.to_json().encode())
    return info


def _set_portability(trt: ModuleType, config: Any, version_compatible: bool, hardware: str) -> None:
    """Full TensorRT: a version-compatible plan (it embeds its lean runtime: later TensorRT versions and the lean
    runtime ``tensorrt_lean`` run it) and/or one for other GPUs (``hardware``: a :data:`HARDWARE_LEVELS` key)."""
    if version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if hardware != "none":
        config.hardware_compatibility_level = getattr(trt.HardwareCompatibilityLevel, HARDWARE_LEVELS[hardware])


def _set_targets(trt: ModuleType, config: Any, targets: tuple[str, ...]) -> None:
    """TensorRT-RTX: compile for these compute capabilities (e.g. ``("7.5",)`` for Turing)."""
    enums = _target_enums(trt, targets)
    if not enums:
        return
    config.num_compute_capabilities = len(enums)
    for i, enum in enumerate(enums):
        config.set_compute_capability(enum, i)


def _target_enums(trt: ModuleType, targets: tuple[str, ...]) -> list[Any]:
    """``trt.ComputeCapability`` members for ``targets``, or one sentence on what to do instead."""
    if not targets:
        return []
    if library_name(trt) != "tensorrt_rtx":
        raise InputError("--compute-capability applies to TensorRT-RTX builds only: full TensorRT builds for "
                         "the GPU it runs on.")
    enums = []
    for cc in targets:
        enum = getattr(trt.ComputeCapability, "SM" + cc.replace(".", ""), None)
        if enum is None:
            known = {_cc_name(v) for k, v in vars(trt.ComputeCapability).items() if k.startswith("SM")} - {""}
            order = sorted(known, key=lambda c: tuple(int(x) for x in c.split(".")))
            raise InputError(f"compute capability {cc} is not offered by {library_name(trt)} "
                             f"{trt.__version__} (choose from {', '.join(order)}): for a GPU it does not support, "
                             "build with full TensorRT (`pip install tensorrt`, --builder tensorrt) or write an "
                             "--out NAME.onnx for ONNX Runtime's CUDA provider.")
        enums.append(enum)
    return enums


def _warn_if_not_for_this_gpu(trt: ModuleType, targets: tuple[str, ...]) -> None:
    """TensorRT-RTX builds for a list of GPUs, which need not include the one building (a build server making
    plans for workstations is fine), but a user who means to run here should hear it before the build, not
    from `runtime segment` afterwards."""
    gpu = gpu_info()
    if library_name(trt) != "tensorrt_rtx" or gpu is None or rtx_targets_cover(targets, gpu.compute_capability):
        return
    cc = gpu.compute_capability
    if rtx_supports(cc):
        wanted = sorted({*targets, cc}, key=lambda c: tuple(map(int, c.split("."))))
        fix = f"add --compute-capability {','.join(wanted)}"
        why = f"the plans are compiled for {', '.join(targets)} only"
    else:
        fix = "run the .onnx model with the CUDA provider, or build with full TensorRT (--builder tensorrt)"
        why = "TensorRT-RTX lists no support for it"
    warnings.warn(f"these plans will not run on this machine's {gpu.name} (compute {cc}): {why}; to run them here, "
                  f"{fix}.", RuntimeWarning, stacklevel=3)


def _cc_name(cc: Any) -> str:
    """``ComputeCapability.SM89`` -> ``"8.9"``; ``SM120`` -> ``"12.0"``; others (CURRENT, NONE) -> ``""``."""
    m = re.search(r"SM(\d+)(\d)$", str(getattr(cc, "name", cc)))
    return f"{int(m.group(1))}.{m.group(2)}" if m else ""


@dataclass(frozen=True)
class BuildResult:
    """The files :func:`build_engine` wrote and their build records."""

    field: Path
    encoder: Path
    card: Path
    field_info: PlanInfo
    encoder_info: PlanInfo


def _check_graph(path: Path) -> None:
    """One sentence if ``path`` holds no readable ONNX graph (skipped where the ``onnx`` package is absent: an
    fp32 build needs only TensorRT, whose parser reports what it cannot read)."""
    try:
        import onnx
    except ImportError:
        return
    load_graph(onnx, path, load_external_data=False)


def _encoder_range(batch: tuple[int, int, int], card: ModelCard) -> tuple[int, int, int]:
    """The encoder's default profile: the field's range, tuned (OPT) for the tiles of one full field call, which
    holds the card's default K samples of each (encoder calls take batch // K tiles)."""
    k = max(1, int(card.sampling.get("samples", 4)))
    return batch[0], max(batch[0], batch[1] // k), batch[2]


def _check_portability(trt: ModuleType, version_compatible: Any, hardware: Any) -> None:
    if not isinstance(version_compatible, bool):
        raise InputError(f"version_compatible {version_compatible!r} must be True or False.")
    if hardware not in HARDWARE_LEVELS:
        raise InputError(f"hardware compatibility {hardware!r} is unknown: choose one of "
                         f"{', '.join(HARDWARE_LEVELS)}.")
    if (version_compatible or hardware != "none") and library_name(trt) == "tensorrt_rtx":
        flag = "--version-compatible" if version_compatible else "--hardware-compatibility"
        raise InputError(f"{flag} is for full TensorRT plans; TensorRT-RTX plans run on the GPUs of their "
                         f"--compute-capability targets and only with the TensorRT-RTX version that built them: "
                         f"drop it, or build with --builder tensorrt.")
    gpu = gpu_info() if hardware == "ampere+" else None
    if gpu is not None and tuple(int(v) for v in gpu.compute_capability.split(".")) < (8, 0):
        raise InputError(f"--hardware-compatibility ampere+ needs an Ampere or later GPU to build on (TensorRT), "
                         f"but this machine has {gpu.name} (compute {gpu.compute_capability}): build on one, or "
                         f"drop the flag for plans for this GPU.")


def _check_build_args(batch: Any, encoder_batch: Any, workspace_bytes: Any, builder: str, conversion: str) -> None:
    """One sentence for build arguments the CLI would have refused (Python callers skip its parsing)."""
    from segflow.runtime.trtlib import BUILDERS

    for flag, rng in (("--batch", batch), ("--encoder-batch", encoder_batch)):
        if rng is None and flag == "--encoder-batch":
            continue
        try:  # integers of any kind (numpy's too), in a tuple, list or array; not bools
            vals = [operator.index(v) for v in rng if not isinstance(v, bool)]
            ok = len(vals) == len(rng) == 3 and 1 <= vals[0] <= vals[1] <= vals[2] <= _MAX_BATCH
        except TypeError:
            ok = False
        if not ok:
            raise InputError(f"{flag} {rng!r} must be (MIN, OPT, MAX) integers with 1 <= MIN <= OPT <= MAX <= "
                             f"{_MAX_BATCH}, e.g. (1, 16, 64).")
        if rng[0] != 1:
            raise InputError(f"{flag} MIN is {rng[0]}, but an image's last call can hold a single sample (K x tiles is "
                             f"not always a multiple of the batch): use MIN 1, e.g. 1:{rng[1]}:{rng[2]}.")
    try:
        workspace_ok = not isinstance(workspace_bytes, bool) and 0 < operator.index(workspace_bytes) < 1 << 63
    except TypeError:
        workspace_ok = False
    if not workspace_ok:
        raise InputError(f"workspace {workspace_bytes!r} must be a positive number of bytes (the CLI takes 4G).")
    if builder not in BUILDERS:
        raise InputError(f"builder {builder!r} is unknown: choose one of {', '.join(BUILDERS)}.")
    if conversion not in METHODS:
        raise InputError(f"conversion {conversion!r} is unknown: choose one of {', '.join(METHODS)}.")


def _require_file(onnx_path: str | Path) -> None:
    if not Path(onnx_path).is_file():
        raise InputError(f"--onnx {onnx_path} does not exist: pass the exported field graph NAME.onnx (`trainer "
                         "export` writes it, with NAME.encoder.onnx beside it).")


def _plan_paths(out_plan: Path) -> tuple[Path, Path, Path]:
    if out_plan.suffix != ".plan" or out_plan.name.endswith(".encoder.plan"):
        raise InputError(f"--out {out_plan} must name the field plan, ending in .plan (e.g. flowsdf.plan).")
    stem = out_plan.name[: -len(".plan")]
    return out_plan, out_plan.with_name(f"{stem}.encoder.plan"), out_plan.with_name(f"{stem}.card.json")


def _card_for(engine: Any) -> ModelCard:
    if engine.card.exists():
        return ModelCard.from_json(engine.card.read_text(), source=str(engine.card))
    return card_from_onnx(engine.field)


def build_engine(onnx_path: str | Path, out_plan: str | Path, *, precision: str = "fp32",
                 batch: tuple[int, int, int] = DEFAULT_BATCH, workspace_bytes: int = DEFAULT_WORKSPACE,
                 timing_cache: str | Path | None = None, builder: str = "auto", conversion: str = "segflow",
                 encoder_batch: tuple[int, int, int] | None = None,
                 compute_capabilities: tuple[str, ...] = (), version_compatible: bool = False,
                 hardware_compatibility: str = "none",
                 progress: Callable[[str], None] | None = None) -> BuildResult:
    """Build ``NAME.plan``, ``NAME.encoder.plan`` and ``NAME.card.json`` from an exported FlowSDF/SSB model.

    Parameters
    ----------
    onnx_path : str or Path
        The field graph ``NAME.onnx`` (its encoder ``NAME.encoder.onnx`` must sit beside it).
    out_plan : str or Path
        ``OUT.plan``; the encoder plan and the card are written beside it.
    precision : {"fp32", "fp16", "bf16"}
        fp16/bf16 convert the ONNX first (``conversion``).
    batch : (min, opt, max)
        Samples per field call (K x tiles) of the optimisation profile.
    workspace_bytes : int
        Workspace memory-pool limit.
    timing_cache : path, optional
        Timing cache file to reuse and update (full TensorRT only).
    builder : {"auto", "tensorrt", "tensorrt_rtx"}
        Library to build with (``auto``: whichever is installed, full TensorRT first).
    conversion : {"segflow", "modelopt", "auto"}
        Precision conversion method (see :mod:`segflow.runtime.autocast`; default: segflow's cast pass).
    encoder_batch : (min, opt, max), optional
        Tiles per encoder call (default: ``batch`` with OPT divided by the card's default K, the tiles a full
        field call holds).
    compute_capabilities : tuple of str
        TensorRT-RTX target GPUs (default: the library's, 8.0/8.6/8.9/12.0 and later).
    version_compatible : bool
        Full TensorRT: plans that later TensorRT versions and the lean runtime (``tensorrt_lean``) also run.
    hardware_compatibility : {"none", "ampere+", "same-cc"}
        Full TensorRT: plans for any Ampere-or-later GPU, or for any GPU of the building one's capability.
    progress : callable, optional
        Called with a line before each step (conversion, each plan's build).

    All five files are written together once both plans are built; on any failure (or an interruption) none
    is, and an earlier build at ``out_plan`` is left as it was.
    """
    say = progress or (lambda _msg: None)
    if precision not in PRECISIONS:
        raise InputError(f"precision {precision!r} is unknown: choose one of {PRECISIONS}.")
    _check_build_args(batch, encoder_batch, workspace_bytes, builder, conversion)
    batch = tuple(operator.index(v) for v in batch)  # plain ints for TensorRT (numpy's are accepted above)
    encoder_batch = None if encoder_batch is None else tuple(operator.index(v) for v in encoder_batch)
    workspace_bytes = operator.index(workspace_bytes)
    trt = import_trt(builder)  # fail fast, before any conversion work
    _target_enums(trt, tuple(compute_capabilities))
    _check_portability(trt, version_compatible, hardware_compatibility)
    _warn_if_not_for_this_gpu(trt, tuple(compute_capabilities))
    _require_file(onnx_path)
    engine = resolve_engine(onnx_path)
    if engine.format != "onnx":
        raise InputError(f"--onnx {onnx_path} must be an exported .onnx model, not a {engine.format} file.")
    card = _card_for(engine)
    field_plan, encoder_plan, card_path = _plan_paths(Path(out_plan))
    for graph in (engine.field, engine.encoder):  # both readable before the first (long) build starts
        _check_graph(graph)
    outputs = [encoder_plan, sidecar_path(encoder_plan), card_path, sidecar_path(field_plan), field_plan]
    _refuse_folders(outputs)
    cache_dir = Path(timing_cache).absolute().parent if timing_cache else None
    if cache_dir is not None and library_name(trt) != "tensorrt_rtx" and not cache_dir.is_dir() \
            and cache_dir != field_plan.parent.absolute():  # the out folder is created by the build
        raise InputError(f"--timing-cache {timing_cache}: its folder {cache_dir} does not exist; create it or choose "
                         "another file.")
    infos = []
    with staged_outputs(field_plan.parent, say) as stage, tempfile.TemporaryDirectory(prefix="segflow-build-") as tmp:
        jobs = (("field", engine.field, field_plan, batch),
                ("encoder", engine.encoder, encoder_plan, encoder_batch or _encoder_range(batch, card)))
        feeds = sample_feeds(engine, card) if precision != "fp32" and conversion_method(conversion) == "modelopt" \
            else {}
        for role, src, dst, rng in jobs:
            graph, used = src, "none"
            if precision != "fp32":
                say(f"converting {src} to {precision} ({conversion_method(conversion)} conversion)")
                graph = Path(tmp) / f"{src.stem}.{precision}.onnx"
                used = convert_precision(src, graph, precision, method=conversion, calibration=feeds.get(role))
            say(f"building the {role} plan with {library_name(trt)} {trt.__version__}, batch {rng[0]}..{rng[2]} "
                f"(this takes a while)")
            infos.append(build_plan(graph, stage / dst.name, batch=rng, spatial=card.tile,
                                    workspace_bytes=workspace_bytes, timing_cache=timing_cache, builder=builder,
                                    precision=precision, conversion=used, source=src,
                                    compute_capabilities=compute_capabilities,
                                    version_compatible=version_compatible,
                                    hardware_compatibility=hardware_compatibility))
        (stage / card_path.name).write_text(json.dumps(card.to_dict(), indent=1, sort_keys=True))
        _publish(stage, field_plan.parent, [p.name for p in outputs])  # the field plan, which names the set, last
    return BuildResult(field_plan, encoder_plan, card_path, infos[0], infos[1])


@dataclass(frozen=True)
class ConvertResult:
    """The files :func:`convert_engine` wrote, the conversion method and the parity check's relative errors."""

    field: Path
    encoder: Path
    card: Path
    conversion: str
    errors: dict[str, float]  # graph role -> max |fp16 - fp32| / max |fp32| on random inputs (empty: unchecked)


def _onnx_paths(out: Path, source: Path) -> tuple[Path, Path, Path]:
    if out.suffix != ".onnx" or out.name.endswith(".encoder.onnx"):
        raise InputError(f"--out {out} must name the field graph, ending in .onnx (e.g. flowsdf.fp16.onnx).")
    if out.resolve() == source.resolve():
        raise InputError(f"--out {out} is the source model itself: choose another name, e.g. NAME.fp16.onnx.")
    stem = out.name[: -len(".onnx")]
    return out, out.with_name(f"{stem}.encoder.onnx"), out.with_name(f"{stem}.card.json")


def sample_feeds(engine: Any, card: ModelCard, batch: int = 2, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Inputs for each fp32 graph of an exported model, as the sampler feeds them: ``{"encoder": ..., "field": ...}``.

    Dynamic dimensions are ``batch`` first and then the card's tile. The encoder gets standard-normal images
    (tiles are normalised), the field its noise ``x``, times ``t`` in [0.05, 0.95], the features the fp32
    encoder computes from those images on ONNX Runtime's CPU provider, and (SSB) annotator labels from 0 to the
    card's ``n_labels``. Used as ModelOpt AutoCast's calibration data and for the fp16 parity check, so both
    see values of the sizes the runtime produces (random features or float labels would not do).
    """
    import numpy as np
    from segflow.runtime.backends.onnxrt import session_options

    ort = require_onnxruntime()

    rng = np.random.default_rng(seed)
    n_labels = int(card.bridge.get("n_labels", 0)) if card.kind == "ssb" else 0

    def shape_of(arg: Any) -> list[int]:
        return [d if isinstance(d, int) else batch if i == 0 else card.tile for i, d in enumerate(arg.shape)]

    def session(path: Path) -> Any:
        try:
            return ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ORT's Fail / InvalidProtobuf / InvalidGraph
            raise ModelCardError(f"ONNX Runtime cannot load {path} ({type(exc).__name__}: {str(exc)[:160]}): "
                                 "export the model again with `trainer export`.") from exc

    enc = session(engine.encoder)
    feeds: dict[str, dict[str, Any]] = {"encoder": {a.name: rng.standard_normal(shape_of(a)).astype(np.float32)
                                                    for a in enc.get_inputs()}}
    features = dict(zip((o.name for o in enc.get_outputs()), enc.run(None, feeds["encoder"]), strict=True))
    field = session(engine.field)
    feeds["field"] = {}
    for arg in field.get_inputs():
        shape = shape_of(arg)
        if arg.name in features:
            value = features[arg.name]
        elif arg.type == "tensor(int64)":
            value = rng.integers(0, n_labels + 1, shape, dtype=np.int64)
        elif arg.name == "t":
            value = rng.uniform(0.05, 0.95, shape).astype(np.float32)
        else:
            value = rng.standard_normal(shape).astype(np.float32)
        feeds["field"][arg.name] = value
    return feeds


def _relative_error(reference: Path, converted: Path, feed: dict[str, Any]) -> float:
    """Max |converted - reference| / max |reference| over the outputs on ``feed``, ONNX Runtime CPU."""
    import numpy as np
    from segflow.runtime.backends.onnxrt import session_options

    ort = require_onnxruntime()

    ref, low = (ort.InferenceSession(str(p), session_options(), providers=["CPUExecutionProvider"])
                for p in (reference, converted))
    worst = 0.0
    for a, b in zip(ref.run(None, feed), low.run(None, feed), strict=True):
        scale = max(float(np.abs(a).max()), 1e-6)
        worst = max(worst, float(np.abs(a.astype(np.float64) - b).max()) / scale)
    return worst


def convert_engine(onnx_path: str | Path, out_onnx: str | Path, *, precision: str = "fp16",
                   conversion: str = "segflow", check: bool = True,
                   progress: Callable[[str], None] | None = None) -> ConvertResult:
    """Write an exported model converted to fp16 as ``OUT.onnx``, ``OUT.encoder.onnx`` and ``OUT.card.json``.

    For ONNX Runtime (module docstring). Nothing is written unless both graphs convert (and, with ``check``,
    run on ONNX Runtime's CPU provider); ``errors`` holds each graph's relative error against the fp32 graph on
    random inputs.
    """
    if precision != "fp16":
        raise InputError(f"precision {precision!r} for an .onnx --out: ONNX Runtime runs these graphs in fp16 "
                         f"(the exported model is fp32; bf16 is for TensorRT plans): use --precision fp16.")
    say = progress or (lambda _msg: None)
    if conversion not in METHODS:
        raise InputError(f"conversion {conversion!r} is unknown: choose one of {', '.join(METHODS)}.")
    _require_file(onnx_path)
    engine = resolve_engine(onnx_path)
    if engine.format != "onnx":
        raise InputError(f"--onnx {onnx_path} must be an exported .onnx model, not a {engine.format} file.")
    field, encoder, card_path = _onnx_paths(Path(out_onnx), engine.field)
    _refuse_folders([field, encoder, card_path])
    for graph in (engine.field, engine.encoder):
        _check_graph(graph)
    card = _card_for(engine)
    graphs = {"field": (engine.field, field), "encoder": (engine.encoder, encoder)}  # role -> (source, output)
    with staged_outputs(field.parent, say) as stage:
        staged = {role: stage / dst.name for role, (_src, dst) in graphs.items()}
        feeds = sample_feeds(engine, card) if check or conversion_method(conversion) == "modelopt" else {}
        for role, (src, _dst) in graphs.items():
            say(f"converting {src} to {precision} ({conversion_method(conversion)} conversion)")
            used = convert_precision(src, staged[role], precision, method=conversion, calibration=feeds.get(role))
        errors = {}
        if check:
            say("checking both graphs against fp32 on ONNX Runtime's CPU provider")
            try:
                errors = {role: _relative_error(src, staged[role], feeds[role]) for role, (src, _dst) in graphs.items()}
            except Exception as exc:  # noqa: BLE001 - ORT raises several types; nothing has been written yet
                raise BackendError(f"the fp16 graphs converted from {engine.field} do not run on ONNX Runtime "
                                   f"({type(exc).__name__}: {str(exc)[:200]}): try --conversion "
                                   f"{'segflow' if used == 'modelopt' else 'modelopt'}, or keep fp32.") from exc
        (stage / card_path.name).write_text(json.dumps(card.to_dict(), indent=1, sort_keys=True))
        # the graphs (and any external-data files) and the card, all or nothing; the field graph last
        names = sorted((f.name for f in stage.iterdir() if f.name != STAGE_OWNER), key=lambda n: n == field.name)
        _publish(stage, field.parent, names)
    return ConvertResult(field, encoder, card_path, used, errors)
