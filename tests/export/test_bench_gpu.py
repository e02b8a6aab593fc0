"""benchmarks/bench_gpu.py: its FLOP count reproduces DESIGN.md, and the whole script runs (on the CPU).

The GPU run needs a lent GPU and has to work the first time it gets one, so the script's every step (FLOP count,
export, PyTorch samplers in fp16 and fp32, segflow's device sampler on a patch and on a whole image, the table and
the JSON) is run here with ``--smoke``: numpy in place of CuPy, ONNX Runtime's CPU provider, a width-8 network.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")



@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("bench_gpu")


def test_paper_flops_match_design(bench):
    from segflow.trainer.nets import NetConfig

    enc, field = bench.model_flops(NetConfig.from_name("paper"), 128)
    assert enc + field == pytest.approx(bench.DESIGN_PAPER_GFLOP, abs=0.05)  # DESIGN.md: 454.6 GFLOP
    assert enc / (enc + field) == pytest.approx(bench.DESIGN_PAPER_ENCODER_SHARE, abs=0.005)  # 63 % encoder


def test_flops_scale_with_the_tile(bench):
    from segflow.trainer.nets import NetConfig

    cfg = NetConfig.from_name("lite", base=8)
    small, big = bench.model_flops(cfg, 32), bench.model_flops(cfg, 64)
    assert big[0] == pytest.approx(4 * small[0], rel=1e-6)  # the encoder is convolutional: FLOPs per pixel
    assert big[1] > 3.5 * small[1]  # the field's attention grows faster than its pixels, the rest linearly


def test_smoke_run_writes_every_row(bench, tmp_path, capsys):
    argv = ["--smoke", "--preset", "lite", "--base", "8", "--tile", "32", "--image-size", "64", "--stride", "16",
            "--reps", "1", "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    res = json.loads((tmp_path / "bench_gpu.json").read_text())
    rows = res["rows"]
    assert set(rows) == {"torch_eager_reference_fp32", "torch_eager_cached_encoder_fp32", "segflow_ort_cpu_fp32",
                         "segflow_ort_cpu_fp32_device_noise", "segflow_ort_cpu_fp16",
                         "torch_eager_reference_fp16", "torch_eager_cached_encoder_fp16"}  # fp16 PyTorch runs too
    assert all(r["patch_s"] > 0 for r in rows.values())
    assert rows["segflow_ort_cpu_fp32"]["image_s"] > 0 and rows["segflow_ort_cpu_fp16"]["image_s"] > 0
    assert "image_s" not in rows["segflow_ort_cpu_fp32_device_noise"]  # patch only
    assert res["settings"]["image_tiles"] == 9  # (64 - 32) / 16 + 1 = 3 tiles a side
    assert res["patch_gflop"] == pytest.approx(res["encoder_gflop"] + 16 * res["field_gflop"])
    for p in ("fp16", "fp32"):  # each row against the floor and the PyTorch reference of its own precision
        floor = res["floors"][p]["patch_s"]
        assert floor == pytest.approx(res["patch_gflop"] / 1e3 / res["peak_tflops"][p])
        assert res["floors"][p]["image_s"] == pytest.approx(9 * floor)
        ref = rows[f"torch_eager_reference_{p}"]["patch_s"]
        for name, r in rows.items():
            if p in name:
                assert r["x_floor"] == pytest.approx(r["patch_s"] / floor)
                assert r["speedup_vs_reference"] == pytest.approx(ref / r["patch_s"])
    assert rows["torch_eager_reference_fp32"]["speedup_vs_reference"] == 1.0
    out = capsys.readouterr().out
    assert "segflow_ort_cpu_fp32" in out and "not GPU numbers" in out


def test_without_a_gpu_it_measures_nothing(bench, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "cupy", None)
    assert bench.main(["--out", str(tmp_path / "r")]) == 0
    assert "no NVIDIA GPU" in capsys.readouterr().out and not (tmp_path / "r").exists()


def test_smoke_alone_is_small_and_keeps_away_from_the_results_folder(bench, tmp_path, monkeypatch, capsys):
    """`--smoke` by itself runs a small network (seconds on a CPU, not the paper preset's hours) and writes to
    a temporary folder, not over benchmarks/results/bench_gpu.json."""
    made = []
    real = bench.tempfile.mkdtemp

    def mkdtemp(*args, **kw):
        if kw.get("prefix") != "bench_gpu_smoke-":
            return real(*args, **kw)
        made.append(real(dir=tmp_path, **kw))
        return made[-1]

    monkeypatch.setattr(bench.tempfile, "mkdtemp", mkdtemp)
    monkeypatch.setattr(bench, "OUT", tmp_path / "results")
    assert bench.main(["--smoke", "--skip-image", "--reps", "1"]) == 0
    res = json.loads((Path(made[0]) / "bench_gpu.json").read_text())
    assert (res["settings"]["preset"], res["settings"]["tile"]) == ("lite", 32) and not (tmp_path / "results").exists()
