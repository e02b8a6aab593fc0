"""The ``runtime`` command: one entry point, one module per subcommand under ``runtime/commands/``.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``. Modules are
imported only when their subcommand is chosen (or for ``--help``), so ``runtime info`` never pays for what
``runtime batch`` imports. Errors the user can fix (:class:`segflow.errors.SegflowError`) print one sentence
to stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import stat
import sys
import threading
import warnings

from segflow import __version__
from segflow.errors import SegflowError

# subcommand name -> module under segflow.runtime.commands
COMMANDS = {
    "segment": "segment",
    "info": "info",
    "build": "build",
    "batch": "batch",
    "solve": "solve",
    "evaluate": "evaluate",
}

DESCRIPTION = """\
segflow runtime: run exported FlowSDF/SSB models on images and slides (numpy + onnxruntime; TensorRT/CuPy
when present). Start with:

  runtime segment --engine models/flowsdf-small-monuseg.onnx examples/monuseg_val_crop.png --out results/
  runtime info --engine models/flowsdf-small-monuseg.onnx
"""


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every subcommand whose module imports."""
    parser = argparse.ArgumentParser(
        prog="runtime", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"segflow {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, modname in COMMANDS.items():
        try:
            mod = importlib.import_module(f"segflow.runtime.commands.{modname}")
        except ModuleNotFoundError as exc:
            if exc.name == f"segflow.runtime.commands.{modname}":
                continue  # command not built yet
            raise
        p = sub.add_parser(name, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM during a command: it unwinds like Ctrl-C, so half-written outputs are removed (exit 143)."""


def _raise_terminated(_signum: int, _frame: object) -> None:
    raise Terminated


def _catch_sigterm() -> object | None:
    """Turn SIGTERM into :class:`Terminated` for the command (main thread, SIGTERM at its default); returns the
    handler to put back, or None when nothing was changed."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGTERM)
    if previous != signal.SIG_DFL:
        return None
    signal.signal(signal.SIGTERM, _raise_terminated)
    return previous


def _stdout_is_a_pipe() -> bool:
    try:
        return stat.S_ISFIFO(os.fstat(sys.stdout.fileno()).st_mode)
    except (OSError, ValueError, AttributeError):  # no file descriptor (stdout replaced, or closed)
        return False


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``runtime`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    shown = warnings.formatwarning  # a warning reads like an error line: no source file, no echoed code
    warnings.formatwarning = lambda message, *_a, **_k: f"runtime {args.command}: warning: {message}\n"
    term = _catch_sigterm()
    try:
        return int(args._run(args) or 0)
    except SegflowError as exc:
        print(f"runtime {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (a job scheduler's stop): outputs cleaned up alike
        how, code = ("terminated", 143) if isinstance(exc, Terminated) else ("interrupted", 130)
        print(f"runtime {args.command}: {how}; no partial outputs were kept.", file=sys.stderr)
        return code
    except BrokenPipeError:
        if not _stdout_is_a_pipe():
            raise  # some other pipe broke: that is an error to show
        # `runtime info --json | head`: the reader left; say nothing more on that pipe
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    finally:
        warnings.formatwarning = shown
        if term is not None:
            signal.signal(signal.SIGTERM, term)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
