"""Benchmark: `runtime segment` (ONNX Runtime, encoder once per tile) vs a reference-style PyTorch sampler.

Both run in the same process on the same tiles with the same K, NFE and tile size:

* runtime   — :class:`segflow.runtime.session.Segmenter` (the code behind `runtime segment`): encoder once per
              tile, features reused by every step and sample, K samples x tiles batched.
* reference — PyTorch eager as the FlowSDF reference code samples: per tile, K samples in one batch, the full
              model (image encoder included) evaluated at every Euler step.

Reported: per-tile and per-megapixel latency of both and their ratio (target >= 4x), plus the wall time of the
default model on a 1000x1000 image at K=1, 4 NFE (target <= 30 s), in-process and as a `runtime segment`
subprocess. Warm-up runs are discarded. Writes benchmarks/results/bench_runtime.{json,md}.

Usage::

    python benchmarks/bench_runtime.py                       # default model in models/ if present, else random lite
    python benchmarks/bench_runtime.py --engine models/X.onnx --checkpoint models/X.pt
    python benchmarks/bench_runtime.py --quick               # small image, few reference tiles (smoke run)
    python benchmarks/bench_runtime.py --random-lite         # the `lite` preset (random weights), per tile only

Without ``--checkpoint`` the reference is a randomly initialised network of the engine's own architecture
(timings do not depend on the weights): the card's recorded ``net``, its preset or a configs/*.toml training
config's network, whichever matches the graphs' weight names and shapes (the run stops if none does). Without
``--engine`` a random `lite` model is exported.
``--random-lite`` always does that and writes benchmarks/results/bench_runtime_lite.{json,md} (no 1000 px run,
which is about the default model).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import default_engine, export_random

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def test_image(size: int, channels: int) -> np.ndarray:
    """A 1000x1000 MoNuSeg image cropped/tiled to ``size`` if the data is here, else a synthetic H&E-like one."""
    import cv2

    tifs = sorted((ROOT.parent / "shared" / "data" / "monuseg").rglob("*.tif"))
    imgs = [p for p in tifs if "label" not in str(p).lower() and "mask" not in str(p).lower()]
    if imgs:
        from segflow.imageio import read_image

        img = read_image(imgs[0])
        reps = (-(-size // img.shape[0]), -(-size // img.shape[1])) + (1,) * (img.ndim - 2)
        img = np.tile(img, reps)[:size, :size]
    else:
        rng = np.random.default_rng(0)
        img = np.full((size, size, 3), 230, np.uint8)
        for _ in range(size * size // 900):
            y, x = rng.integers(0, size, 2)
            cv2.circle(img, (int(x), int(y)), int(rng.integers(4, 9)), (90, 50, 140), -1)
    from segflow.normalize import as_channels

    return as_channels(img, channels)


def graph_parameters(paths) -> tuple[dict[str, tuple[int, ...]], int]:
    """Shapes of the engine's weights that keep their PyTorch names (``field.down.0.0.…``; encoder names prefixed
    ``encoder.``) and the total count of all its stored weights.

    Exporters rename or fold some tensors (TorchScript: GroupNorm affines as ``onnx::Mul_N``; dynamo: constants as
    ``val_N``); those count in the total only.
    """
    import onnx

    shapes, total = {}, 0
    for path, prefix in ((paths.field, ""), (paths.encoder, "encoder.")):
        for init in onnx.load(str(path), load_external_data=False).graph.initializer:
            total += int(np.prod(init.dims))
            if "." in init.name and not init.name.startswith("onnx::"):
                shapes[prefix + init.name] = tuple(init.dims)
    return shapes, total


def reference_config(card, paths):
    """The engine's network architecture, checked against its graphs.

    Candidates, in order: the card's recorded ``extra["net"]`` (written by every export since the architecture
    was recorded), the card's preset, and the networks of the training configs in configs/*.toml. The first
    that matches the ONNX weights both ways is returned: every named graph weight is one of its parameters with
    the same shape, and every one of its matrix and kernel weights (2-D or more, not zero-initialised) is in the
    graph with the same shape. So the reference never times a different network than the runtime runs.
    """
    from segflow.trainer.config import load_config
    from segflow.trainer.nets import NetConfig, SegModel

    def from_config(toml: Path) -> NetConfig:  # the network `trainer train --config TOML` builds
        cfg = load_config(toml)
        return NetConfig.from_name(cfg.preset, **{**cfg.net, "in_channels": card.in_channels})

    candidates = []  # (where it came from, how to build its NetConfig)
    if isinstance(card.extra.get("net"), dict):
        candidates.append(("card extra.net", lambda: NetConfig.from_dict(card.extra["net"], source="card")))
    if card.preset in ("lite", "paper"):
        candidates.append((f"preset {card.preset}", lambda: NetConfig.from_name(
            card.preset, in_channels=card.in_channels, base=card.feature_channels)))
    candidates += [(str(toml.relative_to(ROOT)), functools.partial(from_config, toml))
                   for toml in sorted((ROOT / "configs").glob("*.toml"))]
    shapes, total = graph_parameters(paths)
    for source, make in candidates:
        try:
            cfg = make()
            sd = SegModel(cfg).state_dict()
        except Exception:  # noqa: BLE001 - a candidate that cannot even be built does not match
            continue
        # kernels of layers a fresh network starts at zero (zero_module) are left out: in an untrained engine
        # the dynamo exporter folds them away
        kernels = {k: tuple(v.shape) for k, v in sd.items() if v.dim() >= 2 and bool(v.any())}
        if (all(k in sd and tuple(sd[k].shape) == v for k, v in shapes.items())
                and all(shapes.get(k) == v for k, v in kernels.items())):
            return source, cfg
    sys.exit(f"no known network architecture matches {paths.field} ({total} weights): pass --checkpoint with "
             "the checkpoint it was exported from.")


def build_reference(card, paths, checkpoint: str | None):
    """A PyTorch SegModel with the engine's architecture (weights from ``checkpoint`` if given, else random:
    timings do not depend on the weights). Returns (model, where the architecture came from)."""
    import torch

    if checkpoint:
        from segflow.export.checkpoint import model_from_checkpoint

        model = model_from_checkpoint(checkpoint)
        model, source = (model[0] if isinstance(model, tuple) else model), checkpoint
    else:
        from segflow.trainer.nets import SegModel

        source, cfg = reference_config(card, paths)
        torch.manual_seed(0)
        model = SegModel(cfg)
    return model.float().eval(), source


def export_random_lite(tmp: Path, tile: int) -> Path:
    """Export a random `lite` model (tile ``tile``) to ``tmp`` and return its field graph."""
    from segflow.trainer.nets import NetConfig

    export_random(NetConfig.from_name("lite", in_channels=3), tile, tmp / "random-lite.onnx")
    return tmp / "random-lite.onnx"


def reference_tiles(model, image: np.ndarray, card, plan, *, samples: int, steps: int,
                    threads: int) -> tuple[float, float]:
    """Seconds per tile of the reference-style sampler over ``plan`` (Euler, encoder recomputed every step),
    measured and as a steady-CPU estimate (median model call x calls)."""
    import torch
    from segflow.runtime.tiling import extract_tile

    from segflow.normalize import apply_norm, norm_stats

    torch.set_num_threads(threads)
    stats = norm_stats(image, card.normalisation)

    def one(tile) -> None:
        win = np.moveaxis(apply_norm(extract_tile(image, tile), stats), -1, 0)[None]
        img = torch.from_numpy(np.ascontiguousarray(win)).repeat(samples, 1, 1, 1)
        x = torch.randn(samples, 1, card.tile, card.tile)
        with torch.no_grad():
            for i in range(steps):
                t = torch.full((samples,), i / steps)
                c0 = time.perf_counter()
                v = model(x, t, img)
                calls.append((time.perf_counter() - c0, samples))
                x = x + (1.0 / steps) * v

    calls: list[tuple[float, int]] = []
    one(plan[0])  # warm-up, discarded
    calls.clear()
    t0 = time.perf_counter()
    for tile in plan:
        one(tile)
    return (time.perf_counter() - t0) / len(plan), steady_estimate(calls) / len(plan)


def steady_estimate(calls: list[tuple[float, int]]) -> float:
    """Seconds the calls would take with every call at the median per-item speed: median(dt / n) x sum(n).

    On an oversubscribed VM a few calls stall for up to a second; this is the time without the stalls.
    """
    if not calls:
        return 0.0
    per = np.array([dt / n for dt, n in calls])
    return float(np.median(per) * sum(n for _, n in calls))


def _timed(backend, log: list) -> None:
    """Record (seconds, batch) of every ``infer`` call of ``backend``."""
    inner = backend.infer

    def infer(feed, **kw):
        t0 = time.perf_counter()
        out = inner(feed, **kw)
        log.append((time.perf_counter() - t0, len(next(iter(feed.values())))))
        return out

    backend.infer = infer


def runtime_run(engine: Path, image: np.ndarray, *, samples: int, steps: int, stride: int | None, threads: int,
                tile_workers: int | None = None):
    """One warm-up and one timed Segmenter call.

    Returns (Segmentation, wall seconds, stride, batch, steady-CPU estimate of the sampling wall seconds). The
    estimate divides the calls' steady time by the tile workers, which run their calls side by side.
    """
    from segflow.runtime.session import Segmenter

    with Segmenter(engine, samples=samples, steps=steps, method="euler", stride=stride, threads=threads,
                   tile_workers=tile_workers, backend="cpu") as seg:
        seg(image[:seg.card.tile, :seg.card.tile])  # warm-up, discarded
        enc, fld = [], []
        _timed(seg._encoder, enc)
        _timed(seg._field, fld)
        t0 = time.perf_counter()
        res = seg(image)
        wall = time.perf_counter() - t0
        steady = (steady_estimate(enc) + steady_estimate(fld)) / seg.tile_workers
        return res, wall, seg.stride, seg.settings.batch, steady


def machine_probe(seconds: float = 3.0) -> dict:
    """How steady this CPU is: a fixed ~1 ms numpy workload repeated for ``seconds``.

    On a dedicated machine the max is within a few x of the median; on an oversubscribed VM single runs stall
    for hundreds of milliseconds, and every timing below inherits those stalls (mean / median >> 1).
    """
    a = np.random.default_rng(0).random((320, 320))
    times, t_end = [], time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        a @ a
        times.append(time.perf_counter() - t0)
    t = np.array(times[1:]) * 1e3
    probe = {"runs": int(t.size), "median_ms": float(np.median(t)), "p99_ms": float(np.percentile(t, 99)),
             "max_ms": float(t.max()), "mean_over_median": float(t.mean() / np.median(t))}
    try:
        probe["cpu_pressure"] = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except OSError:
        pass
    return probe


def cli_wall(engine: Path, image: np.ndarray, tmp: Path, *, samples: int, steps: int) -> float:
    """Wall time of a fresh `runtime segment` process (start-up, model load, outputs included)."""
    import tifffile

    path = tmp / "bench_1000.tif"
    tifffile.imwrite(path, image)
    cmd = [sys.executable, "-m", "segflow.runtime.cli", "segment", "--engine", str(engine), str(path), "--out",
           str(tmp / "out"), "--samples", str(samples), "--steps", str(steps), "--method", "euler", "-q"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine", type=Path, default=None)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--size", type=int, default=512, help="image side for the runtime/reference comparison")
    ap.add_argument("--ref-tiles", type=int, default=6, help="tiles timed for the (slow) reference")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=2, help="1000 px runs per configuration, alternated (default 2)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 256 px image, 2 reference tiles, no 1000 px")
    ap.add_argument("--random-lite", action="store_true",
                    help="compare on a random `lite` model (tile 128) instead of the default; writes *_lite.*")
    args = ap.parse_args(argv)

    from segflow.runtime.backends.onnxrt import physical_cores
    from segflow.runtime.tiling import plan_tiles

    from segflow.card import load_card, resolve_engine

    threads = args.threads or physical_cores()
    size, ref_tiles = (256, 2) if args.quick else (args.size, args.ref_tiles)
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        engine = None if args.random_lite else args.engine or default_engine()
        shipped = engine is not None
        if not shipped:
            engine = export_random_lite(tmp, 128)
        paths = resolve_engine(engine)
        card = load_card(paths)
        image = test_image(max(size, 1000), card.in_channels)
        crop = image[:size, :size]
        probe_before = machine_probe()
        res, wall, stride, batch, rt_steady = runtime_run(engine, crop, samples=args.samples, steps=args.steps,
                                                          stride=None, threads=threads)
        plan = plan_tiles(crop.shape, card.tile, stride)
        rt_tile = res.timings["sampling_s"] / len(plan)
        model, arch = build_reference(card, paths, args.checkpoint)
        rt_steady_tile = rt_steady / len(plan)
        ref_tile, ref_steady_tile = reference_tiles(model, crop, card, plan[:ref_tiles], samples=args.samples,
                                                    steps=args.steps, threads=threads)
        mpx = size * size / 1e6
        rows = {
            "image": f"{size}x{size}", "tiles": len(plan), "tile": card.tile, "stride": stride,
            "samples": args.samples, "nfe": res.nfe, "threads": threads, "batch": batch, "reference_network": arch,
            "runtime_s_per_tile": rt_tile, "reference_s_per_tile": ref_tile, "speedup": ref_tile / rt_tile,
            "runtime_s_per_mpx_sampling": rt_tile * len(plan) / mpx,
            "reference_s_per_mpx_sampling": ref_tile * len(plan) / mpx,
            "runtime_s_per_mpx_total": wall / mpx, "runtime_total_s": wall,
            "runtime_timings": res.timings,
            "steady_estimate": {"runtime_s_per_tile": rt_steady_tile, "reference_s_per_tile": ref_steady_tile,
                                "speedup": ref_steady_tile / rt_steady_tile,
                                "method": "median seconds per item of each model call x items"},
        }
        default = {}
        if shipped and not args.quick:
            big = image[:1000, :1000]
            runs: dict[str, list] = {"default": [], "one_worker": []}
            for _ in range(args.repeats):  # alternated, so both see the same machine
                for key, workers in (("default", None), ("one_worker", 1)):
                    r, w, _, _, st = runtime_run(engine, big, samples=1, steps=4, stride=None, threads=threads,
                                                 tile_workers=workers)
                    runs[key].append({"wall_s": w, "steady_total_s": w - r.timings["sampling_s"] + st,
                                      "tile_workers": r.backend["tile_workers"], "threads_per_call":
                                      r.backend["threads"], "instances": r.n_instances, "timings": r.timings})
            walls = {k: [x["wall_s"] for x in v] for k, v in runs.items()}
            default = {"image": "1000x1000", "samples": 1, "nfe": r.nfe, "target_s": 30.0,
                       "in_process_s": float(np.median(walls["default"])), "in_process_min_s": min(walls["default"]),
                       "one_worker_s": float(np.median(walls["one_worker"])),
                       "workers_speedup": float(np.median(walls["one_worker"]) / np.median(walls["default"])),
                       "steady_total_s": float(np.median([x["steady_total_s"] for x in runs["default"]])),
                       "one_worker_steady_total_s": float(np.median([x["steady_total_s"] for x in runs["one_worker"]])),
                       "cli_wall_s": cli_wall(engine, big, tmp, samples=1, steps=4), "runs": runs}
    report = {"engine": str(engine) if shipped else "random lite (exported for the benchmark)",
              "card": {k: card.to_dict()[k] for k in ("kind", "preset", "tile", "in_channels", "feature_channels")},
              "machine": {"python": platform.python_version(), "processor": platform.processor(),
                          "cores": physical_cores(), "load_avg": os.getloadavg(),
                          "probe_before": probe_before, "probe_after": machine_probe()},
              "comparison": rows, "default_model_1000px": default, "target_speedup": 4.0}
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "bench_runtime_lite" if args.random_lite else "bench_runtime"
    (RESULTS / f"{stem}.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    lines = ["| measure | runtime (ORT, encoder once) | reference (torch eager) | ratio |", "|---|---|---|---|",
             f"| s per tile ({card.tile}², K={args.samples}, NFE={res.nfe}) | {rt_tile:.3f} | {ref_tile:.3f} | "
             f"{ref_tile / rt_tile:.1f}x |",
             f"| s per Mpx, sampling ({rows['image']}, stride {stride}) | {rows['runtime_s_per_mpx_sampling']:.2f} | "
             f"{rows['reference_s_per_mpx_sampling']:.2f} | {ref_tile / rt_tile:.1f}x |",
             f"| s per Mpx, whole `segment` call | {rows['runtime_s_per_mpx_total']:.2f} | | |",
             f"| s per tile, steady-CPU estimate (median call x calls) | {rt_steady_tile:.3f} | "
             f"{ref_steady_tile:.3f} | {ref_steady_tile / rt_steady_tile:.1f}x |"]
    if default:
        lines.append(f"| default model, 1000x1000, K=1, NFE={default['nfe']}: in-process (median of "
                     f"{args.repeats}; best) / CLI wall (s) | {default['in_process_s']:.1f} "
                     f"({default['in_process_min_s']:.1f}) / {default['cli_wall_s']:.1f} | | target <= 30 |")
        d0 = default["runs"]["default"][0]
        lines.append(f"| same with one tile worker of {threads} threads per call instead of {d0['tile_workers']} "
                     f"workers x {d0['threads_per_call']} (s; ratio = gain of the workers) | "
                     f"{default['one_worker_s']:.1f} | | {default['workers_speedup']:.2f}x |")
        lines.append(f"| default model, 1000x1000, K=1: in-process wall with model calls at the steady-CPU estimate "
                     f"(s), tile workers / one worker | {default['steady_total_s']:.1f} / "
                     f"{default['one_worker_steady_total_s']:.1f} | | target <= 30 |")
    pb, pa = report["machine"]["probe_before"], report["machine"]["probe_after"]
    lines.append("")
    lines.append(f"CPU steadiness probe (1 ms matmul, repeated 3 s) before / after: median {pb['median_ms']:.2f} / "
                 f"{pa['median_ms']:.2f} ms, max {pb['max_ms']:.0f} / {pa['max_ms']:.0f} ms, mean/median "
                 f"{pb['mean_over_median']:.1f} / {pa['mean_over_median']:.1f}; field batch {batch} samples per call.")
    table = "\n".join(lines)
    checked = "" if args.checkpoint else " (checked against the graphs' weights)"
    (RESULTS / f"{stem}.md").write_text(f"engine: {report['engine']}; reference network: {arch}{checked}\n\n{table}\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
