"""Benchmark: time to export a network to ONNX with each PyTorch exporter, in one run on the same net.

Reference: the default ``dynamo`` exporter (``torch.export`` + the onnxscript optimiser). Compared: ``dynamo``
without the optimiser (what the optimiser costs) and ``torchscript`` (the older tracer, ``--exporter
torchscript``). Only the graph writing is timed (no parity check); each graph is then run once through ONNX
Runtime next to PyTorch so a fast but wrong exporter would show up as a large error.

Wall-clock and CPU (process) time are both reported: the development machine is a shared 2-core box.

Run: python benchmarks/bench_export.py [--net tiny|lite] [--repeats N]
Writes benchmarks/results/bench_export_<net>.json and prints a table with ratios to the reference.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from segflow.export.onnx import EXPORTERS, _export_graph
from segflow.trainer.nets import NetConfig, SegModel

RESULTS = Path(__file__).parent / "results"
NETS = {
    "tiny": dict(base=16, channel_mults=(1, 2), attention_ds=(), encoder_blocks=1, encoder_nf=16,
                 encoder_growth=8, in_channels=1),
    "lite": dict(in_channels=3),
}


def export_encoder(model: SegModel, path: Path, mode: str, side: int) -> None:
    """``dynamo`` and ``torchscript`` go through the product's own ``_export_graph``; only the optimiser-off
    variant (which the product does not offer) calls ``torch.onnx.export`` here."""
    image = torch.rand(2, model.cfg.in_channels, side, side) * 2 - 1
    k = model.cfg.size_multiple
    b = torch.export.Dim("batch", min=1, max=4096)
    h, w = torch.export.Dim("h", min=1, max=16384 // k), torch.export.Dim("w", min=1, max=16384 // k)
    spatial = {"image": {0: b, 2: k * h, 3: k * w}}
    if mode in EXPORTERS:
        _export_graph(model.encoder, (image,), ["image"], spatial, path, "{}", 18, mode)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(model.encoder, (image,), input_names=["image"], output_names=["features"],
                                 opset_version=18, dynamo=True, dynamic_shapes=spatial, optimize=False)
    prog.save(str(path))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--net", choices=sorted(NETS), default="tiny")
    ap.add_argument("--repeats", type=int, default=1, help="exports per exporter (the median is reported)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    cfg = NetConfig.from_name("lite", **NETS[args.net])
    model = SegModel(cfg).eval()
    side = 32
    probe = torch.rand(1, cfg.in_channels, side + cfg.size_multiple, side + cfg.size_multiple) * 2 - 1
    with torch.no_grad():
        want = model.encoder(probe).numpy()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("dynamo", "dynamo-no-optimiser", "torchscript"):
            walls, cpus = [], []
            for r in range(args.repeats):
                path = Path(tmp) / f"{mode}-{r}.onnx"
                w, c = time.perf_counter(), time.process_time()
                export_encoder(model, path, mode, side)
                walls.append(time.perf_counter() - w)
                cpus.append(time.process_time() - c)
            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            got = sess.run(None, {"image": probe.numpy()})[0]
            rows.append({"exporter": mode, "wall_s": float(np.median(walls)), "cpu_s": float(np.median(cpus)),
                         "max_abs_error": float(np.abs(got - want).max()), "bytes": path.stat().st_size})
            print(f"{mode}: {rows[-1]['wall_s']:.1f} s", flush=True)
    ref = rows[0]
    for row in rows:
        row["wall_ratio_to_dynamo"] = row["wall_s"] / ref["wall_s"]
        row["cpu_ratio_to_dynamo"] = row["cpu_s"] / ref["cpu_s"]
    print(f"\nencoder export, net {args.net} ({sum(p.numel() for p in model.encoder.parameters())} params), "
          f"torch {torch.__version__}, onnxruntime {ort.__version__}")
    print(f"{'exporter':<22}{'wall s':>9}{'cpu s':>9}{'x dynamo':>10}{'max err':>11}{'KB':>8}")
    for row in rows:
        print(f"{row['exporter']:<22}{row['wall_s']:>9.1f}{row['cpu_s']:>9.1f}{row['wall_ratio_to_dynamo']:>10.3f}"
              f"{row['max_abs_error']:>11.1e}{row['bytes'] / 1024:>8.0f}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"bench_export_{args.net}.json"
    out.write_text(json.dumps({"net": args.net, "torch": torch.__version__, "onnxruntime": ort.__version__,
                               "machine": platform.platform(), "repeats": args.repeats, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
