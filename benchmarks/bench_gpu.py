"""GPU benchmark: FlowSDF `paper` preset, device-resident runtime vs PyTorch eager vs the FLOP floor.

Measures, in one run on one GPU:

1. per-patch latency of 4 samples x 4 NFE (Euler, 4 steps) at 128^2: segflow's device-resident sampler on
   ONNX Runtime CUDA (I/O binding; fp32 with noise uploaded from the host or drawn on the device, and the
   fp16-converted graph) and, when a TensorRT library is installed, on a TensorRT fp16 plan; in fp16 and in
   fp32, a PyTorch-eager reference-style sampler (encoder recomputed at every step, as the reference code
   does) and a PyTorch-eager sampler with the encoder cached;
2. a 1000 x 1000 image at K = 4, 4 NFE, stride 64 (225 tiles) through :class:`DeviceSegmenter` (not for the
   device-noise row, whose patch time already shows the generator's cost).

Each time sits next to the FLOP floor of its own precision, and is compared with the PyTorch reference of
that precision. The FLOPs are counted here (PyTorch's FlopCounterMode on meta tensors, 2 per multiply-add):
454.6 GFLOP per 128^2 forward of the `paper` net, 63 % in the encoder, as in DESIGN.md, so one patch (encoder
once, 16 field evaluations) is 287.6 + 16 x 167.1 GFLOP; the floor divides it by the GPU's matmul peak in
fp16, or in fp32 without TF32, measured here with a large matrix product. Prints each row as it finishes and
rewrites ``benchmarks/results/bench_gpu.json`` after each, so a run cut short keeps its rows. Without a GPU it
exits with one line.

``--smoke`` runs every step on the CPU instead (numpy in place of CuPy, ONNX Runtime's CPU provider, PyTorch
and the matmul peaks on the CPU), meant with a small network (``--base 8 --tile 32 --image-size 96 --stride
16``): it checks the script end to end where no GPU is lent; its times are not GPU numbers.

    python benchmarks/bench_gpu.py [--skip-image] [--reps 20]
    python benchmarks/bench_gpu.py --smoke    # = --preset lite --base 8 --tile 32 --image-size 96 --stride 16
                                              #   --reps 2, written to a temporary folder
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from _common import export_random

K, NFE = 4, 4
OUT = Path(__file__).resolve().parent / "results"
DESIGN_PAPER_GFLOP, DESIGN_PAPER_ENCODER_SHARE = 454.6, 0.63  # DESIGN.md, per 128^2 forward


PRECISIONS = ("fp16", "fp32")  # each row's floor and reference are those of its own precision


@dataclass
class Target:
    """Where the run happens: the array module and synchronisation of segflow, and PyTorch's device."""

    name: str
    xp: Any
    sync: Callable[[], None]
    torch_device: str
    torch_sync: Callable[[], None]
    ort_label: str
    matmul_n: int  # side of the square matrices of the peak measurement


def gpu_target() -> Target | None:
    from segflow.runtime.gpu import cupy_with_gpu

    cupy = cupy_with_gpu()
    if cupy is None:
        return None
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 (PyTorch's default; segflow's plans too)
    torch.backends.cudnn.allow_tf32 = False
    return Target("cuda", cupy, cupy.cuda.runtime.deviceSynchronize, "cuda", torch.cuda.synchronize,
                  "segflow_ort_cuda", 8192)


def cpu_target() -> Target:
    return Target("cpu", np, lambda: None, "cpu", lambda: None, "segflow_ort_cpu", 512)


def torch_dtype(torch, precision: str):
    return {"fp16": torch.float16, "fp32": torch.float32}[precision]


def row_precision(name: str) -> str:
    """``fp16`` or ``fp32``, from the row's name."""
    return "fp16" if "fp16" in name else "fp32"


def timeit(fn, sync, reps: int) -> float:
    """Median seconds of ``fn`` after two discarded warm-ups, synchronising before every clock read."""
    for _ in range(2):
        fn()
    sync()
    times = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def peak_tflops(torch, target: Target, precision: str) -> float:
    """Dense matmul throughput in ``precision`` (fp32 without TF32)."""
    n, dt = target.matmul_n, torch_dtype(torch, precision)
    a = torch.randn(n, n, device=target.torch_device, dtype=dt)
    b = torch.randn(n, n, device=target.torch_device, dtype=dt)
    t = timeit(lambda: a @ b, target.torch_sync, 10)
    return 2 * n**3 / t / 1e12


def model_flops(cfg, tile: int) -> tuple[float, float]:
    """(encoder, field) GFLOP of one ``tile``^2 forward, counted on meta tensors (no memory, no compute)."""
    import torch
    from segflow.trainer.nets import SegModel
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = SegModel(cfg).eval()
        img = torch.zeros(1, cfg.in_channels, tile, tile)
        x, t = torch.zeros(1, cfg.state_channels, tile, tile), torch.zeros(1)
    with torch.no_grad():
        with FlopCounterMode(display=False) as fc:
            feats = model.encoder(img)
        enc = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            model.field(x, t, feats)
        field = fc.get_total_flops()
    return enc / 1e9, field / 1e9


def fp16_copy(tmp: Path) -> Path:
    """The exported pair converted to fp16 by the runtime's own pass (`runtime build --out NAME.onnx`)."""
    from segflow.runtime.engine import convert_engine

    return convert_engine(tmp / "net.onnx", tmp / "fp16" / "net.onnx", conversion="segflow", check=False).field


def torch_samplers(model, reps: int, tile: int, target: Target, precision: str) -> dict[str, float]:
    import torch

    dev, dt = target.torch_device, torch_dtype(torch, precision)
    m = model.to(dev, dt).eval()
    img = torch.randn(1, m.cfg.in_channels, tile, tile, device=dev, dtype=dt)
    x0 = torch.randn(K, 1, tile, tile, device=dev, dtype=dt)
    imgs = img.expand(K, -1, -1, -1)

    @torch.inference_mode()
    def reference():  # encoder recomputed at every evaluation, like the reference sampler
        x = x0
        for i in range(NFE):
            t = torch.full((K,), i / NFE, device=dev, dtype=dt)
            x = x + m(x, t, imgs) / NFE
        return x

    @torch.inference_mode()
    def cached():
        feats = m.encoder(img).expand(K, -1, -1, -1)
        x = x0
        for i in range(NFE):
            x = x + m.field(x, torch.full((K,), i / NFE, device=dev, dtype=dt), feats) / NFE
        return x

    return {f"torch_eager_reference_{precision}": timeit(reference, target.torch_sync, reps),
            f"torch_eager_cached_encoder_{precision}": timeit(cached, target.torch_sync, reps)}


def segflow_patch(engine: Path, reps: int, tile: int, target: Target, **kw) -> float:
    from segflow.runtime.gpu import DeviceSegmenter

    with DeviceSegmenter(engine, xp=target.xp, samples=K, steps=NFE, method="euler", stride=tile, batch_size=K,
                         instances="threshold", **kw) as seg:
        sampler, channels = seg.sampler, seg.card.in_channels
        tiles = np.random.default_rng(1).uniform(-1, 1, (1, channels, tile, tile)).astype(np.float32)
        t = timeit(lambda: sampler.sample_device(tiles, [0]), target.sync, reps)
        seg((np.random.default_rng(0).random((tile, tile, channels)) * 255).astype(np.uint8))  # end-to-end smoke
    return t


def segflow_image(engine: Path, size: int, stride: int, target: Target, **kw) -> tuple[float, int]:
    from segflow.runtime.gpu import DeviceSegmenter

    with DeviceSegmenter(engine, xp=target.xp, samples=K, steps=NFE, method="euler", stride=stride, batch_size=64,
                         instances="threshold", **kw) as seg:
        img = (np.random.default_rng(0).random((size, size, seg.card.in_channels)) * 255).astype(np.uint8)
        seg(img)  # warm-up
        target.sync()
        t0 = time.perf_counter()
        res = seg(img)
        target.sync()
        return time.perf_counter() - t0, int(res.timings["tiles"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=None, help="repetitions per row (default 20; --smoke 2)")
    ap.add_argument("--skip-image", action="store_true")
    ap.add_argument("--skip-tensorrt", action="store_true")
    ap.add_argument("--preset", default=None, help="network preset (default paper; --smoke lite)")
    ap.add_argument("--base", type=int, default=None, help="override the preset's base width (--smoke: 8)")
    ap.add_argument("--tile", type=int, default=None, help="patch side (default 128; --smoke 32)")
    ap.add_argument("--image-size", type=int, default=None,
                    help="side of the whole-image run (default 1000; --smoke 96)")
    ap.add_argument("--stride", type=int, default=None, help="tile stride of the whole-image run (default 64; "
                                                              "--smoke 16)")
    ap.add_argument("--smoke", action="store_true", help="run every step on the CPU with a small network (plumbing "
                                                         "check, not GPU times)")
    ap.add_argument("--out", type=Path, default=None,
                    help="folder for bench_gpu.json (default benchmarks/results; --smoke: a temporary folder, so "
                         "CPU numbers never replace GPU results)")
    args = ap.parse_args(argv)
    # the paper's settings on a GPU; on the CPU (--smoke) a small network, which runs in seconds, not hours
    defaults = ({"reps": 2, "preset": "lite", "base": 8, "tile": 32, "image_size": 96, "stride": 16} if args.smoke
                else {"reps": 20, "preset": "paper", "base": None, "tile": 128, "image_size": 1000, "stride": 64})
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="bench_gpu_smoke-")) if args.smoke else OUT
    target = cpu_target() if args.smoke else gpu_target()
    if target is None:
        print("bench_gpu: no NVIDIA GPU visible through CuPy; nothing measured (--smoke checks the script on the "
              "CPU).")
        return 0
    import torch
    from segflow.runtime.tiling import plan_tiles
    from segflow.trainer.nets import NetConfig

    cfg = NetConfig.from_name(args.preset, base=args.base)
    tile = args.tile
    enc_gf, field_gf = model_flops(cfg, tile)
    patch_gf = enc_gf + K * NFE * field_gf
    image_tiles = None if args.skip_image else len(plan_tiles((args.image_size, args.image_size), tile, args.stride))
    image_gf = image_tiles * patch_gf if image_tiles else None
    peaks = {p: peak_tflops(torch, target, p) for p in PRECISIONS}
    floors = {p: {"patch_s": patch_gf / 1e3 / peaks[p], "image_s": image_gf / 1e3 / peaks[p] if image_gf else None}
              for p in PRECISIONS}
    device = torch.cuda.get_device_name() if target.name == "cuda" else "CPU (smoke run, not GPU numbers)"
    rows: dict[str, dict] = {}
    args.out.mkdir(parents=True, exist_ok=True)

    def record(name: str, row: dict) -> None:
        """Add a row, print it and rewrite the JSON: a run cut short keeps every finished row."""
        prec = row_precision(name)
        ref = rows.get(f"torch_eager_reference_{prec}", row if name.startswith("torch_eager_reference") else None)
        if "patch_s" in row:
            row["x_floor"] = row["patch_s"] / floors[prec]["patch_s"]
            if ref is not None and "patch_s" in ref:
                row["speedup_vs_reference"] = ref["patch_s"] / row["patch_s"]
        rows[name] = row
        if "patch_s" not in row:
            print(f"{name:34s} {row['error']}", flush=True)
        else:
            img = f"{row['image_s']:9.3f}" if "image_s" in row else f"  {row['image_error']}" if "image_error" in \
                row else f"{'-':>9s}"
            vs = f"{row['speedup_vs_reference']:7.2f}" if "speedup_vs_reference" in row else f"{'-':>7s}"
            print(f"{name:34s} {row['patch_s'] * 1e3:9.2f} {row['x_floor']:8.1f} {vs} {img}", flush=True)
        tmp_json = args.out / "bench_gpu.json.tmp"  # then renamed: a run killed mid-write keeps the last JSON
        tmp_json.write_text(json.dumps({
            "device": device, "target": target.name, "peak_tflops": peaks,
            "encoder_gflop": enc_gf, "field_gflop": field_gf, "patch_gflop": patch_gf, "image_gflop": image_gf,
            "floors": floors, "rows": rows,
            "settings": {"K": K, "nfe": NFE, "tile": tile, "stride": args.stride, "preset": args.preset,
                         "base": cfg.base, "image_size": args.image_size, "image_tiles": image_tiles}}, indent=1))
        os.replace(tmp_json, args.out / "bench_gpu.json")

    print(f"{device}  {args.preset} (base {cfg.base}) at {tile}^2: encoder {enc_gf:.4g} + field {field_gf:.4g} "
          f"GFLOP per forward ({enc_gf / (enc_gf + field_gf):.0%} encoder)")
    for p in PRECISIONS:
        img_floor = f", {args.image_size}^2 image {floors[p]['image_s']:.3f} s" if image_gf else ""
        print(f"{p} matmul peak {peaks[p]:.1f} TFLOP/s  floor: patch {floors[p]['patch_s'] * 1e3:.3f} ms{img_floor}")
    print(f"{'runner':34s} {'patch ms':>9s} {'x floor':>8s} {'vs ref':>7s} {'image s':>9s}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = export_random(cfg, tile, tmp / "net.onnx", threshold=0.03)
        for p in PRECISIONS:
            try:
                for name, t in torch_samplers(model, args.reps, tile, target, p).items():
                    record(name, {"patch_s": t})
            except Exception as exc:  # noqa: BLE001 - report, keep the other rows
                record(f"torch_eager_reference_{p}", {"error": f"{type(exc).__name__}: {exc}"})
        # device noise: one CuPy generator per group of tiles (its cuRAND state set-up included), patch only;
        # fp16: the graph converted by the runtime's cast pass (what `runtime build --precision fp16` feeds
        # TensorRT), run by ONNX Runtime — the fast path where no TensorRT library can be installed
        runs = [(f"{target.ort_label}_fp32", tmp / "net.onnx", {}, True),
                (f"{target.ort_label}_fp16", fp16_copy(tmp), {}, True),
                (f"{target.ort_label}_fp32_device_noise", tmp / "net.onnx", {"noise": "device"}, False)]
        if not args.skip_tensorrt and target.name == "cuda":
            try:
                from segflow.runtime.engine import build_engine
                from segflow.runtime.trtlib import gpu_info, import_trt, library_name, rtx_supports

                gpu = gpu_info()
                if library_name(import_trt()) == "tensorrt_rtx" and gpu is not None \
                        and not rtx_supports(gpu.compute_capability):  # a build would be refused at load
                    raise RuntimeError(f"skipped: TensorRT-RTX lists no support for compute capability "
                                       f"{gpu.compute_capability} ({gpu.name}); scripts/rtx_probe.py records its "
                                       f"own answer")
                res = build_engine(tmp / "net.onnx", tmp / "net.plan", precision="fp16", batch=(1, 16, 64),
                                   workspace_bytes=8 << 30)
                runs.append(("segflow_tensorrt_fp16", res.field, {"cuda_graph": True}, True))
            except Exception as exc:  # noqa: BLE001 - report, keep the other rows
                record("segflow_tensorrt_fp16", {"error": f"{type(exc).__name__}: {exc}"})
        # the smoke run's fp16 rows run on ONNX Runtime's CPU provider on purpose: its warning about that is noise
        warnings.filterwarnings("ignore", message=".*ONNX Runtime's CPU provider has no fp16 kernels",
                                category=RuntimeWarning)
        for label, engine, kw, whole_image in runs:
            try:
                row = {"patch_s": segflow_patch(engine, args.reps, tile, target, **kw)}
            except Exception as exc:  # noqa: BLE001 - report, keep the other rows
                record(label, {"error": f"{type(exc).__name__}: {exc}"})
                continue
            if whole_image and not args.skip_image:
                try:
                    row["image_s"], tiles = segflow_image(engine, args.image_size, args.stride, target, **kw)
                    assert tiles == image_tiles, (tiles, image_tiles)
                except Exception as exc:  # noqa: BLE001
                    row["image_error"] = f"{type(exc).__name__}: {exc}"
            record(label, row)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {args.out / 'bench_gpu.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
