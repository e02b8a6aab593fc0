"""Measure COIN self-distillation on synthetic nuclei: does the annotation-free model beat its own seeds?

Unlabelled synthetic H&E tiles (``segflow.synthetic.synthetic_nuclei``, 40 % of nuclei placed against a
neighbour) train a tiny FlowSDF with ``segflow.trainer.coin.self_distill``; held-out tiles with ground truth are
segmented by (a) the raw seeds (haematoxylin + Otsu + distance watershed), (b) the OT-refined seeds and (c) the
model after each round (watershed on the mean of K samples, the loop's own instance step). Every row gives AJI
and pixel IoU overall and split into adjacent / non-adjacent ground-truth cells
(``segflow.solvers.adjacency``, distance 2 px), averaged per image.

Writes benchmarks/results/bench_coin.{json,md}. Wall-clock and CPU (process) time are reported: the
development machine is a shared 2-core box.

Usage: python benchmarks/bench_coin.py [--train 6] [--test 6] [--size 128] [--rounds 3] [--steps 300]
       [--seed 0] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
TINY_NET = {"base": 8, "groups": 4, "channel_mults": [1, 2], "num_res_blocks": 1, "attention_ds": [],
            "attention_middle": False, "encoder_blocks": 0, "encoder_nf": 8, "encoder_growth": 4}
KEYS = ("aji", "aji_adjacent", "aji_non_adjacent", "iou", "iou_adjacent", "iou_non_adjacent")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", type=int, default=6, help="unlabelled training tiles")
    ap.add_argument("--test", type=int, default=6, help="held-out tiles with ground truth")
    ap.add_argument("--size", type=int, default=128, help="tile side (nuclei per tile scale with the area)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=300, help="training steps per round")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch
    from segflow.solvers.adjacency import adjacency_split, mean_split
    from segflow.trainer.coin import CoinConfig, predict_instances, self_distill
    from segflow.trainer.coin_seeds import refine_seeds, seed_instances

    from segflow.synthetic import synthetic_nuclei

    torch.set_num_threads(args.threads)
    n = max(1, round(15 * (args.size / 128) ** 2))
    tile = (args.size, args.size)
    train = [synthetic_nuclei(tile, n=n, seed=args.seed * 1000 + i)[0] for i in range(args.train)]
    test = [synthetic_nuclei(tile, n=n, seed=10_000 + args.seed * 1000 + i) for i in range(args.test)]
    cfg = CoinConfig(rounds=args.rounds, steps=args.steps, batch=4, tile=64, lr=3e-3, sdf_delta=4.0, samples=4,
                     sample_steps=4, net=TINY_NET, seed=args.seed)

    def row(name: str, preds: list) -> dict:
        m = mean_split([adjacency_split(gt, p) for (_, gt), p in zip(test, preds, strict=True)])
        return {"stage": name, **{k: m[k] for k in KEYS}, "n_adjacent": m["n_adjacent"],
                "n_non_adjacent": m["n_non_adjacent"]}

    t0, c0 = time.perf_counter(), time.process_time()
    seeds = [seed_instances(img) for img, _ in test]
    rows = [row("raw seeds", seeds),
            row("OT-refined seeds", [refine_seeds(img, s, seed=i).labels
                                     for i, ((img, _), s) in enumerate(zip(test, seeds, strict=True))])]

    def on_round(r: int, model) -> None:
        preds = [predict_instances(model, img, samples=cfg.samples, steps=cfg.sample_steps, seed=i)[0]
                 for i, (img, _) in enumerate(test)]
        rows.append(row(f"model, round {r}", preds))
        print(f"round {r}: AJI {rows[-1]['aji']:.3f} (seeds {rows[0]['aji']:.3f}), "
              f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)

    res = self_distill(train, cfg, on_round=on_round)
    for r, h in zip(rows[2:], res.history, strict=True):
        r["kept"], r["instances"] = h["kept"], h["instances"]
    report = {
        "command": "python benchmarks/bench_coin.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "data": {"generator": "segflow.synthetic.synthetic_nuclei", "size": args.size, "nuclei": n,
                 "touching": 0.4, "train": args.train, "test": args.test},
        "config": {k: v for k, v in cfg.__dict__.items()},
        "rows": rows,
        "history": res.history,
        "wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(time.process_time() - c0, 1),
        "machine": {"cpus": os.cpu_count(), "torch_threads": args.threads,
                    "python": platform.python_version(), "torch": torch.__version__},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_coin.json").write_text(json.dumps(report, indent=2) + "\n")
    cols = ["stage", "AJI", "AJI adjacent", "AJI non-adjacent", "IoU", "IoU adjacent", "IoU non-adjacent",
            "kept / instances after the round"]
    lines = ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    for r in rows:
        kept = f"{r['kept']} / {r['instances']}" if "kept" in r else ""
        lines.append(f"| {r['stage']} | " + " | ".join(f"{r[k]:.3f}" for k in KEYS) + f" | {kept} |")
    lines.append("")
    lines.append(f"`{report['command']}`: {args.train} training / {args.test} held-out {args.size}² tiles, "
                 f"{rows[0]['n_adjacent']} adjacent and {rows[0]['n_non_adjacent']} non-adjacent held-out cells; "
                 f"{report['wall_s']} s wall, {report['cpu_s']} s CPU.")
    table = "\n".join(lines)
    (RESULTS / "bench_coin.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
