"""Whole-slide benchmark: peak resident memory and wall time of ``runtime segment`` on a synthetic slide.

The slide (default 20k x 20k RGB, tiled pyramidal OME-TIFF) is written tile by tile from a 1024-pixel mosaic
of synthetic H&E nuclei, repeated, inside a round "tissue" area on white glass (~64 % tissue), so it is never
held in memory. Each configuration runs ``runtime segment`` in a child process; its peak RSS comes from
``wait4``. Reference in the same run: the whole-image path (the image read into memory and segmented at once)
on a flat TIFF of ``--ref-size``, next to the streaming path on the same pixels (ratios in the table).

Usage::

    python benchmarks/bench_wsi.py                       # 20k x 20k, default model (models/*.onnx), K=1
    python benchmarks/bench_wsi.py --size 4096 --ref-size 2048 --engine tiny   # quick check

Writes benchmarks/results/bench_wsi.json and prints a table. Target: peak RSS <= 2 GB at 20k x 20k.
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
import tifffile
from _common import default_engine

ROOT = Path(__file__).resolve().parents[1]
MOSAIC = 1024


def mosaic(seed: int = 0) -> np.ndarray:
    """A 1024 x 1024 RGB mosaic of four synthetic nuclei blocks (the slide repeats it)."""
    from segflow.synthetic import synthetic_nuclei

    half = MOSAIC // 2
    out = np.empty((MOSAIC, MOSAIC, 3), np.uint8)
    for k, (y, x) in enumerate([(0, 0), (0, half), (half, 0), (half, half)]):
        out[y:y + half, x:x + half] = synthetic_nuclei((half, half), n=200, radius=(5, 10), seed=seed + k)[0]
    return out


def _tiles(m: np.ndarray, size: int, scale: int, tile: int):
    n = -(-size // scale)
    c, r2 = size / 2, (0.45 * size) ** 2
    for y0 in range(0, n, tile):
        for x0 in range(0, n, tile):
            ys = np.arange(y0, min(n, y0 + tile)) * scale
            xs = np.arange(x0, min(n, x0 + tile)) * scale
            t = m[np.ix_(ys % MOSAIC, xs % MOSAIC)]
            glass = (ys[:, None] - c) ** 2 + (xs[None, :] - c) ** 2 > r2
            t[glass] = 242
            yield t


def write_slide(path: Path, size: int, m: np.ndarray, *, mpp: float = 0.5, tile: int = 512) -> None:
    """Tiled pyramidal OME-TIFF (levels halve down to <= 1024 px), written tile by tile."""
    levels = [1]
    while -(-size // levels[-1]) > 1024:
        levels.append(levels[-1] * 2)
    opts = {"tile": (tile, tile), "photometric": "rgb", "compression": "zlib", "dtype": np.uint8}
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tw:
        for i, s in enumerate(levels):
            n = -(-size // s)
            extra = {"subifds": len(levels) - 1, "metadata": {"axes": "YXS", "PhysicalSizeX": mpp,
                                                                "PhysicalSizeY": mpp}} if i == 0 else {"subfiletype": 1}
            tw.write(_tiles(m, size, s, tile), shape=(n, n, 3), **opts, **extra)


def tiny_engine(folder: Path, mpp: float) -> Path:
    """A tile-64 RGB test engine (box-blurred channel mean as the SDF) whose card asks for the slide's own pixel
    size ``mpp``, so it runs on level 0 like the default model (a mismatched card would run on a coarser level)."""
    sys.path.insert(0, str(ROOT / "tests" / "runtime"))
    from slide_helpers import make_engine

    return make_engine(folder, tile=64, blur=5, pixel_size_um=mpp)


def run(cmd: list[str]) -> dict:
    """Run a command; return wall time, peak RSS (MiB, from wait4) and exit status."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{err}")
    return {"wall_s": round(wall, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "stdout": out.strip()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=20000, help="slide side in pixels (default 20000)")
    ap.add_argument("--ref-size", type=int, default=2048, help="side of the whole-image reference (default 2048)")
    ap.add_argument("--engine", default=None, help="model (default: models/*.onnx; 'tiny' = the test engine)")
    ap.add_argument("--samples", type=int, default=1)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--block", type=int, default=2048)
    ap.add_argument("--mpp", type=float, default=0.25,
                    help="pixel size written into the slide (default 0.25, a 40x scan: the default model's own, so "
                         "level 0 is processed as is)")
    ap.add_argument("--instances", default=None, help="instance method (default: the runtime's, H-EMD)")
    ap.add_argument("--workdir", type=Path, default=None, help="where the slide is written (default: temp)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_wsi.json")
    a = ap.parse_args(argv)
    work = Path(a.workdir or tempfile.mkdtemp(prefix="bench_wsi."))
    work.mkdir(parents=True, exist_ok=True)
    engine = tiny_engine(work, a.mpp) if a.engine == "tiny" else Path(a.engine) if a.engine else default_engine()
    if engine is None:
        engine = tiny_engine(work, a.mpp)
    m = mosaic()
    t0 = time.perf_counter()
    slide = work / f"slide{a.size}.ome.tif"
    if a.workdir is not None and slide.exists():
        print(f"reusing {slide} (delete it to rewrite)", flush=True)
    else:
        write_slide(slide, a.size, m, mpp=a.mpp)
    write_s = time.perf_counter() - t0
    ref = work / f"flat{a.ref_size}.tif"
    tifffile.imwrite(ref, np.concatenate(list(_tiles(m, a.ref_size, 1, a.ref_size)), axis=0), photometric="rgb")
    ref_slide = work / f"slide{a.ref_size}.ome.tif"
    write_slide(ref_slide, a.ref_size, m, mpp=a.mpp)
    base = [sys.executable, "-m", "segflow.runtime.cli", "segment", "--engine", str(engine), "--samples",
            str(a.samples), "--steps", str(a.steps), "-q"] + (["--instances", a.instances] if a.instances else [])
    rows = []
    configs = [("whole image (reference)", a.ref_size, [str(ref), "--out", str(work / "o_ref")]),
               ("streaming, no tissue mask", a.ref_size, [str(ref_slide), "--out", str(work / "o_st"),
                                                          "--no-tissue", "--geojson", "--block", str(a.block)]),
               ("streaming, tissue mask", a.size, [str(slide), "--out", str(work / "o_big"), "--block",
                                                    str(a.block)])]
    for label, size, extra in configs:
        r = run(base + extra)
        stem = Path(extra[0]).name.split(".")[0]
        summary = json.loads((Path(extra[2]) / f"{stem}.json").read_text())
        n = summary["n_instances"] if "n_instances" in summary else summary["instances"]["count"]
        tiles = summary.get("tiles_run", summary.get("timings", {}).get("tiles"))
        rows.append({"config": label, "size": size, "wall_s": r["wall_s"], "peak_rss_mib": r["peak_rss_mib"],
                     "instances": n, "tiles_run": tiles,
                     "timings": {k: round(v, 1) for k, v in summary.get("timings", {}).items()
                                 if k in ("maps_s", "labels_s", "total_s")},
                     "mpx_per_s": round(size * size / 1e6 / r["wall_s"], 3)})
    ref_row, st_row = rows[0], rows[1]
    result = {"engine": str(engine), "samples": a.samples, "steps": a.steps, "block": a.block, "mpp": a.mpp,
              "instances": a.instances or "runtime default",
              "slide_write_s": round(write_s, 1), "rows": rows,
              "ratios_streaming_vs_whole": {"rss": round(st_row["peak_rss_mib"] / ref_row["peak_rss_mib"], 3),
                                            "wall": round(st_row["wall_s"] / ref_row["wall_s"], 3)},
              "target_peak_rss_mib": 2048, "meets_target": rows[2]["peak_rss_mib"] <= 2048,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "load_avg": os.getloadavg()}}
    print(f"engine {engine}  K={a.samples} steps={a.steps} block={a.block}  (slide written in {write_s:.1f} s)")
    print(f"{'config':28s} {'size':>7s} {'wall s':>8s} {'peak RSS MiB':>13s} {'Mpx/s':>7s} {'tiles':>7s} {'inst.':>7s}")
    for r in rows:
        print(f"{r['config']:28s} {r['size']:>7d} {r['wall_s']:>8.1f} {r['peak_rss_mib']:>13.1f} "
              f"{r['mpx_per_s']:>7.3f} {r['tiles_run']!s:>7s} {r['instances']!s:>7s}")
    print(f"streaming / whole at {a.ref_size}: RSS x{result['ratios_streaming_vs_whole']['rss']}, "
          f"wall x{result['ratios_streaming_vs_whole']['wall']}; target RSS <= 2048 MiB at {a.size}: "
          f"{'met' if result['meets_target'] else 'NOT met'}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
