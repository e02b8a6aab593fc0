"""SSB end to end through the command lines: ``trainer train --kind ssb`` (a few steps of a tiny net on synthetic
lesions) -> ``trainer export --exporter torchscript`` -> ``runtime segment --samples K --save-samples``.

Checks the files the runtime writes for an SSB engine (the K sampled states, their mean and spread, the
foreground probability and the mask of the mean), that the maps are the reductions of the K samples, and the
JSON summary's kind / K / steps / NFE (doubled with classifier-free guidance).
"""

from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pytest
import tifffile

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from segflow.runtime.cli import main as runtime_main  # noqa: E402
from segflow.trainer.cli import main as trainer_main  # noqa: E402

from segflow.synthetic import synthetic_annotators  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]

K, STEPS = 3, 4
CONFIG = """\
kind = "ssb"
data = "synthetic-lesions:3"
tile = 32
batch = 2
steps = 3
lr = 1e-3
val_images = 1
val_tiles = 1
val_steps = 2
log_every = 0

[net]
base = 8
groups = 4
channel_mults = [1, 2]
num_res_blocks = 1
attention_ds = []
attention_middle = false
encoder_blocks = 0
encoder_nf = 8
encoder_growth = 4

[objective]
n_timesteps = 20
beta_max = 1.0
sample_steps = 5
"""


def _call(main, capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """Train 3 steps, export with the TorchScript exporter; return the field graph's path."""
    d = tmp_path_factory.mktemp("ssb_e2e")
    (d / "ssb.toml").write_text(CONFIG)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)          # a tiny net on a small shared machine: waiting OpenMP threads only cost
    try:
        assert trainer_main(["train", "--config", str(d / "ssb.toml"), "--out", str(d / "run")]) == 0
        assert trainer_main(["export", str(d / "run" / "checkpoint.pt"), "--out", str(d / "ssb.onnx"),
                             "--exporter", "torchscript", "--batch-sizes", "1,2", "--kind", "ssb"]) == 0
    finally:
        torch.set_num_threads(threads)
    return d / "ssb.onnx"


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """A 48 x 40 synthetic lesion (not a multiple of the 32-pixel tile: several blended tiles)."""
    img, _ = synthetic_annotators((48, 40), n_annotators=2, seed=99)
    path = tmp_path_factory.mktemp("ssb_in") / "lesion.png"
    cv2.imwrite(str(path), img)
    return path


def test_export_wrote_an_ssb_engine(engine):
    import onnxruntime as ort

    card = json.loads(engine.with_name("ssb.card.json").read_text())
    assert card["kind"] == "ssb" and card["target"] == "binary" and card["tile"] == 32
    assert card["bridge"]["n_timesteps"] == 20 and card["bridge"]["n_labels"] == 4
    assert card["sampling"]["steps"] == 5
    sess = ort.InferenceSession(str(engine), providers=["CPUExecutionProvider"])
    assert {i.name for i in sess.get_inputs()} == {"x", "t", "features", "label"}
    assert engine.with_name("ssb.encoder.onnx").is_file()


@pytest.mark.parametrize("guidance", [0.0, 1.5])
def test_segment_writes_k_samples_mean_and_spread(engine, image, tmp_path, capsys, guidance):
    out = tmp_path / "out"
    extra = ["--guidance", guidance, "--label", 2] if guidance else []
    stdout = _call(runtime_main, capsys, "segment", "--engine", engine, image, "--out", out, "--samples", K,
                   "--steps", STEPS, "--save-samples", "--seed", 5, "--threads", 1, "--instances", "threshold",
                   *extra)
    nfe = STEPS * (2 if guidance else 1)
    assert f"K={K}, NFE={nfe}" in stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"lesion{s}" for s in (".json", "_labels.tif", "_mask.tif", "_sdf.tif", "_std.tif", "_prob.tif",
                               "_samples.tif"))

    samples = tifffile.imread(out / "lesion_samples.tif")
    assert samples.shape == (K, 48, 40) and samples.dtype == np.float32
    assert np.abs(samples).max() <= 1.0 + 1e-6           # clipped X0 estimates: -1 inside, +1 outside
    assert not np.allclose(samples[0], samples[1])        # X1 noise and the ancestral sampler differ per sample
    mean, std = tifffile.imread(out / "lesion_sdf.tif"), tifffile.imread(out / "lesion_std.tif")
    np.testing.assert_allclose(mean, samples.mean(0), atol=1e-6)
    np.testing.assert_allclose(std, samples.std(0), atol=1e-6)
    assert std.max() > 0
    np.testing.assert_allclose(tifffile.imread(out / "lesion_prob.tif"), (samples <= 0).mean(0), atol=1e-6)
    np.testing.assert_array_equal(tifffile.imread(out / "lesion_mask.tif"), np.where(mean <= 0, 255, 0))

    info = json.loads((out / "lesion.json").read_text())
    s = info["sampling"]
    assert (s["kind"], s["samples"], s["steps"], s["nfe"]) == ("ssb", K, STEPS, nfe)
    assert s["method"] == "bridge-ancestral"        # the bridge's sampler, not a FlowSDF integrator
    assert info["timings"]["tiles"] > 1 and s["nfe_total"] == nfe * K * info["timings"]["tiles"]
    assert info["model_card"]["kind"] == "ssb"
    assert info["files"]["samples"] == "lesion_samples.tif"


def test_flowsdf_method_is_refused_for_an_ssb_engine(engine, image, tmp_path, capsys):
    out = tmp_path / "out"
    code = runtime_main(["segment", "--engine", str(engine), str(image), "--out", str(out), "--method", "heun",
                         "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--method heun applies to FlowSDF engines" in err and "\n" not in err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("flags,message", [
    (["--label", "5"], "label 5 is not one of"),           # the card's n_labels is 4: labels 0..4
    (["--label", "-1"], "label -1 is not one of"),
    (["--guidance", "-1"], "guidance -1.0 must be 0 or more"),
])
def test_bad_label_or_guidance_is_one_sentence(engine, image, tmp_path, capsys, flags, message):
    """An out-of-table label used to reach the ONNX Gather and fail there; now it is refused up front."""
    out = tmp_path / "out"
    code = runtime_main(["segment", "--engine", str(engine), str(image), "--out", str(out), "-q", *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "\n" not in err
    assert not out.exists()


def test_fp16_onnx_conversion_of_an_ssb_engine(engine, image, tmp_path, capsys):
    """``runtime build --out X.onnx`` on an SSB engine: the parity check feeds the field its int64 labels."""
    from segflow.runtime import engine as eng

    from segflow.card import card_from_onnx, resolve_engine

    card = card_from_onnx(engine)
    feeds = eng.sample_feeds(resolve_engine(engine), card)
    labels = feeds["field"]["label"]
    assert labels.dtype == np.int64 and 0 <= labels.min() and labels.max() <= card.bridge["n_labels"]
    out = tmp_path / "ssb16.onnx"
    said = _call(runtime_main, capsys, "build", "--onnx", engine, "--out", out)
    assert "fp16 (segflow conversion)" in said
    errors = re.search(r"field (\S+), encoder (\S+);", said).groups()
    assert all(0 < float(e) < 2e-3 for e in errors), said
    with pytest.warns(RuntimeWarning, match="ssb16.onnx is an fp16 graph, and ONNX Runtime's CPU provider"):
        _call(runtime_main, capsys, "segment", "--engine", out, image, "--out", tmp_path / "seg", "--samples", 2,
              "--steps", 2, "--label", 1, "-q")
    assert (tmp_path / "seg" / f"{image.stem}_mask.tif").is_file()
