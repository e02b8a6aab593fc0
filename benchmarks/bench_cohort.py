"""Cohort benchmark: slides per hour with `runtime batch` (Ray, 1 and 2 actors) next to a plain loop.

In one run, on the same synthetic slides and settings:

* plain loop — ``runtime segment`` run once per slide in a child process (what a shell loop does: the engine is
  loaded for every slide);
* cohort, 1 actor  — :func:`segflow.runtime.cohort.run_cohort` with one actor using every core;
* cohort, 2 actors — two actors sharing the cores (ONNX Runtime threads x actors <= cores);
* one big slide, 2 actors, whole vs split into region units (the unit-of-work rule for very large slides).

Reported per configuration: wall time, slides per hour and the ratio to the plain loop; for the cohorts the
*scheduling overhead per unit* = (wall x actors - sum of the units' own wall times) / units, which holds the
actor start (engine load), Ray dispatch, manifest writes and idle time at the end of the queue. Ray's own
start is timed separately (it is paid once per command). The closing extrapolation to N nodes uses the
measured per-slide time; a GPU per-slide time is used when benchmarks/results/bench_gpu.json records one.

Usage::

    python benchmarks/bench_cohort.py                  # 6 slides of 2048^2, default model, K=1, 2 steps
    python benchmarks/bench_cohort.py --slides 4 --size 1024 --big 2048   # quicker

Writes benchmarks/results/bench_cohort.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))


def _cohort(engine: Path, slides: list[Path], out: Path, workers: int, threads: int, seg: dict, slide: dict,
            region_blocks: int) -> dict:
    from segflow.runtime.cohort import CohortOptions, read_inputs, run_cohort

    opts = CohortOptions(segmenter=seg, slide=slide, workers=workers, threads=threads,
                         region_blocks=region_blocks)
    t0 = time.perf_counter()
    res = run_cohort(engine, read_inputs([str(p) for p in slides]), out, opts)
    wall = time.perf_counter() - t0
    if res.failed:
        raise SystemExit(f"cohort failed: {[r.get('reason') for r in res.records.values() if r.get('reason')]}")
    busy = sum(float(r["wall_s"]) for r in res.records.values())
    return {"wall_s": round(wall, 2), "units": res.ran, "busy_s": round(busy, 2),
            "overhead_per_unit_s": round((wall * workers - busy) / max(1, res.ran), 2),
            "instances": sum(int(r["n_instances"]) for r in res.records.values()),
            "parts": [r.get("parts", 1) for r in res.records.values()]}


def _loop(engine: Path, slides: list[Path], out: Path, seg: dict, threads: int) -> dict:
    t0 = time.perf_counter()
    n = 0
    for p in slides:
        cmd = [sys.executable, "-m", "segflow.runtime.cli", "segment", "--engine", str(engine), str(p), "--out",
               str(out), "--samples", str(seg["samples"]), "--steps", str(seg["steps"]), "--seed",
               str(seg["seed"]), "--threads", str(threads), "--quiet"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"runtime segment failed on {p}: {proc.stderr.strip()}")
        summary = json.loads(next(out.glob(p.name.split(".")[0] + "*.json")).read_text())
        n += summary["n_instances"] if "n_instances" in summary else summary["instances"]["count"]
    return {"wall_s": round(time.perf_counter() - t0, 2), "units": len(slides), "instances": n}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", type=Path, default=None, help="model (default: models/*.onnx)")
    ap.add_argument("--slides", type=int, default=6, help="slides in the cohort (default 6)")
    ap.add_argument("--size", type=int, default=2048, help="slide side in pixels (default 2048)")
    ap.add_argument("--big", type=int, default=4096, help="side of the one big slide (default 4096; 0 = skip)")
    ap.add_argument("--samples", type=int, default=1)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args(argv)

    from _common import default_engine
    from bench_wsi import mosaic, write_slide

    engine = args.engine or default_engine()
    if engine is None:
        raise SystemExit("no model under models/: pass --engine MODEL.onnx")
    cores = os.cpu_count() or 1
    seg = {"samples": args.samples, "steps": args.steps, "seed": 0}
    slide_opts: dict = {"block": 1024}
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-cohort-"))
    work.mkdir(parents=True, exist_ok=True)
    m = mosaic()
    slides = []
    for i in range(args.slides):
        p = work / f"slide{i}.ome.tif"
        write_slide(p, args.size, np.roll(m, (97 * i, 61 * i), axis=(0, 1)), mpp=0.25)
        slides.append(p)
    rows: list[dict] = []

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False, configure_logging=False,
             _node_ip_address="127.0.0.1")
    ray_start = time.perf_counter() - t0
    try:
        print(f"plain loop of runtime segment over {len(slides)} slides ...", flush=True)
        loop = _loop(engine, slides, work / "loop", seg, cores)
        rows.append({"config": "plain loop (runtime segment per slide)", "actors": 1, **loop})
        for actors in (1, 2):
            print(f"cohort, {actors} actor(s) ...", flush=True)
            r = _cohort(engine, slides, work / f"cohort{actors}", actors, max(1, cores // actors), seg,
                        slide_opts, 0)
            rows.append({"config": f"runtime batch, {actors} actor(s)", "actors": actors, **r})
        if args.big:
            big = work / "big.ome.tif"
            write_slide(big, args.big, m, mpp=0.25)
            for rb, label in ((0, "whole"), (max(1, (args.big // 1024) ** 2 // 4), "split into regions")):
                print(f"one {args.big}^2 slide, 2 actors, {label} ...", flush=True)
                r = _cohort(engine, [big], work / f"big-{rb}", 2, max(1, cores // 2), seg, slide_opts, rb)
                rows.append({"config": f"one {args.big}^2 slide, 2 actors, {label}", "actors": 2, **r})
    finally:
        ray.shutdown()

    base = rows[0]["wall_s"] / rows[0]["units"]
    for r in rows:
        r["slides_per_hour"] = round(r["units"] / r["wall_s"] * 3600, 1)  # units = slides (regions not counted)
        if not r["config"].startswith("one "):
            r["speedup_vs_loop"] = round(base / (r["wall_s"] / r["units"]), 2)
    big_rows = [r for r in rows if r["config"].startswith("one ")]
    per_slide = rows[2]["wall_s"] / rows[2]["units"]
    gpu_json = RESULTS / "bench_gpu.json"
    gpu_s = None
    if gpu_json.exists():
        gpu_s = json.loads(gpu_json.read_text()).get("per_slide_s")
    extrap = {
        "cpu_node_slides_per_hour": round(3600 / per_slide, 1),
        "formula": "slides/hour on N nodes with G GPUs each ~= N * G * 3600 / (t_gpu_slide + overhead_per_unit)",
        "overhead_per_unit_s": rows[2].get("overhead_per_unit_s"),
        "gpu_per_slide_s": gpu_s,
    }
    result = {
        "engine": str(engine), "slides": args.slides, "size": args.size, "samples": args.samples,
        "steps": args.steps, "cores": cores, "ray_start_s": round(ray_start, 2), "rows": rows,
        "big_slide_split_speedup": (round(big_rows[0]["wall_s"] / big_rows[1]["wall_s"], 2)
                                    if len(big_rows) == 2 else None),
        "extrapolation": extrap, "platform": platform.platform(), "python": platform.python_version(),
        "ray": ray.__version__,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_cohort.json").write_text(json.dumps(result, indent=2) + "\n")
    head = ("| configuration | actors | units | wall s | slides/h | vs loop | overhead/unit s |\n"
            "|---|---|---|---|---|---|---|")
    lines = [f"| {r['config']} | {r['actors']} | {r['units']} | {r['wall_s']} | {r['slides_per_hour']} | "
             f"{r.get('speedup_vs_loop', '')} | {r.get('overhead_per_unit_s', '')} |" for r in rows]
    text = (f"# Cohort benchmark ({args.slides} slides of {args.size}^2, K={args.samples}, {args.steps} steps, "
            f"{cores} cores, Ray {ray.__version__}; Ray start {ray_start:.1f} s)\n\n" + head + "\n"
            + "\n".join(lines) + "\n")
    (RESULTS / "bench_cohort.md").write_text(text)
    print(text)
    print(json.dumps(extrap, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
