"""``runtime solve``: probability/SDF maps (files, folders or multi-page TIFFs) to instance label TIFFs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from segflow.runtime.choices import MAP_KINDS, SOLVE_METHODS

HELP = "turn probability or SDF maps into instance label TIFFs (H-EMD, threshold, Otsu, watershed, MaxValue)"
DESCRIPTION = """\
Turn probability maps (or SDF maps, or 3-class maps) into instance labels, one label TIFF per input file.
A multi-page TIFF (T, H, W) is a 2D+time sequence (or a 3D stack's z-slices): with --method hemd its frames
are solved together by H-EMD. A folder of 2-D maps is solved image by image unless --sequence is given.
On single images --method hemd is the forest selection of --score (persistence by default).

examples:
  runtime solve probs/ --out labels/ --method hemd --sequence
  runtime solve movie_prob.tif --out labels/ --delta 0.35 --iterations 10
  runtime solve sdf.tif --kind sdf --method watershed --out labels/
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``runtime solve``."""
    p.add_argument("inputs", nargs="+", help="map files or folders (TIFF/PNG; multi-page TIFF = sequence)")
    p.add_argument("--out", required=True, help="output folder for the label TIFFs")
    p.add_argument("--kind", choices=MAP_KINDS, default="prob",
                   help="prob in [0,1] (uint8/uint16 are rescaled), sdf (negative inside) or 3-class maps")
    p.add_argument("--method", choices=SOLVE_METHODS, default="hemd")
    p.add_argument("--sequence", action="store_true", help="treat a folder's maps (sorted) as one sequence")
    p.add_argument("--score", default="persistence", choices=("persistence", "roots"),
                   help="single-image forest selection (method hemd on single images)")
    p.add_argument("--tau", type=float, default=0.5, help="lowest probability level of the forest")
    p.add_argument("--threshold", type=float, default=0.0, help="SDF mask level (kind sdf)")
    p.add_argument("--min-area", type=int, default=0, help="smallest instance kept, in pixels")
    p.add_argument("--connectivity", type=int, choices=(1, 2), default=1, help="1 = 4-, 2 = 8-neighbours")
    p.add_argument("--delta", type=float, default=0.35, help="H-EMD size-change gate")
    p.add_argument("--iou-gate", type=float, default=0.2, help="H-EMD minimum IoU of a match")
    p.add_argument("--match-bonus", type=float, default=0.1, help="H-EMD bonus per match")
    p.add_argument("--iterations", type=int, default=10, help="H-EMD iterations")
    p.add_argument("--solver", default="highs", choices=("highs", "pulp", "cbc"), help="ILP solver")
    p.add_argument("--time-limit", type=float, default=10.0, help="seconds per ILP before the greedy fallback")


# flag -> (test, what it asks for); checked before any map is read (NaN fails every test)
RANGES = {
    "tau": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "min_area": (lambda v: v >= 0, "of at least 0 pixels"),
    "delta": (lambda v: v >= 0, "of at least 0"),
    "iou_gate": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "match_bonus": (lambda v: v >= 0, "of at least 0"),
    "iterations": (lambda v: v >= 1, "of at least 1"),
    "time_limit": (lambda v: v > 0, "above 0 seconds"),
}


def check_ranges(args: argparse.Namespace) -> None:
    """One sentence naming the flag when a numeric option is outside its range."""
    from segflow.errors import InputError

    for name, (ok, want) in RANGES.items():
        value = getattr(args, name)
        if not ok(value):
            raise InputError(f"--{name.replace('_', '-')} {value} is out of range: use a value {want}.")


def run(args: argparse.Namespace) -> int:
    """Solve every input and write ``OUT/<name>.tif``; exit 2 with one sentence on unusable input."""
    from segflow.solvers.cli import load_maps, solve_stack, write_labels

    check_ranges(args)
    maps = load_maps(args.inputs)
    sequence_folder = args.sequence and len(maps) > 1
    hemd_opts = {"tau": args.tau, "delta": args.delta, "iou_gate": args.iou_gate, "match_bonus": args.match_bonus,
                 "iterations": args.iterations, "solver": args.solver, "time_limit": args.time_limit,
                 "min_area": args.min_area, "connectivity": args.connectivity}
    opts = {"min_area": args.min_area, "connectivity": args.connectivity}
    if args.kind == "sdf":
        opts["threshold"] = args.threshold
        if args.method not in ("hemd", "watershed", "threshold"):
            from segflow.errors import InputError

            raise InputError(f"method {args.method} does not take SDF maps: use hemd, watershed or threshold.")
    elif args.method in ("hemd", "threshold") and args.kind == "prob":
        opts["tau" if args.method == "hemd" else "threshold"] = args.tau
    if args.method == "hemd" and args.kind != "classes":
        opts["score"] = args.score
    out = Path(args.out)
    if sequence_folder:
        import numpy as np

        stack = np.stack([m.data for m in maps])
        labels = solve_stack(stack, maps[0].path, kind=args.kind, method=args.method, sequence=True,
                             hemd_opts=hemd_opts, opts=opts)
        for m, lab in zip(maps, labels, strict=True):
            write_labels(out / f"{m.path.stem}.tif", lab)
    else:
        for m in maps:
            labels = solve_stack(m.data, m.path, kind=args.kind, method=args.method, sequence=True,
                                 hemd_opts=hemd_opts, opts=opts)
            write_labels(out / f"{m.path.stem}.tif", labels)
    print(f"runtime solve: wrote {len(maps)} label file(s) to {out}", file=sys.stderr)
    return 0
