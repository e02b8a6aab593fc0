"""``runtime --help`` and each subcommand's help: fast (no numpy, scipy, ONNX Runtime, PuLP or tifffile imported),
choices that match the registries they name, and examples that name files the repository ships."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
from segflow.runtime import choices
from segflow.runtime.cli import COMMANDS, DESCRIPTION, build_parser, main

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("numpy", "scipy", "onnxruntime", "pulp", "tifffile", "PIL", "cupy", "tensorrt", "ray", "zarr", "torch")


def test_help_imports_nothing_heavy():
    """Every ``runtime`` call builds the whole parser, so building it must not import the numeric stack."""
    code = ("import sys\nfrom segflow.runtime.cli import main\n"
            f"for argv in (['--help'], *[[c, '--help'] for c in {list(COMMANDS)!r}]):\n"
            "    try:\n        main(argv)\n    except SystemExit as e:\n        assert e.code == 0, argv\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_choices_match_the_registries():
    from segflow.runtime.blend import BLENDS
    from segflow.runtime.instances import METHODS
    from segflow.runtime.integrators import STEPS
    from segflow.solvers.cli import KINDS
    from segflow.solvers.instances import PROB_METHODS

    assert choices.INTEGRATORS == tuple(sorted(STEPS))
    assert choices.BLENDS == tuple(sorted(BLENDS))
    assert choices.INSTANCE_METHODS == METHODS
    assert choices.SOLVE_METHODS == PROB_METHODS
    assert choices.MAP_KINDS == KINDS


def test_parser_offers_the_choices():
    actions = {a.dest: a for a in build_parser()._subparsers._group_actions[0].choices["segment"]._actions}
    assert tuple(actions["method"].choices) == choices.INTEGRATORS
    assert tuple(actions["blend"].choices) == choices.BLENDS
    assert tuple(actions["instances"].choices) == choices.INSTANCE_METHODS
    assert actions["block"].default == 2048 and actions["tissue"].default is True  # whole-slide group kept


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_examples_name_shipped_files(command):
    """Copying an example from ``--help`` must not fail on a model or image that does not exist."""
    text = DESCRIPTION if command is None else importlib.import_module(
        f"segflow.runtime.commands.{COMMANDS[command]}").DESCRIPTION
    for ref in re.findall(r"(?:models|examples)/[^\s,]+", text):
        assert (ROOT / ref).is_file(), f"{command or 'runtime'} --help names {ref}, which is not shipped"


def test_unknown_choice_is_refused_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["segment", "--engine", "missing.onnx", "x.png", "--out", str(tmp_path / "o"), "--method", "rk5"])
    assert exc.value.code == 2
    assert "invalid choice: 'rk5'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_closed_pipe_ends_quietly():
    """`runtime info --json | head`: the reader leaves early; no traceback, the shell's 141 for SIGPIPE."""
    import os
    import subprocess
    import sys

    code = ("import sys\nfrom segflow.runtime import cli\nfrom segflow.runtime.commands import info\n"
            "def run(args):\n    raise BrokenPipeError(32, 'Broken pipe')\n"
            "info.run = run\nsys.exit(cli.main(['info', '--engine', 'x.onnx']))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 141 and out.stderr == "", out.stderr
    with open(os.devnull, "w") as devnull:  # stdout is not a pipe: another pipe broke, and that is shown
        out = subprocess.run([sys.executable, "-c", code], stdout=devnull, stderr=subprocess.PIPE, text=True,
                             timeout=120)
    assert out.returncode == 1 and "BrokenPipeError" in out.stderr


def test_warnings_read_like_error_lines():
    """A warning from the runtime is one line naming the command, not a Python source location."""
    import subprocess
    import sys

    code = ("import sys, warnings\nfrom segflow.runtime import cli\nfrom segflow.runtime.commands import info\n"
            "def run(args):\n    warnings.warn('the CUDA provider could not start', RuntimeWarning)\n    return 0\n"
            "info.run = run\nsys.exit(cli.main(['info', '--engine', 'x.onnx']))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stderr == "runtime info: warning: the CUDA provider could not start\n"


def test_sigterm_unwinds_like_ctrl_c(tmp_path):
    """A job scheduler's SIGTERM during a build: the half-made outputs and the folders made for them are removed,
    one line says so, and the exit status is 143 (it used to kill the process where it stood, leaving a hidden
    staging folder with full-size plans in the out folder)."""
    import subprocess
    import sys

    out = tmp_path / "new" / "deeper"
    code = ("import os, signal, sys, time\nfrom pathlib import Path\nfrom segflow.runtime import cli, engine\n"
            "from segflow.runtime.commands import build\n"
            "def run(args):\n"
            f"    with engine.staged_outputs(Path({str(out)!r})) as stage:\n"
            "        (stage / 'f.plan').write_bytes(b'x' * 1000)\n"
            "        os.kill(os.getpid(), signal.SIGTERM)\n"
            "        time.sleep(5)\n"
            "    return 0\n"
            "build.run = run\nsys.exit(cli.main(['build', '--onnx', 'm.onnx', '--out', 'f.plan']))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 143 and res.stderr == "runtime build: terminated; no partial outputs were kept.\n"
    assert not (tmp_path / "new").exists()
