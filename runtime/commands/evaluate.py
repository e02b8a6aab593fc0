"""``runtime evaluate``: compare predicted label images with ground truth and print the metric table."""

from __future__ import annotations

import argparse
import json
import math

HELP = "compare predicted instance labels with ground truth (Dice, IoU, F1, AJI, AJI+, PQ, CTC SEG/DET)"
DESCRIPTION = """\
Compare predicted instance label images with ground truth. PRED and GT are label files, folders of them or
multi-page TIFFs; files are paired by name (else in sorted order when the counts agree). A `runtime segment`
output folder works as PRED as it is: its NAME_labels.tif files are read (the maps beside them are not) and
pair with GT files named NAME. Prints per-image means and pooled values; --json writes everything, per-image
rows included ("-" prints JSON instead).

examples:
  runtime evaluate --pred results/ --gt ground_truth/          # results/ from runtime segment
  runtime evaluate --pred labels/ --gt ground_truth/
  runtime evaluate --pred movie_labels.tif --gt movie_gt.tif --json metrics.json
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``runtime evaluate``."""
    p.add_argument("--pred", required=True, help="predicted label file or folder")
    p.add_argument("--gt", required=True, help="ground-truth label file or folder")
    p.add_argument("--json", default=None, help="write the full result as JSON to this path ('-' = stdout)")


def _fmt(v) -> str:
    return "" if v == "" else ("n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}")


def format_table(result: dict) -> str:
    """The metric table as text: one row per metric, per-image mean and pooled value."""
    lines = [f"{'metric':<10} {'mean':>8} {'pooled':>8}   ({result['n_images']} images)"]
    for k, v in result["mean"].items():
        lines.append(f"{k:<10} {_fmt(v):>8} {_fmt(result['pooled'].get(k, '')):>8}")
    return "\n".join(lines)


def _finite(obj):
    """NaN (CTC measures on an empty ground truth) becomes null so the JSON stays standard."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return None if isinstance(obj, float) and math.isnan(obj) else obj


def run(args: argparse.Namespace) -> int:
    """Evaluate and print; exit 2 with one sentence if the files cannot be paired or read."""
    from segflow.solvers.cli import pair_labels, read_labels
    from segflow.solvers.metrics import evaluate

    from segflow.imageio import write_json

    pairs = pair_labels(read_labels(args.pred, suffix="_labels"), read_labels(args.gt, suffix="_labels"))
    result = evaluate([p for _, p, _ in pairs], [g for _, _, g in pairs])
    result["names"] = [n for n, _, _ in pairs]
    result = _finite(result)
    if args.json == "-":
        print(json.dumps(result, indent=2))
        return 0
    print(format_table(result))
    if args.json:
        write_json(args.json, result)
    return 0
