"""GPU benchmark: FlowSDF `paper` preset, device-resident runtime vs PyTorch eager vs the FLOP floor.

Measures, in one run on one GPU:

1. per-patch latency of 4 samples x 4 NFE (Euler, 4 steps) at 128^2: segflow's device-resident sampler on
   ONNX Runtime CUDA (I/O binding) and, when a TensorRT library is installed, on a TensorRT fp16 plan; a
   PyTorch-eager reference-style sampler (encoder recomputed at every step, as the reference code does) and a
   PyTorch-eager sampler with the encoder cached;
2. a 1000 x 1000 image at K = 4, 4 NFE, stride 64 (225 tiles) through :class:`DeviceSegmenter`.

Each time sits next to the FLOP floor: 454.6 GFLOP per 128^2 forward of the reference net, 63 % in the
encoder, so one patch (encoder once, 16 field evaluations) is 286.4 + 16 x 168.2 GFLOP; the floor divides it by
the GPU's fp16 peak measured here with a large matrix product. Writes a table and
``benchmarks/results/bench_gpu.json``. Without a GPU it exits with one line.

    python benchmarks/bench_gpu.py [--skip-image] [--reps 20]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GFLOP_FORWARD, ENCODER_SHARE = 454.6, 0.63
ENC_GF, FIELD_GF = GFLOP_FORWARD * ENCODER_SHARE, GFLOP_FORWARD * (1 - ENCODER_SHARE)
K, NFE, TILE = 4, 4, 128
OUT = Path(__file__).resolve().parent / "results"


def have_gpu() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001
        return False


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


def peak_tflops(torch) -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
    t = timeit(lambda: a @ b, torch.cuda.synchronize, 10)
    return 2 * 8192**3 / t / 1e12


def export_paper(tmp: Path):
    import torch
    from segflow.export.onnx import export_model
    from segflow.trainer.nets import NetConfig, SegModel

    from segflow.card import ModelCard

    cfg = NetConfig.from_name("paper")
    torch.manual_seed(0)
    model = SegModel(cfg).eval()
    card = ModelCard(preset="paper", tile=TILE, in_channels=3, feature_channels=cfg.base, threshold=0.03)
    export_model(model, card, tmp / "paper.onnx", check=False)
    return model, card


def torch_samplers(model, reps: int) -> dict[str, float]:
    import torch

    m = model.cuda().half().eval()
    img = torch.randn(1, 3, TILE, TILE, device="cuda", dtype=torch.half)
    x0 = torch.randn(K, 1, TILE, TILE, device="cuda", dtype=torch.half)
    imgs = img.expand(K, -1, -1, -1)

    @torch.inference_mode()
    def reference():  # encoder recomputed at every evaluation, like the reference sampler
        x = x0
        for i in range(NFE):
            t = torch.full((K,), i / NFE, device="cuda", dtype=torch.half)
            x = x + m(x, t, imgs) / NFE
        return x

    @torch.inference_mode()
    def cached():
        feats = m.encoder(img).expand(K, -1, -1, -1)
        x = x0
        for i in range(NFE):
            x = x + m.field(x, torch.full((K,), i / NFE, device="cuda", dtype=torch.half), feats) / NFE
        return x

    sync = torch.cuda.synchronize
    return {"torch_eager_reference_fp16": timeit(reference, sync, reps),
            "torch_eager_cached_encoder_fp16": timeit(cached, sync, reps)}


def segflow_patch(engine: Path, reps: int, **kw) -> float:
    import cupy
    from segflow.runtime.gpu import DeviceSegmenter

    img = (np.random.default_rng(0).random((TILE, TILE, 3)) * 255).astype(np.uint8)
    with DeviceSegmenter(engine, xp=cupy, samples=K, steps=NFE, method="euler", stride=TILE, batch_size=K,
                         instances="threshold", **kw) as seg:
        sampler = seg.sampler
        tiles = np.random.default_rng(1).uniform(-1, 1, (1, 3, TILE, TILE)).astype(np.float32)
        t = timeit(lambda: sampler.sample_device(tiles, [0]), cupy.cuda.runtime.deviceSynchronize, reps)
        seg(img)  # end-to-end smoke on one patch
    return t


def segflow_image(engine: Path, **kw) -> float:
    import cupy
    from segflow.runtime.gpu import DeviceSegmenter

    img = (np.random.default_rng(0).random((1000, 1000, 3)) * 255).astype(np.uint8)
    with DeviceSegmenter(engine, xp=cupy, samples=K, steps=NFE, method="euler", stride=64, batch_size=64,
                         instances="threshold", **kw) as seg:
        seg(img)  # warm-up
        cupy.cuda.runtime.deviceSynchronize()
        t0 = time.perf_counter()
        seg(img)
        cupy.cuda.runtime.deviceSynchronize()
        return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--skip-image", action="store_true")
    ap.add_argument("--skip-tensorrt", action="store_true")
    args = ap.parse_args(argv)
    if not have_gpu():
        print("bench_gpu: no NVIDIA GPU visible through CuPy; nothing measured.")
        return 0
    import torch

    rows: dict[str, dict] = {}
    peak = peak_tflops(torch)
    patch_gf = ENC_GF + K * NFE * FIELD_GF
    tiles = 15 * 15
    image_gf = tiles * ENC_GF + tiles * K * NFE * FIELD_GF
    floor_patch, floor_image = patch_gf / 1e3 / peak, image_gf / 1e3 / peak
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model, _card = export_paper(tmp)
        for name, t in torch_samplers(model, args.reps).items():
            rows[name] = {"patch_s": t}
        rows["segflow_ort_cuda_fp32"] = {"patch_s": segflow_patch(tmp / "paper.onnx", args.reps)}
        if not args.skip_image:
            rows["segflow_ort_cuda_fp32"]["image_1000_s"] = segflow_image(tmp / "paper.onnx")
        if not args.skip_tensorrt:
            try:
                from segflow.runtime.engine import build_engine

                res = build_engine(tmp / "paper.onnx", tmp / "paper.plan", precision="fp16", batch=(1, 16, 64),
                                   workspace_bytes=8 << 30)
                rows["segflow_tensorrt_fp16"] = {"patch_s": segflow_patch(res.field, args.reps, cuda_graph=True)}
                if not args.skip_image:
                    rows["segflow_tensorrt_fp16"]["image_1000_s"] = segflow_image(res.field, cuda_graph=True)
            except Exception as exc:  # noqa: BLE001 - report, keep the other rows
                rows["segflow_tensorrt_fp16"] = {"error": f"{type(exc).__name__}: {exc}"}
            shutil.rmtree(tmp, ignore_errors=True)
    ref = rows["torch_eager_reference_fp16"]["patch_s"]
    print(f"GPU {torch.cuda.get_device_name()}  fp16 matmul peak {peak:.0f} TFLOP/s  floor: patch "
          f"{floor_patch * 1e3:.2f} ms, 1000^2 image {floor_image:.2f} s")
    print(f"{'runner':34s} {'patch ms':>9s} {'x floor':>8s} {'vs ref':>7s} {'1000^2 s':>9s}")
    for name, r in rows.items():
        if "error" in r:
            print(f"{name:34s} {r['error']}")
            continue
        img = f"{r['image_1000_s']:9.2f}" if "image_1000_s" in r else f"{'-':>9s}"
        print(f"{name:34s} {r['patch_s'] * 1e3:9.2f} {r['patch_s'] / floor_patch:8.1f} {ref / r['patch_s']:7.2f} {img}")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "bench_gpu.json").write_text(json.dumps({
        "gpu": torch.cuda.get_device_name(), "peak_fp16_tflops": peak, "patch_gflop": patch_gf,
        "image_gflop": image_gf, "floor_patch_s": floor_patch, "floor_image_s": floor_image, "rows": rows,
        "settings": {"K": K, "nfe": NFE, "tile": TILE, "stride": 64, "preset": "paper"}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
