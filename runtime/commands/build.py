"""``runtime build``: build TensorRT / TensorRT-RTX plans from an exported model, on the machine that runs them."""

from __future__ import annotations

import argparse
import re
import sys
import time

from segflow.errors import InputError

HELP = ("build TensorRT/TensorRT-RTX plans (NAME.plan, NAME.encoder.plan, NAME.card.json) from an exported "
        "model, or an fp16 ONNX pair for ONNX Runtime")
DESCRIPTION = """\
Build TensorRT (data-centre GPUs) or TensorRT-RTX (RTX workstation GPUs) plans from NAME.onnx and
NAME.encoder.onnx. Full TensorRT plans run only on the compute capability and TensorRT version that built
them: build on the target machine. TensorRT-RTX builds need no GPU and run on the compute capabilities they target. The
network is strongly typed; --precision fp16/bf16 first converts the ONNX (segflow's cast pass, keeping norms,
reductions and softmax in fp32; or --conversion modelopt). TensorRT's own log goes to stderr.

  runtime build --onnx models/flowsdf-small-monuseg.onnx --out flowsdf.plan --precision fp16 --batch 1:16:64 \\
                --workspace 4G   # full TensorRT: add --timing-cache flowsdf.cache
  runtime segment --engine flowsdf.plan slide.tif --out results/

Where no TensorRT library can be installed (e.g. a GPU TensorRT-RTX does not support), an --out ending in
.onnx writes fp16 graphs instead (NAME.onnx, NAME.encoder.onnx, NAME.card.json; only --precision fp16 and
--conversion apply) for ONNX Runtime's CUDA provider, after checking them against the fp32 graphs:

  runtime build --onnx models/flowsdf-small-monuseg.onnx --out flowsdf.fp16.onnx --precision fp16
  runtime segment --engine flowsdf.fp16.onnx --backend cuda slide.tif --out results/
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``runtime build``."""
    p.add_argument("--onnx", required=True, help="the exported field graph NAME.onnx (NAME.encoder.onnx beside it)")
    p.add_argument("--out", required=True, help="field plan to write, e.g. flowsdf.plan (encoder plan and card "
                                                "are written beside it); NAME.onnx writes converted ONNX graphs")
    prec = p.add_mutually_exclusive_group()
    prec.add_argument("--precision", default="fp16", choices=("fp32", "fp16", "bf16"),
                      help="network precision, taken from the (converted) ONNX graph (default: fp16)")
    for name in ("fp16", "bf16", "fp32"):  # trtexec's spelling, which TensorRT 11 removed: here it still works
        prec.add_argument(f"--{name}", dest="precision", action="store_const", const=name,
                          help=f"same as --precision {name} (converts the ONNX, then builds; trtexec's flag)")
    p.add_argument("--batch", default=None,
                   help=f"MIN:OPT:MAX samples per field call, i.e. K x tiles; MIN must be 1 (default: "
                        f"{_DEFAULTS['batch']})")
    p.add_argument("--encoder-batch", default=None, help="MIN:OPT:MAX tiles per encoder call (default: --batch, "
                                                         "with OPT divided by the card's default K)")
    p.add_argument("--workspace", default=None,
                   help=f"workspace memory limit, e.g. 4G or 512M (default: {_DEFAULTS['workspace']})")
    p.add_argument("--timing-cache", default=None, metavar="FILE",
                   help="timing cache to reuse and update (full TensorRT; reused only when written by the same "
                        "TensorRT version and GPU, else rewritten)")
    p.add_argument("--builder", default=None, choices=("auto", "tensorrt", "tensorrt_rtx"),
                   help="library to build with (default: whichever is installed, full TensorRT first)")
    p.add_argument("--conversion", default="segflow", choices=("segflow", "modelopt", "auto"),  # autocast.METHODS
                   help="fp16/bf16 ONNX conversion: segflow's cast pass (default), NVIDIA ModelOpt AutoCast, or "
                        "auto (ModelOpt if installed, else segflow's)")
    p.add_argument("--compute-capability", default=None, metavar="CC[,CC...]",
                   help="TensorRT-RTX target GPUs, e.g. 7.5 for Turing (default: the library's own targets)")
    p.add_argument("--version-compatible", action="store_true", default=None,
                   help="full TensorRT: plans that later TensorRT versions and the 44 MB lean runtime (pip "
                        "tensorrt-lean-cu13-bindings tensorrt-lean-cu13-libs) also run; they embed host code, so "
                        "load only plans you built")
    p.add_argument("--hardware-compatibility", default=None, choices=("none", "ampere+", "same-cc"),
                   help="full TensorRT: plans for any Ampere-or-later GPU (ampere+) or any GPU of this one's "
                        "compute capability (same-cc), at some speed cost (default: none, this GPU only)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines (the result line still prints)")


def parse_compute_capabilities(text: str) -> tuple[str, ...]:
    """``"8.9, 7.5,8.9"`` -> ``("8.9", "7.5")``: MAJOR.MINOR each, in the order given, without repeats."""
    out: list[str] = []
    for cc in (c.strip() for c in text.split(",")):
        if not re.fullmatch(r"\d{1,2}\.\d", cc):
            raise InputError(f"--compute-capability {text!r}: {cc!r} is not a compute capability like 8.9 "
                             "(MAJOR.MINOR, comma-separated).")
        if cc not in out:
            out.append(cc)
    return tuple(out)


def parse_options(args: argparse.Namespace) -> dict:
    """Turn the parsed flags into :func:`segflow.runtime.engine.build_engine` keywords (one-sentence errors)."""
    from segflow.runtime.engine import parse_batch, parse_bytes

    batches = {}
    field_batch = _DEFAULTS["batch"] if args.batch is None else args.batch
    for flag, text in (("--batch", field_batch), ("--encoder-batch", args.encoder_batch)):
        try:
            batches[flag] = None if text is None else parse_batch(text)
        except ValueError as exc:
            raise InputError(f"{flag}: {exc}.") from exc
    try:
        workspace = parse_bytes(_DEFAULTS["workspace"] if args.workspace is None else args.workspace)
    except ValueError as exc:
        raise InputError(f"--workspace: {exc}.") from exc
    ccs = parse_compute_capabilities(args.compute_capability) if args.compute_capability is not None else ()
    return {"precision": args.precision, "batch": batches["--batch"], "encoder_batch": batches["--encoder-batch"],
            "workspace_bytes": workspace, "timing_cache": args.timing_cache, "builder": args.builder or "auto",
            "conversion": args.conversion, "compute_capabilities": ccs,
            "version_compatible": bool(args.version_compatible),
            "hardware_compatibility": args.hardware_compatibility or "none"}


_DEFAULTS = {"batch": "1:16:64", "workspace": "4G"}
_PLAN_ONLY = ("batch", "encoder_batch", "workspace", "timing_cache", "builder", "compute_capability",
              "version_compatible", "hardware_compatibility")


def convert(args: argparse.Namespace) -> int:
    """``--out NAME.onnx``: write the converted ONNX pair and print the parity check."""
    from segflow.runtime.engine import convert_engine

    for name in _PLAN_ONLY:  # refused whenever given, default values included: they would be silently unused
        if getattr(args, name) is not None:
            raise InputError(f"--{name.replace('_', '-')} applies to TensorRT plans, not to an .onnx --out "
                             f"{args.out}: drop it, or name a .plan to build plans.")
    t0 = time.perf_counter()
    res = convert_engine(args.onnx, args.out, precision=args.precision, conversion=args.conversion,
                         progress=None if args.quiet else _progress)
    check = ", ".join(f"{role} {err:.1e}" for role, err in res.errors.items())
    print(f"wrote {res.field} and {res.encoder}, {args.precision} ({res.conversion} conversion), in "
          f"{time.perf_counter() - t0:.1f} s; relative error against fp32 on random inputs: {check}; "
          f"card {res.card}", file=sys.stdout)
    return 0


def run(args: argparse.Namespace) -> int:
    """Build the plans (or, for an .onnx --out, the converted graphs) and print what was written."""
    from segflow.runtime.engine import build_engine

    if args.out.endswith(".onnx"):
        return convert(args)
    opts = parse_options(args)
    t0 = time.perf_counter()
    result = build_engine(args.onnx, args.out, **opts, progress=None if args.quiet else _progress)
    info, enc = result.field_info, result.encoder_info
    gpu = f"{info.gpu_name} (compute {info.compute_capability})" if info.gpu_name else "no GPU (CPU-only build)"
    precision = info.precision if info.conversion == "none" else f"{info.precision} ({info.conversion} conversion)"
    eb = opts["encoder_batch"] or opts["batch"]
    targets = f", for compute {', '.join(info.target_compute_capabilities)}" if info.target_compute_capabilities \
        else ""
    if info.version_compatible:
        targets += ", version-compatible"
    if info.hardware_compatibility == "ampere+":
        targets += ", for Ampere and later GPUs"
    elif info.hardware_compatibility == "same-cc":
        targets += f", for GPUs of compute {info.compute_capability}"
    print(f"built {result.field} and {result.encoder} with {info.library} {info.trt_version}, {precision}, field "
          f"batch {opts['batch'][0]}..{opts['batch'][2]}, encoder batch {eb[0]}..{eb[2]}{targets}, on {gpu} in "
          f"{time.perf_counter() - t0:.1f} s; card {result.card}", file=sys.stdout)
    if opts["timing_cache"] and info.library == "tensorrt_rtx" and enc.library == "tensorrt_rtx":
        print(f"note: --timing-cache {opts['timing_cache']} was not used: TensorRT-RTX has no timing caches (it "
              "compiles its kernels on the GPU that runs the plan, and keeps them in a runtime cache beside the plan).",
              file=sys.stderr)
    return 0


def _progress(message: str) -> None:
    print(f"runtime build: {message}", file=sys.stderr, flush=True)
