"""GPU benchmark: FlowSDF `paper` preset, device-resident runtime vs PyTorch eager vs the FLOP floor.

Measures, in one run on one GPU:

1. per-patch latency of 4 samples x 4 NFE (Euler, 4 steps) at 128^2: segflow's device-resident sampler on
   ONNX Runtime CUDA (I/O binding; fp32 with noise uploaded from the host or drawn on the device, and the
   fp16-converted graph) and, when a TensorRT library is installed, on a TensorRT fp16 plan; a
   PyTorch-eager reference-style sampler (encoder recomputed at every step, as the reference code does) and a
   PyTorch-eager sampler with the encoder cached;
2. a 1000 x 1000 image at K = 4, 4 NFE, stride 64 (225 tiles) through :class:`DeviceSegmenter`.

Each time sits next to the FLOP floor. The FLOPs are counted here (PyTorch's FlopCounterMode on meta
tensors, 2 per multiply-add): 454.6 GFLOP per 128^2 forward of the `paper` net, 63 % in the encoder, as in
DESIGN.md, so one patch (encoder once, 16 field evaluations) is 287.6 + 16 x 167.1 GFLOP; the floor divides
it by the GPU's fp16 peak measured here with a large matrix product. Writes a table and
``benchmarks/results/bench_gpu.json``. Without a GPU it exits with one line.

``--smoke`` runs every step on the CPU instead (numpy in place of CuPy, ONNX Runtime's CPU provider, PyTorch
fp32, the matmul peak in fp32), meant with a small network (``--base 8 --tile 32 --image-size 96 --stride 16``): it
checks the script end to end where no GPU is lent; its times are not GPU numbers.

    python benchmarks/bench_gpu.py [--skip-image] [--reps 20]
    python benchmarks/bench_gpu.py --smoke --preset lite --base 8 --tile 32 --image-size 96 --stride 16 --reps 2 \
        --out /tmp/b
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from _common import export_random

K, NFE = 4, 4
OUT = Path(__file__).resolve().parent / "results"
DESIGN_PAPER_GFLOP, DESIGN_PAPER_ENCODER_SHARE = 454.6, 0.63  # DESIGN.md, per 128^2 forward


@dataclass
class Target:
    """Where the run happens: the array module and synchronisation of segflow, and PyTorch's device."""

    name: str
    xp: Any
    sync: Callable[[], None]
    torch_device: str
    torch_dtype: Any
    torch_sync: Callable[[], None]
    precision: str  # PyTorch's and the matmul peak's
    ort_label: str


def gpu_target() -> Target | None:
    from segflow.runtime.gpu import cupy_with_gpu

    cupy = cupy_with_gpu()
    if cupy is None:
        return None
    import torch

    return Target("cuda", cupy, cupy.cuda.runtime.deviceSynchronize, "cuda", torch.float16, torch.cuda.synchronize,
                  "fp16", "segflow_ort_cuda_fp32")


def cpu_target() -> Target:
    import torch

    return Target("cpu", np, lambda: None, "cpu", torch.float32, lambda: None, "fp32", "segflow_ort_cpu_fp32")


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


def peak_tflops(torch, target: Target) -> float:
    """Dense matmul throughput in the precision PyTorch runs in (fp16 on the GPU, fp32 on the CPU)."""
    n = 8192 if target.name == "cuda" else 1024
    a = torch.randn(n, n, device=target.torch_device, dtype=target.torch_dtype)
    b = torch.randn(n, n, device=target.torch_device, dtype=target.torch_dtype)
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


def torch_samplers(model, reps: int, tile: int, target: Target) -> dict[str, float]:
    import torch

    dev, dt = target.torch_device, target.torch_dtype
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

    return {f"torch_eager_reference_{target.precision}": timeit(reference, target.torch_sync, reps),
            f"torch_eager_cached_encoder_{target.precision}": timeit(cached, target.torch_sync, reps)}


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
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--skip-image", action="store_true")
    ap.add_argument("--skip-tensorrt", action="store_true")
    ap.add_argument("--preset", default="paper", help="network preset (default paper)")
    ap.add_argument("--base", type=int, default=None, help="override the preset's base width (smoke runs)")
    ap.add_argument("--tile", type=int, default=128, help="patch side (default 128)")
    ap.add_argument("--image-size", type=int, default=1000, help="side of the whole-image run (default 1000)")
    ap.add_argument("--stride", type=int, default=64, help="tile stride of the whole-image run (default 64)")
    ap.add_argument("--smoke", action="store_true", help="run every step on the CPU (plumbing check, not GPU times)")
    ap.add_argument("--out", type=Path, default=OUT, help="folder for bench_gpu.json (default benchmarks/results)")
    args = ap.parse_args(argv)
    target = cpu_target() if args.smoke else gpu_target()
    if target is None:
        print("bench_gpu: no NVIDIA GPU visible through CuPy; nothing measured (--smoke checks the script on the "
              "CPU).")
        return 0
    import torch
    from segflow.trainer.nets import NetConfig

    cfg = NetConfig.from_name(args.preset, base=args.base)
    tile = args.tile
    enc_gf, field_gf = model_flops(cfg, tile)
    rows: dict[str, dict] = {}
    peak = peak_tflops(torch, target)
    patch_gf = enc_gf + K * NFE * field_gf
    floor_patch = patch_gf / 1e3 / peak
    image_tiles = None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = export_random(cfg, tile, tmp / "net.onnx", threshold=0.03)
        for name, t in torch_samplers(model, args.reps, tile, target).items():
            rows[name] = {"patch_s": t}
        # device noise: one CuPy generator per group of tiles (its cuRAND state set-up included);
        # fp16: the graph converted by the runtime's cast pass (what `runtime build --precision fp16` feeds
        # TensorRT), run by ONNX Runtime — the fast path where no TensorRT library can be installed
        runs = [(target.ort_label, tmp / "net.onnx", {}),
                (f"{target.ort_label}_device_noise", tmp / "net.onnx", {"noise": "device"}),
                (target.ort_label.replace("fp32", "fp16"), fp16_copy(tmp), {})]
        if not args.skip_tensorrt and target.name == "cuda":
            try:
                from segflow.runtime.engine import build_engine

                res = build_engine(tmp / "net.onnx", tmp / "net.plan", precision="fp16", batch=(1, 16, 64),
                                   workspace_bytes=8 << 30)
                runs.append(("segflow_tensorrt_fp16", res.field, {"cuda_graph": True}))
            except Exception as exc:  # noqa: BLE001 - report, keep the other rows
                rows["segflow_tensorrt_fp16"] = {"error": f"{type(exc).__name__}: {exc}"}
        for label, engine, kw in runs:
            try:
                rows[label] = {"patch_s": segflow_patch(engine, args.reps, tile, target, **kw)}
            except Exception as exc:  # noqa: BLE001 - report, keep the other rows
                rows[label] = {"error": f"{type(exc).__name__}: {exc}"}
                continue
            if not args.skip_image:
                try:
                    rows[label]["image_s"], image_tiles = segflow_image(engine, args.image_size, args.stride,
                                                                        target, **kw)
                except Exception as exc:  # noqa: BLE001
                    rows[label]["image_error"] = f"{type(exc).__name__}: {exc}"
        shutil.rmtree(tmp, ignore_errors=True)
    image_gf = image_tiles * (enc_gf + K * NFE * field_gf) if image_tiles else None
    floor_image = image_gf / 1e3 / peak if image_gf else None
    ref = next(r["patch_s"] for n, r in rows.items() if n.startswith("torch_eager_reference"))
    for r in rows.values():
        if "patch_s" in r:
            r["x_floor"], r["speedup_vs_reference"] = r["patch_s"] / floor_patch, ref / r["patch_s"]
    device = torch.cuda.get_device_name() if target.name == "cuda" else "CPU (smoke run, not GPU numbers)"
    print(f"{device}  {args.preset} (base {cfg.base}) at {tile}^2: encoder {enc_gf:.4g} + field {field_gf:.4g} "
          f"GFLOP per forward ({enc_gf / (enc_gf + field_gf):.0%} encoder)")
    img_floor = f", {args.image_size}^2 image {floor_image:.3f} s" if floor_image else ""
    print(f"{target.precision} matmul peak {peak:.1f} TFLOP/s  floor: patch {floor_patch * 1e3:.3f} ms{img_floor}")
    print(f"{'runner':34s} {'patch ms':>9s} {'x floor':>8s} {'vs ref':>7s} {'image s':>9s}")
    for name, r in rows.items():
        if "error" in r:
            print(f"{name:34s} {r['error']}")
            continue
        img = f"{r['image_s']:9.3f}" if "image_s" in r else f"  {r['image_error']}" if "image_error" in r else \
            f"{'-':>9s}"
        print(f"{name:34s} {r['patch_s'] * 1e3:9.2f} {r['x_floor']:8.1f} {r['speedup_vs_reference']:7.2f} {img}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_gpu.json").write_text(json.dumps({
        "device": device, "target": target.name, "peak_tflops": peak, "peak_precision": target.precision,
        "encoder_gflop": enc_gf, "field_gflop": field_gf, "patch_gflop": patch_gf, "image_gflop": image_gf,
        "floor_patch_s": floor_patch, "floor_image_s": floor_image, "rows": rows,
        "settings": {"K": K, "nfe": NFE, "tile": tile, "stride": args.stride, "preset": args.preset, "base": cfg.base,
                     "image_size": args.image_size, "image_tiles": image_tiles}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
