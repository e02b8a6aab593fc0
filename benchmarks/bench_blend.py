"""Measure which overlap blend leaves no seams (seam ratio: mean jump across tile edges / elsewhere; 1 = none).

Two models: (1) an edge-effect model — a 5x5 box blur with zero padding, i.e. a conv net that lacks context at
tile borders — on a smooth random field; (2) the default model in models/ (mean SDF of K samples) on a real
image when present. Writes benchmarks/results/bench_blend.{json,md}.

Usage: python benchmarks/bench_blend.py [--engine models/X.onnx] [--size 384] [--samples 2]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from segflow.runtime.blend import BLENDS, Blender, seam_ratio
from segflow.runtime.tiling import extract_tile, plan_tiles

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def edge_model_ratios(size: int = 256, tile: int = 64, stride: int = 48) -> dict[str, float]:
    """Seam ratio of each blend for the zero-padded box blur, and of the untiled blur (the floor)."""
    img = ndi.gaussian_filter(np.random.default_rng(0).standard_normal((size, size)), 3) * 10
    plan = plan_tiles(img.shape, tile, stride)
    out = {}
    for mode in BLENDS:
        b = Blender(img.shape, 1, mode=mode)
        for t in plan:
            b.add(t, ndi.uniform_filter(extract_tile(img, t), 5, mode="constant")[None])
        out[mode] = seam_ratio(b.result()[0], plan)
    out["untiled"] = seam_ratio(ndi.uniform_filter(img, 5, mode="reflect"), plan)
    return out


def model_ratios(engine: Path, size: int, samples: int) -> dict[str, float]:
    """Seam ratio of the mean SDF for each blend with a real engine."""
    from bench_runtime import test_image
    from segflow.runtime.session import Segmenter

    out = {}
    for mode in BLENDS:
        with Segmenter(engine, samples=samples, blend=mode, backend="cpu") as seg:
            img = test_image(size, seg.card.in_channels)
            res = seg(img)
            out[mode] = seam_ratio(res.mean_sdf, plan_tiles(img.shape, seg.card.tile, seg.stride))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine", type=Path, default=None)
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--samples", type=int, default=2)
    args = ap.parse_args(argv)
    from bench_runtime import default_engine

    report = {"edge_effect_model": edge_model_ratios()}
    engine = args.engine or default_engine()
    if engine is not None:
        report["engine"] = str(engine)
        report["engine_mean_sdf"] = model_ratios(engine, args.size, args.samples)
    (ROOT / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "benchmarks" / "results" / "bench_blend.json").write_text(json.dumps(report, indent=2) + "\n")
    cols = [k for k in report if isinstance(report[k], dict)]
    lines = ["| blend | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for mode in [*BLENDS, "untiled"]:
        lines.append(f"| {mode} | " + " | ".join(f"{report[c].get(mode, float('nan')):.3f}" for c in cols) + " |")
    table = "\n".join(lines)
    (ROOT / "benchmarks" / "results" / "bench_blend.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
