"""``runtime batch``: segment a cohort of images and slides on Ray (local by default, or a cluster)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from segflow.errors import InputError

HELP = "segment a cohort of slides on Ray: resumable, failures isolated, one engine load per worker"
DESCRIPTION = """\
Segment many images or slides with one command. Work is spread over Ray actors that each load the engine
once (one per GPU; on CPU, workers x threads <= cores). The state of every slide is kept in OUT/cohort.json:
rerunning the same command skips what is done with the same model and settings and retries what failed.
A corrupt slide or a worker that dies marks only that slide failed; the cohort completes.
A very large slide is split into region units (--region-blocks) so that idle workers share it; the regions
join with the same seam rules as `runtime segment`, so the outputs do not depend on the split.

Without --address (or RAY_ADDRESS), a local Ray is started for the run and stopped afterwards.
Ray is optional: pip install "ray>=2.9" (or pip install -e ".[cluster]" in the segflow checkout).

examples:
  runtime batch --engine models/flowsdf-small-monuseg.onnx slides/ --out cohort-out/
  runtime batch --engine models/flowsdf-small-monuseg.onnx --manifest cohort.csv --out cohort-out/ --workers 2
  runtime batch --engine flowsdf.plan --manifest cohort.csv --out /shared/out --address head-node:6379
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``runtime batch``."""
    p.add_argument("inputs", nargs="*", metavar="SLIDE", help="image or slide files, or folders of them")
    p.add_argument("--manifest", type=Path, default=None, help="CSV with a 'path' column (optional 'id')")
    p.add_argument("--engine", required=True, help="exported model (.onnx or .plan; the encoder graph beside it)")
    p.add_argument("--out", required=True, type=Path, help="output folder, shared by all workers")
    p.add_argument("--address", default=None, help="HOST:PORT of an existing Ray cluster (default: RAY_ADDRESS, "
                                                  "else a local Ray for this run)")
    p.add_argument("--workers", type=int, default=None, help="actors (default: one per GPU, else cores/threads)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads per CPU actor")
    p.add_argument("--max-retries", type=int, default=2, help="retries of a unit whose worker died (default 2)")
    p.add_argument("--samples", "-k", type=int, default=None, help="K samples per tile (default: model card)")
    p.add_argument("--steps", "-n", type=int, default=None, help="integration steps (default: model card)")
    p.add_argument("--method", default=None, help="integrator euler|heun|rk4 (default: model card)")
    p.add_argument("--stride", type=int, default=None, help="tile stride in pixels (default: 3/4 of the tile)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--instances", default=None, help="instance method (hemd, watershed, threshold)")
    p.add_argument("--min-confidence", default=None, metavar="FLOAT|adaptive",
                   help="drop instances whose K-sample confidence is below FLOAT, or below the per-image (per-slide) "
                        "adaptive threshold min(mean + std, 0.9); as in `runtime segment` (default: keep all)")
    p.add_argument("--level", type=int, default=None, help="slides: pyramid level to process")
    p.add_argument("--mpp", type=float, default=None, help="slides: target microns per pixel")
    p.add_argument("--no-tissue", action="store_true", help="slides: do not skip empty glass")
    p.add_argument("--block", type=int, default=None, help="slides: processing block side in pixels (default 2048)")
    p.add_argument("--region-blocks", type=int, default=16,
                   help="slides with more blocks than this are split into region units of about this many "
                        "blocks, shared by the workers and joined without seams (default 16; 0 = never split)")
    bar = p.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None, help="always show progress")
    bar.add_argument("--quiet", "-q", dest="progress", action="store_false", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run the cohort; exit 0 when every slide is done, 1 when some failed, 2 on a usage error."""
    from segflow.runtime.cohort import CohortOptions, read_inputs, run_cohort, summary_json
    from segflow.runtime.confidence import parse_min_confidence

    from segflow.imageio import write_json
    from segflow.progress import Progress

    if not args.inputs and args.manifest is None:
        raise InputError("no slides given: pass slide paths or folders, or --manifest cohort.csv.")
    try:
        min_conf = parse_min_confidence(args.min_confidence)
    except ValueError as exc:
        raise InputError(f"{exc}: pass e.g. --min-confidence 0.5 or --min-confidence adaptive.") from None
    items = read_inputs(args.inputs, args.manifest)
    seg = {k: v for k, v in {"samples": args.samples, "steps": args.steps, "method": args.method,
                             "stride": args.stride, "seed": args.seed, "instances": args.instances}.items()
           if v is not None}
    slide = {k: v for k, v in {"level": args.level, "mpp": args.mpp, "block": args.block,
                               "min_confidence": min_conf}.items() if v is not None}
    if args.no_tissue:
        slide["tissue"] = False
    opts = CohortOptions(segmenter=seg, slide=slide, workers=args.workers, threads=args.threads,
                         max_retries=args.max_retries, address=args.address, region_blocks=args.region_blocks)
    bar = Progress(total=len(items), desc="cohort", enabled=args.progress, unit="slide")

    def progress(info: dict) -> None:
        bar.total = info["total"]
        bar.update(1, postfix=f"{info['failed']} failed, {info['tiles_per_s']:.1f} tiles/s")

    with bar:
        result = run_cohort(args.engine, items, args.out, opts, progress=progress)
    write_json(args.out / "cohort-summary.json", summary_json(result))
    if args.progress is not False:
        print(result.summary_table(), file=sys.stdout)
    return 1 if result.failed else 0
