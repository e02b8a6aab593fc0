"""The ``trainer`` command line: help without torch, synth, a short train, one-sentence errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
from segflow.trainer.cli import main


def test_help_works_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "from segflow.trainer.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit as e:\n    sys.exit(e.code)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "train" in out.stdout and "export" in out.stdout and "synth" in out.stdout


def test_parser_does_not_import_torch_and_coin_explains_without_it():
    """Building the parser (every ``trainer`` call) must not pay torch's import; ``trainer coin`` without torch
    is one sentence and exit 2."""
    code = ("import sys\nfrom segflow.trainer.cli import build_parser\nbuild_parser()\n"
            "print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr
    code = ("import sys; sys.modules['torch'] = None\n"
            "from segflow.trainer.cli import main\nsys.exit(main(['coin', 'synthetic']))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip() == ("trainer coin: error: `trainer coin` is unavailable here (torch is not installed): "
                                  "run `pip install torch onnx onnxscript` (or `pip install -e \".[train]\"` in the "
                                  "segflow checkout).")


def test_coin_help_lists_its_settings(capsys):
    with pytest.raises(SystemExit):
        main(["coin", "--help"])
    text = capsys.readouterr().out
    assert "--rounds" in text and "--n-prototypes" in text and "--max-images" in text


def test_train_help_lists_the_config_flags(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "--config" in text and "--sdf-delta" in text and "--resume" in text


def test_bad_config_file_is_one_sentence_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("steps = [unclosed\n")
    assert main(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("trainer train: error: config file") and "not valid TOML" in err and "\n" not in err
    assert main(["train", "--config", str(tmp_path / "none.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "unknown.toml").write_text("stepz = 3\n")
    assert main(["train", "--config", str(tmp_path / "unknown.toml")]) == 2
    assert "unknown option 'stepz'" in capsys.readouterr().err


def test_synth_writes_a_folder_dataset(tmp_path, capsys):
    from segflow.imageio import read_image

    assert main(["synth", "--out", str(tmp_path), "--n", "2", "--size", "64"]) == 0
    img, lab = read_image(tmp_path / "images" / "synth001.png"), read_image(tmp_path / "labels" / "synth001.tif")
    assert img.shape == (64, 64, 3) and lab.shape == (64, 64) and lab.max() >= 1
    assert "wrote 2 synthetic nuclei images" in capsys.readouterr().out
    assert main(["synth", "--out", str(tmp_path), "--n", "0"]) == 2


@pytest.mark.torch
def test_train_then_resume_from_the_command_line(tmp_path, capsys):
    pytest.importorskip("torch")
    cfg = tmp_path / "tiny.toml"
    cfg.write_text('data = "synthetic-gray:4"\ntile = 32\nbatch = 2\nval_images = 2\nval_tiles = 1\n'
                   'val_steps = 2\nlog_every = 0\n[net]\nbase = 8\ngroups = 4\nchannel_mults = [1, 2]\n'
                   'attention_ds = []\nattention_middle = false\nencoder_blocks = 0\n')
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--steps", "2", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["train", "--resume", str(out / "checkpoint.pt"), "--steps", "3"]) == 0
    import torch

    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 3 and ckpt["config"]["tile"] == 32 and ckpt["card"]["extra"]["command"].startswith(
        "trainer")
    assert main(["train", "--resume", str(tmp_path / "nope.pt")]) == 2
