"""``runtime segment``: segment images (files or folders) with an exported FlowSDF/SSB engine."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from segflow.runtime.choices import BACKENDS, BLENDS, INSTANCE_METHODS, INTEGRATORS

from segflow.errors import InputError

HELP = "segment images with an exported model (mean SDF, spread, probability, mask, instance labels)"
DESCRIPTION = """\
Segment images with an exported FlowSDF or SSB engine. Everything the model needs (tile, channels,
normalisation, threshold) comes from its model card; the flags below change sampling choices only.

For each input NAME the output folder receives NAME_labels.tif, NAME_mask.tif, NAME_sdf.tif (mean SDF),
NAME_std.tif (spread over the K samples), NAME_prob.tif (fraction of samples inside) and NAME.json (settings,
timings, NFE, backend, model card, one row per instance). All inputs are checked before anything is written.

example:
  runtime segment --engine models/flowsdf-small-monuseg.onnx examples/monuseg_val_crop.png --out results/ --samples 4
"""

# Keep the cached validated images under this many bytes; beyond it, images are read again when segmented.
CACHE_BYTES = 1 << 30


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``runtime segment``."""
    p.add_argument("inputs", nargs="+", metavar="IMAGE", help="image files or folders of images")
    p.add_argument("--engine", required=True, help="exported model (.onnx or .plan; the encoder graph beside it)")
    p.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    p.add_argument("--samples", "-k", type=int, default=None, help="K samples per tile (default: model card)")
    p.add_argument("--steps", "-n", type=int, default=None, help="integration steps (default: model card)")
    p.add_argument("--method", choices=INTEGRATORS, default=None, help="integrator (default: model card)")
    p.add_argument("--stride", type=int, default=None, help="tile stride in pixels (default: 3/4 of the tile)")
    p.add_argument("--seed", type=int, default=0, help="noise seed; the same seed gives the same result (default 0)")
    p.add_argument("--noise-iterations", type=int, default=0, metavar="T",
                   help="FlowSDF noise injection: re-noise and re-integrate T times (default 0)")
    p.add_argument("--renoise-t", type=float, default=0.5, help="time the estimate is re-noised to (default 0.5)")
    p.add_argument("--instances", choices=INSTANCE_METHODS, default=None,
                   help="instance method (default: hemd when available, else watershed)")
    p.add_argument("--blend", choices=BLENDS, default="gaussian", help="overlap blending (default gaussian)")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="auto: by engine type, CUDA when available (default); on a GPU (TensorRT plan, or "
                        "CUDA with CuPy installed) sampling stays on the device (docs/gpu.md)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="TensorRT plans: replay each engine call from a captured CUDA graph (less launch overhead)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: physical cores)")
    p.add_argument("--tile-workers", type=int, default=None, metavar="N",
                   help="CPU: groups of tiles sampled at once, each with threads/N threads (default: one per "
                        "thread; 1 = one group at a time using every thread)")
    p.add_argument("--batch-size", type=int, default=None, help="samples per model call (default: from memory budget)")
    p.add_argument("--memory-budget", type=float, default=1024, metavar="MB",
                   help="memory for one batch, sets the batch size (default 1024)")
    p.add_argument("--guidance", type=float, default=0.0, help="SSB: classifier-free guidance weight")
    p.add_argument("--label", type=int, default=0, help="SSB: annotator label (0 = unconditional)")
    p.add_argument("--ode", action="store_true", help="SSB: deterministic OT-ODE sampler")
    p.add_argument("--save-samples", action="store_true", help="also write the K samples as NAME_samples.tif")
    p.add_argument("--min-confidence", default=None, metavar="FLOAT|adaptive",
                   help="drop instances whose K-sample confidence is below FLOAT, or below COIN's per-image "
                        "min(mean + std, 0.9) with 'adaptive' (per image; per slide for slides) (default: keep "
                        "all; docs/coin.md)")
    bar = p.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None, help="always show progress")
    bar.add_argument("--quiet", "-q", dest="progress", action="store_false", help="no progress bar or summary lines")
    g = p.add_argument_group("whole slides (pyramidal/large TIFF, OME-TIFF, SVS, OpenSlide formats)")
    g.add_argument("--roi", default=None, metavar="X,Y,W,H", help="region in full-resolution slide pixels")
    g.add_argument("--level", type=int, default=None, help="pyramid level to segment (default: by pixel size)")
    g.add_argument("--mpp", type=float, default=None,
                   help="microns per pixel to segment at (default: the model card's pixel_size_um)")
    g.add_argument("--tissue", action=argparse.BooleanOptionalAction, default=True,
                   help="skip tiles outside a quick tissue mask (default on)")
    g.add_argument("--geojson", action=argparse.BooleanOptionalAction, default=None,
                   help="write QuPath GeoJSON (default on for slides; asking for it streams any image)")
    g.add_argument("--block", type=int, default=2048, help="block side in pixels; memory grows with it (2048)")


def ran_on(backend: dict) -> str:
    """Where a result was computed, for the summary line: e.g. ``onnxruntime CPU``, ``tensorrt, device-resident``.

    Examples
    --------
    >>> ran_on({"name": "onnxruntime", "providers": ["CPUExecutionProvider"]})
    'onnxruntime CPU'
    >>> ran_on({"name": "tensorrt", "device_resident": True})
    'tensorrt, device-resident'
    """
    where = str(backend.get("name", "unknown backend"))
    providers = backend.get("providers") or []
    if providers:
        where += " " + providers[0].removesuffix("ExecutionProvider")
    return where + (", device-resident" if backend.get("device_resident") else "")


def _validate(paths: list[Path], segmenter) -> dict[Path, object]:
    """Read and check every input before anything is written; cache them while they fit CACHE_BYTES."""
    from segflow.imageio import read_image

    stems: dict[str, Path] = {}
    cache, used = {}, 0
    for p in paths:
        if p.stem in stems:
            raise InputError(f"inputs {stems[p.stem]} and {p} would write the same outputs: rename one of them.")
        stems[p.stem] = p
        img = read_image(p)
        segmenter.prepare(img, name=f"image {p}")
        if used + img.nbytes <= CACHE_BYTES:
            cache[p], used = img, used + img.nbytes
    return cache


def run(args: argparse.Namespace) -> int:
    """Segment every input; exit 0, or 2 with one sentence on a bad input (nothing partial is written)."""
    from segflow.runtime import wsi
    from segflow.runtime.confidence import filter_segmentation, parse_min_confidence
    from segflow.runtime.gpu import open_segmenter
    from segflow.runtime.outputs import write_segmentation

    from segflow.imageio import list_images, read_image
    from segflow.progress import Progress

    try:
        parse_min_confidence(args.min_confidence)
    except ValueError as exc:
        raise InputError(f"{exc}: pass e.g. --min-confidence 0.5 or --min-confidence adaptive.") from None
    paths = list_images(args.inputs)
    slides = [p for p in paths if wsi.wants_slide(args, p)]  # streamed region by region (docs/wsi.md)
    paths = [p for p in paths if p not in slides]
    if args.out.exists() and not args.out.is_dir():
        raise InputError(f"output {args.out} exists and is not a folder: choose another --out.")
    with open_segmenter(args.engine, backend=args.backend, cuda_graph=args.cuda_graph, samples=args.samples,
                        steps=args.steps, method=args.method, stride=args.stride, seed=args.seed,
                        noise_iterations=args.noise_iterations, renoise_t=args.renoise_t, blend=args.blend,
                        instances=args.instances, threads=args.threads, tile_workers=args.tile_workers,
                        batch_size=args.batch_size, memory_budget_mb=args.memory_budget, guidance=args.guidance,
                        label=args.label, ode=args.ode) as seg:
        info = seg.backend_info
        if args.progress is not False and info.get("runtime_cache_state") in ("new", "rejected"):
            print(f"runtime segment: TensorRT-RTX compiles the plans' kernels for this GPU at first use, so this run "
                  f"takes longer; later runs load them from {info['runtime_cache']}", file=sys.stderr, flush=True)
        cache = _validate(paths, seg)
        wsi.check_slides(seg, slides, args)
        for i, p in enumerate(paths, start=1):
            img = cache.pop(p) if p in cache else read_image(p)
            with Progress(total=1, desc=f"[{i}/{len(paths)}] {p.name}", enabled=args.progress, unit="tile") as bar:
                def tick(done: int, total: int, bar=bar) -> None:
                    bar.total = total
                    bar.update(done - bar.n)

                result = seg(img, name=f"image {p}", progress=tick)
            result, _ = filter_segmentation(result, args.min_confidence)
            write_segmentation(result, args.out, p.stem, input_path=p, input_shape=img.shape,
                               input_dtype=str(img.dtype), samples=args.save_samples)
            if args.progress is not False:
                print(f"{p}: {result.n_instances} instances, K={result.samples}, NFE={result.nfe}, "
                      f"{ran_on(result.backend)}, {result.timings['total_s']:.2f} s -> {args.out / p.stem}_*.tif",
                      file=sys.stdout)
        wsi.run_slides(seg, slides, args)
    return 0
