"""``runtime build``: build TensorRT / TensorRT-RTX plans from an exported model, on the machine that runs them."""

from __future__ import annotations

import argparse
import sys
import time

from segflow.errors import InputError

HELP = ("build TensorRT/TensorRT-RTX plans (NAME.plan, NAME.encoder.plan, NAME.card.json) from an exported "
        "model, or an fp16 ONNX pair for ONNX Runtime")
DESCRIPTION = """\
Build TensorRT (data-centre GPUs) or TensorRT-RTX (RTX workstation GPUs) plans from NAME.onnx and
NAME.encoder.onnx. Plans run only on the GPU model and TensorRT version that built them: build on the target
machine. The network is strongly typed; --precision fp16/bf16 first converts the ONNX (ModelOpt AutoCast when
installed, else segflow's cast pass keeping norms, reductions and softmax in fp32).

  runtime build --onnx models/flowsdf-small-monuseg.onnx --out flowsdf.plan --precision fp16 --batch 1:16:64 \\
                --workspace 4G --timing-cache flowsdf.cache
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
    p.add_argument("--precision", default="fp16", choices=("fp32", "fp16", "bf16"),
                   help="network precision, taken from the (converted) ONNX graph (default: fp16)")
    p.add_argument("--batch", default="1:16:64",
                   help="MIN:OPT:MAX samples per field call, i.e. K x tiles (default: 1:16:64)")
    p.add_argument("--encoder-batch", default=None, help="MIN:OPT:MAX tiles per encoder call (default: --batch)")
    p.add_argument("--workspace", default="4G", help="workspace memory limit, e.g. 4G or 512M (default: 4G)")
    p.add_argument("--timing-cache", default=None, metavar="FILE",
                   help="timing cache to reuse and update (full TensorRT; kept per TensorRT version and GPU)")
    p.add_argument("--builder", default="auto", choices=("auto", "tensorrt", "tensorrt_rtx"),
                   help="library to build with (default: whichever is installed, full TensorRT first)")
    p.add_argument("--conversion", default="segflow", choices=("segflow", "modelopt", "auto"),
                   help="fp16/bf16 ONNX conversion: segflow's cast pass (default), NVIDIA ModelOpt AutoCast, or "
                        "auto (ModelOpt if installed, else segflow's)")
    p.add_argument("--compute-capability", default="", metavar="CC[,CC...]",
                   help="TensorRT-RTX target GPUs, e.g. 7.5 for Turing (default: the library's own targets)")


def parse_options(args: argparse.Namespace) -> dict:
    """Turn the parsed flags into :func:`segflow.runtime.engine.build_engine` keywords (one-sentence errors)."""
    from segflow.runtime.engine import parse_batch, parse_bytes

    try:
        batch = parse_batch(args.batch)
        encoder_batch = parse_batch(args.encoder_batch) if args.encoder_batch else None
    except ValueError as exc:
        raise InputError(f"--batch/--encoder-batch: {exc}.") from exc
    try:
        workspace = parse_bytes(args.workspace)
    except ValueError as exc:
        raise InputError(f"--workspace: {exc}.") from exc
    ccs = tuple(c.strip() for c in args.compute_capability.split(",") if c.strip())
    return {"precision": args.precision, "batch": batch, "encoder_batch": encoder_batch,
            "workspace_bytes": workspace, "timing_cache": args.timing_cache, "builder": args.builder,
            "conversion": args.conversion, "compute_capabilities": ccs}


_PLAN_ONLY = {"batch": "1:16:64", "encoder_batch": None, "workspace": "4G", "timing_cache": None,
              "builder": "auto", "compute_capability": ""}


def convert(args: argparse.Namespace) -> int:
    """``--out NAME.onnx``: write the converted ONNX pair and print the parity check."""
    from segflow.runtime.engine import convert_engine

    for name, default in _PLAN_ONLY.items():
        if getattr(args, name) != default:
            raise InputError(f"--{name.replace('_', '-')} applies to TensorRT plans, not to an .onnx --out "
                             f"{args.out}: drop it, or name a .plan to build plans.")
    t0 = time.perf_counter()
    res = convert_engine(args.onnx, args.out, precision=args.precision, conversion=args.conversion)
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
    result = build_engine(args.onnx, args.out, **opts)
    info = result.field_info
    gpu = f"{info.gpu_name} (compute {info.compute_capability})" if info.gpu_name else "no GPU (CPU-only build)"
    print(f"built {result.field} and {result.encoder} with {info.library} {info.trt_version}, {info.precision} "
          f"({info.conversion} conversion), batch {opts['batch'][0]}..{opts['batch'][2]}, on {gpu} in "
          f"{time.perf_counter() - t0:.1f} s; card {result.card}", file=sys.stdout)
    return 0
