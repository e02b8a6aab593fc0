"""Tests of segflow.export: ONNX graphs with the card, parity with PyTorch, atomic writes, one-sentence errors.

Exports are slow, so three module-scoped exports are shared: the ``lite`` preset (FlowSDF, through the
``trainer export`` command, TorchScript exporter), the ``paper`` architecture at reduced width (SSB, with a label
input, TorchScript exporter) and a tiny SSB net through the default dynamo exporter (which costs 15-40x more
time per graph node, so it gets the smallest net that still has every block kind: RRDB, attention, labels).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")

from segflow.export import cli as export_cli  # noqa: E402
from segflow.export import onnx as sx  # noqa: E402
from segflow.export.parity import ParityError, check_parity, parity_errors  # noqa: E402
from segflow.trainer.nets import NetConfig, SegModel  # noqa: E402

from segflow.card import ModelCard, card_from_onnx, load_card, resolve_engine  # noqa: E402
from segflow.errors import InputError, ModelCardError  # noqa: E402

pytestmark = pytest.mark.torch


def _model(cfg: NetConfig, seed: int = 0) -> SegModel:
    """A model whose zero-initialised layers get small random weights, so parity is tested on real outputs."""
    torch.manual_seed(seed)
    model = SegModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.05)
    return model


def _card(cfg: NetConfig, **kw) -> ModelCard:
    return ModelCard(in_channels=cfg.in_channels, feature_channels=cfg.base, **kw)


@pytest.fixture(scope="module")
def lite(tmp_path_factory):
    d = tmp_path_factory.mktemp("lite")
    cfg = NetConfig.from_name("lite")
    model = _model(cfg)
    card = _card(cfg, preset="lite", tile=32)
    ckpt = sx.make_checkpoint(model, card, d / "lite.pt")
    parser = argparse.ArgumentParser()
    export_cli.add_arguments(parser)
    args = parser.parse_args(["--checkpoint", str(ckpt), "--out", str(d / "lite.onnx"), "--batch-sizes", "1,2",
                              "--exporter", "torchscript"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = export_cli.run(args)
    return {"dir": d, "model": model, "card": card, "rc": rc, "stdout": out.getvalue()}


@pytest.fixture(scope="module")
def paper_small(tmp_path_factory):
    d = tmp_path_factory.mktemp("paper")
    cfg = NetConfig.from_name("paper", base=32, groups=8, encoder_blocks=1, encoder_nf=16, encoder_growth=8,
                              in_channels=1, num_labels=3)
    model = _model(cfg, seed=1)
    card = _card(cfg, kind="ssb", preset="paper", tile=64, bridge={"beta_max": 0.3, "n_timesteps": 100})
    report = sx.export_model(model, card, d / "ssb.onnx", batch_sizes=(1, 2), exporter="torchscript")
    return {"dir": d, "model": model, "card": card, "report": report}


@pytest.fixture(scope="module")
def dynamo_tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("dynamo")
    cfg = NetConfig(base=8, channel_mults=(1, 2), attention_ds=(2,), groups=4, encoder_blocks=1, encoder_nf=8,
                    encoder_growth=4, in_channels=1, num_labels=2)
    model = _model(cfg, seed=2)
    card = _card(cfg, kind="ssb", tile=16, bridge={"beta_max": 0.3, "n_timesteps": 100})
    report = sx.export_model(model, card, d / "tiny.onnx", batch_sizes=(1, 2))  # default exporter: dynamo
    return {"dir": d, "model": model, "card": card, "report": report}


FIELD = {"lite": "lite.onnx", "paper_small": "ssb.onnx", "dynamo_tiny": "tiny.onnx"}


@pytest.mark.slow
def test_cli_export_writes_the_three_files_and_nothing_else(lite):
    assert lite["rc"] == 0
    assert sorted(p.name for p in lite["dir"].iterdir()) == ["lite.card.json", "lite.encoder.onnx", "lite.onnx",
                                                             "lite.pt"]
    errs = re.search(r"encoder ([0-9.e+-]+), field ([0-9.e+-]+) <= tol", lite["stdout"])
    assert errs and float(errs.group(1)) <= 1e-4 and float(errs.group(2)) <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("which", ["lite", "paper_small", "dynamo_tiny"])
def test_graphs_match_pytorch_on_fresh_inputs_and_sizes(which, request):
    ex = request.getfixturevalue(which)
    paths = resolve_engine(ex["dir"] / FIELD[which])
    tile = ex["card"].tile
    errors = parity_errors(ex["model"], paths.field, paths.encoder, tile=tile, batch_sizes=(3,),
                           extra_sizes=(tile * 2,), with_label=which != "lite", seed=7)
    assert set(errors) == {"encoder", "field"}
    assert max(errors.values()) <= 1e-4
    # the outputs are not trivially zero, so the comparison means something
    with torch.no_grad():
        out = ex["model"](torch.randn(1, 1, tile, tile), torch.rand(1), torch.rand(1, ex["model"].cfg.in_channels,
                                                                                     tile, tile))
    assert out.abs().max() > 1e-2


@pytest.mark.slow
def test_graph_inputs_outputs_and_dynamic_axes(lite, paper_small, dynamo_tiny):
    import onnxruntime as ort

    def io_of(path):
        s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return ({i.name: (i.type, i.shape) for i in s.get_inputs()}, {o.name: o.shape for o in s.get_outputs()})

    ins, outs = io_of(lite["dir"] / "lite.onnx")
    assert list(ins) == ["x", "t", "features"] and list(outs) == ["out"]
    assert ins["x"][0] == "tensor(float)" and ins["x"][1][1] == 1 and ins["features"][1][1] == 32
    assert all(isinstance(ins["x"][1][i], str) for i in (0, 2, 3))  # batch, H, W are symbolic
    ins, outs = io_of(lite["dir"] / "lite.encoder.onnx")
    assert list(ins) == ["image"] and list(outs) == ["features"] and ins["image"][1][1] == 3
    for path in (paper_small["dir"] / "ssb.onnx", dynamo_tiny["dir"] / "tiny.onnx"):
        ins, outs = io_of(path)
        assert list(ins) == ["x", "t", "features", "label"] and ins["label"][0] == "tensor(int64)"
        assert all(isinstance(ins[n][1][0], str) for n in ins)  # batch symbolic on every input
        assert all(isinstance(ins["x"][1][i], str) for i in (2, 3))
        assert all(isinstance(outs["out"][i], str) for i in (0, 2, 3)) and outs["out"][1] == 1


@pytest.mark.slow
def test_card_round_trips_through_metadata_and_sidecar(lite, paper_small):
    engine = resolve_engine(lite["dir"] / "lite.onnx")
    card = card_from_onnx(engine.field)
    assert card == card_from_onnx(engine.encoder) == load_card(engine)
    assert card.version  # filled in at export
    assert card.extra == {"checkpoint": "lite.pt", "weights": "ema", "net": lite["model"].cfg.to_dict()}
    assert card.replace(version="", extra={}) == lite["card"]
    ssb = card_from_onnx(paper_small["report"].field)
    assert ssb.kind == "ssb" and ssb.bridge == {"beta_max": 0.3, "n_timesteps": 100}
    assert ModelCard.from_json(paper_small["report"].card.read_text()) == ssb


@pytest.mark.slow
def test_dynamo_export_carries_the_card_in_both_graphs(dynamo_tiny):
    report = dynamo_tiny["report"]
    assert report.max_abs_error and max(report.max_abs_error.values()) <= 1e-4
    card = card_from_onnx(report.field)
    assert card == card_from_onnx(report.encoder) == ModelCard.from_json(report.card.read_text())
    assert card.extra == {"net": dynamo_tiny["model"].cfg.to_dict()}  # the architecture is recorded
    assert card.replace(version="", extra={}) == dynamo_tiny["card"]


def test_export_records_the_exported_network_over_a_stale_one(tmp_path):
    """A card that arrives with another network's ``net`` (copied from an older model) gets the real one."""
    cfg = NetConfig(base=8, channel_mults=(1, 2), attention_ds=(), groups=4, encoder_blocks=1, encoder_nf=8,
                    encoder_growth=4)
    stale = NetConfig.from_name("lite").to_dict()
    card = _card(cfg, tile=16, extra={"net": stale, "note": "kept"})
    report = sx.export_model(_model(cfg), card, tmp_path / "m.onnx", batch_sizes=(1,), exporter="torchscript")
    written = card_from_onnx(report.field)
    assert written.extra == {"net": cfg.to_dict(), "note": "kept"} and cfg.to_dict() != stale
    assert NetConfig.from_dict(written.extra["net"]) == cfg


def test_unknown_exporter_is_refused_before_exporting(tmp_path):
    cfg = NetConfig(base=8, channel_mults=(1, 2), attention_ds=(), groups=4, encoder_blocks=0, encoder_nf=8)
    with pytest.raises(InputError, match="exporter 'jit' for m.onnx is unknown: use one of dynamo, torchscript"):
        sx.export_model(SegModel(cfg), _card(cfg, tile=16), tmp_path / "m.onnx", exporter="jit")
    assert list(tmp_path.iterdir()) == []


def test_failed_parity_leaves_nothing_behind(tmp_path, monkeypatch):
    cfg = NetConfig(base=8, channel_mults=(1, 2), attention_ds=(), groups=4, encoder_blocks=0, encoder_nf=8)

    def fake_write(model, card, tmp, name, opset, with_label, exporter):
        for suffix in (".onnx", ".encoder.onnx", ".card.json"):
            (tmp / f"{name}{suffix}").write_text("x")

    monkeypatch.setattr(sx, "_write_graphs", fake_write)
    monkeypatch.setattr(sx, "parity_errors", lambda *a, **k: {"encoder": 0.0, "field": 0.5})
    with pytest.raises(ParityError, match="field graph differs from PyTorch by 0.5 > tolerance 0.0001"):
        sx.export_model(SegModel(cfg), _card(cfg, tile=16), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_check_parity_rejects_nan_and_accepts_equal_to_tol():
    check_parity({"encoder": 1e-4, "field": 0.0}, 1e-4, where="x")
    with pytest.raises(ParityError, match="encoder graph"):
        check_parity({"encoder": float("nan"), "field": 0.0}, 1e-4, where="x")


# -- bad input: one sentence each ----------------------------------------------------------------------------

TINY = NetConfig(base=8, channel_mults=(1, 2), attention_ds=(), groups=4, encoder_blocks=0, encoder_nf=8)


class _NotWeights:
    """Any class instance: weights_only loading must refuse it."""


def _one_sentence(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg and msg.endswith(".")
    return msg


def test_missing_checkpoint(tmp_path):
    with pytest.raises(ModelCardError, match="does not exist") as info:
        sx.export_checkpoint(tmp_path / "nope.pt", tmp_path / "m.onnx")
    assert "nope.pt" in _one_sentence(info)


def test_files_that_are_not_segflow_checkpoints(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ModelCardError, match="is not a PyTorch checkpoint") as info:
        sx.export_checkpoint(junk, tmp_path / "m.onnx")
    _one_sentence(info)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, other)
    with pytest.raises(ModelCardError, match="is not a segflow checkpoint") as info:
        sx.export_checkpoint(other, tmp_path / "m.onnx")
    _one_sentence(info)
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"model": {}, "card": {}, "obj": _NotWeights()}, unsafe)
    with pytest.raises(ModelCardError, match="refuses to unpickle"):
        sx.export_checkpoint(unsafe, tmp_path / "m.onnx")


def test_checkpoint_of_another_kind(tmp_path):
    ckpt = sx.make_checkpoint(SegModel(TINY), _card(TINY, tile=16), tmp_path / "flow.pt")
    with pytest.raises(ModelCardError, match="holds a 'flowsdf' model, not 'ssb'") as info:
        sx.export_checkpoint(ckpt, tmp_path / "m.onnx", expect_kind="ssb")
    _one_sentence(info)


def test_checkpoint_with_unknown_preset(tmp_path):
    ckpt = sx.make_checkpoint(SegModel(TINY), _card(TINY, tile=16, preset="huge"), tmp_path / "p.pt", net=None)
    with pytest.raises(ModelCardError, match="preset 'huge' is unknown") as info:
        sx.export_checkpoint(ckpt, tmp_path / "m.onnx")
    _one_sentence(info)


def test_weights_that_do_not_fit_the_net(tmp_path):
    other = NetConfig(**{**TINY.to_dict(), "base": 16})
    ckpt = sx.make_checkpoint(SegModel(TINY), _card(TINY, tile=16), tmp_path / "w.pt", net=other.to_dict())
    with pytest.raises(ModelCardError, match="do not fit"):
        sx.export_checkpoint(ckpt, tmp_path / "m.onnx")


@pytest.mark.parametrize(
    "out, card_kw, net_kw, exc, match",
    [
        ("m.onnx.tmp", {}, {}, InputError, "must be a NAME.onnx"),
        ("m.encoder.onnx", {}, {}, InputError, "must be a NAME.onnx"),
        ("missing/m.onnx", {}, {}, InputError, "does not exist"),
        ("m.onnx", {"feature_channels": 16}, {}, ModelCardError, "feature_channels=16"),
        ("m.onnx", {"tile": 24}, {"channel_mults": (1, 2, 2, 2, 2)}, ModelCardError, "not a multiple of 16"),
        ("m.onnx", {"kind": "ssb"}, {}, ModelCardError, "needs num_labels >= 1"),
        ("m.onnx", {}, {"num_labels": 2}, ModelCardError, "needs num_labels = 0"),
    ],
)
def test_export_model_rejects_mismatches_before_exporting(tmp_path, out, card_kw, net_kw, exc, match):
    cfg = NetConfig(**{**TINY.to_dict(), **net_kw})
    card = _card(cfg, tile=16).replace(**card_kw)
    with pytest.raises(exc, match=match) as info:
        sx.export_model(SegModel(cfg), card, tmp_path / out)
    _one_sentence(info)
    assert list(tmp_path.iterdir()) == []


def test_trainer_export_command_prints_one_sentence(tmp_path, capsys):
    cli = pytest.importorskip("segflow.trainer.cli")
    rc = cli.main(["export", "--checkpoint", str(tmp_path / "gone.pt"), "--out", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "gone.pt does not exist" in err


def test_make_checkpoint_round_trip(tmp_path):
    from segflow.export.checkpoint import model_from_checkpoint

    model = _model(TINY)
    ckpt = sx.make_checkpoint(model, _card(TINY, tile=16), tmp_path / "c.pt", step=7)
    raw = torch.load(ckpt, weights_only=True)
    assert raw["step"] == 7 and raw["net"] == TINY.to_dict()
    loaded, card = model_from_checkpoint(ckpt)
    assert card == _card(TINY, tile=16) and loaded.cfg == TINY
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
