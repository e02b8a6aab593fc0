"""``runtime info``: print an engine's model card and its graphs' inputs and outputs."""

from __future__ import annotations

import argparse
import json

HELP = "print a model's card and the inputs/outputs of its field and encoder graphs"
DESCRIPTION = """\
Print what an engine is: its model card (kind, tile, channels, normalisation, SDF delta, threshold, training
data, licence, provenance) and the inputs and outputs of both graphs (? = dynamic dimension). For TensorRT
plans it prints their build records instead (library and version, precision, GPU, optimisation profiles),
read from NAME.plan.json without loading the plans, so it works on any machine, and for TensorRT-RTX plans
the runtime cache file that keeps their just-in-time compiled kernels between runs.

examples:
  runtime info --engine models/flowsdf-small-monuseg.onnx
  runtime info --engine flowsdf.plan
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``runtime info``."""
    p.add_argument("--engine", required=True, help="exported model (.onnx or .plan)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _plans(engine) -> dict[str, dict]:
    """Build records of a plan pair (read from the sidecars, so this works without a GPU or TensorRT)."""
    import dataclasses

    from segflow.runtime.backends.tensorrt import runtime_cache_path
    from segflow.runtime.trtlib import PlanInfo

    out = {}
    for role, path in (("field", engine.field), ("encoder", engine.encoder)):  # resolve_engine checked both exist
        info = PlanInfo.read(path)
        out[role] = {"path": str(path), "bytes": path.stat().st_size, "build": dataclasses.asdict(info)}
        if info.library == "tensorrt_rtx":
            cache = runtime_cache_path(path)
            out[role]["runtime_cache"] = {"path": str(cache),
                                          "bytes": cache.stat().st_size if cache.is_file() else None}
    return out


def _graphs(engine) -> dict[str, dict]:
    from segflow.runtime.backends import open_backend

    if engine.format == "plan":
        return _plans(engine)
    out = {}
    for role, path in (("field", engine.field), ("encoder", engine.encoder)):
        with open_backend(path, "onnxrt", device="cpu", threads=1) as b:
            out[role] = {"path": str(path), "bytes": path.stat().st_size,
                         "inputs": [m.describe() for m in b.input_metadata().values()],
                         "outputs": [m.describe() for m in b.output_metadata().values()]}
    return out


def run(args: argparse.Namespace) -> int:
    """Print the card and graph signatures; exit 2 with one sentence if the engine is unusable."""
    from segflow.runtime.sampling import flowsdf_nfe

    from segflow.card import load_card, resolve_engine

    engine = resolve_engine(args.engine)
    card = load_card(engine)
    graphs = _graphs(engine)
    if args.json:
        print(json.dumps({"card": card.to_dict(), "graphs": graphs, "format": engine.format}, indent=2))
        return 0
    s = card.sampling
    print(f"engine   {engine.field} ({engine.format})")
    print(f"kind     {card.kind}  preset {card.preset}  tile {card.tile}  channels {card.in_channels}  "
          f"features {card.feature_channels}")
    if card.kind == "flowsdf":
        print(f"defaults samples {s.get('samples')}  steps {s.get('steps')}  method {s.get('method')}  "
              f"(NFE {flowsdf_nfe(s.get('method', 'euler'), int(s.get('steps', 4)))} per sample)")
    print("card:")
    print("  " + json.dumps(card.to_dict(), indent=2, sort_keys=True).replace("\n", "\n  "))
    for role, g in graphs.items():
        print(f"{role} graph {g['path']} ({g['bytes'] / 1e6:.2f} MB)")
        if "build" in g:
            b = g["build"]
            gpu = f"{b['gpu_name']} (compute {b['compute_capability']})" if b["gpu_name"] else "no GPU (ahead of time)"
            targets = f", runs on compute {', '.join(b['target_compute_capabilities'])}" \
                if b["target_compute_capabilities"] else ""
            if not targets and b["library"] == "tensorrt_rtx":
                from segflow.runtime.trtlib import RTX_DEFAULT_TARGETS

                targets = f", runs on compute {', '.join(RTX_DEFAULT_TARGETS)} and above {RTX_DEFAULT_TARGETS[-1]} " \
                    "(TensorRT-RTX's defaults)"
            if b.get("hardware_compatibility") == "ampere+":
                targets += ", runs on Ampere and later GPUs (compute 8.0+)"
            elif b.get("hardware_compatibility") == "same-cc":
                targets += f", runs on GPUs of compute {b['compute_capability']}"
            if b.get("version_compatible"):
                targets += (f", version-compatible (TensorRT {b['trt_version']} and later versions of that major "
                            f"release or the next, or the lean runtime {b['trt_version']})")
            print(f"  built with {b['library']} {b['trt_version']}, {b['precision']}, on {gpu}{targets}, "
                  f"from {b['onnx']}")
            for name, (lo, opt, hi) in sorted(b["profiles"].items()):
                print(f"  profile {name}: min {lo}  opt {opt}  max {hi}")
        if "runtime_cache" in g:
            c = g["runtime_cache"]
            held = f"{c['bytes'] / 1e3:.1f} kB" if c["bytes"] is not None else \
                "not written yet: the first run compiles the kernels"
            print(f"  runtime cache {c['path']} ({held})")
        for name in ("inputs", "outputs"):
            for d in g.get(name, ()):
                print(f"  {name[:-1]:7s} {d}")
    return 0
