"""``trainer``: train FlowSDF/SSB models, export them to ONNX, and write synthetic datasets.

Each subcommand is a (HELP, add_arguments, run) triple in :data:`COMMANDS`; torch is imported only when a
command runs, so ``trainer --help`` works on a machine without the ``train`` extra. Errors a user can fix
print one sentence and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import shlex
import sys
from pathlib import Path

from segflow.errors import SegflowError

EPILOG = """examples:
  trainer synth --out data/demo --n 8                 write a small synthetic image/mask dataset
  trainer train --data synthetic --steps 200 --out runs/demo
  trainer train --config configs/monuseg_lite.toml --steps 20000
  trainer train --resume runs/demo/checkpoint.pt --steps 400   continue a run exactly where it stopped
  trainer export runs/demo/checkpoint.pt --out models/demo.onnx

See docs/train.md for the data layouts, every option, and the checkpoint format."""


# -- train ---------------------------------------------------------------------------------------------------
def _train_args(p: argparse.ArgumentParser) -> None:
    from segflow.trainer.config import TrainConfig

    from segflow.config import add_dataclass_args

    p.add_argument("--config", help="TOML file with options (flags given here override it)")
    add_dataclass_args(p, TrainConfig)


def _train_run(args: argparse.Namespace) -> int:
    from segflow.trainer.config import TrainConfig, load_config

    names = [f for f in TrainConfig.__dataclass_fields__ if f not in ("net", "objective")]
    overrides = {k: getattr(args, k) for k in names}
    base = None
    if args.resume:
        from segflow.trainer.train import load_checkpoint

        base = load_checkpoint(args.resume)["config"]
        base = {k: v for k, v in base.items() if k != "resume"}
    cfg = load_config(args.config, overrides, base=base)
    from segflow.trainer.train import train

    result = train(cfg, command=shlex.join(["trainer", *sys.argv[1:]]))
    scores = " ".join(f"{k} {v:.4f}" for k, v in result.val.items())
    print(f"wrote {result.checkpoint} (step {result.step}{', validation ' + scores if scores else ''})")
    return 0


# -- synth ---------------------------------------------------------------------------------------------------
def _synth_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=int, default=8, help="number of images (frames for 'sequence'; default 8)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    p.add_argument("--kind", default="nuclei", choices=("nuclei", "gray", "lesions", "sequence"),
                   help="nuclei: H&E-like RGB; gray: fluorescence-like; lesions: 4 annotators per image "
                        "(per-case folders); sequence: a CTC-layout 2D+time sequence (default nuclei)")
    p.add_argument("--seed", type=int, default=0, help="first seed (image i uses seed + i)")


def _synth_run(args: argparse.Namespace) -> int:
    import cv2
    import numpy as np

    from segflow.errors import InputError
    from segflow.imageio import atomic_path, write_tiff
    from segflow.synthetic import synthetic_annotators, synthetic_nuclei, synthetic_sequence

    if args.n < 1 or args.size < 16:
        raise InputError(f"--n {args.n} and --size {args.size} must be at least 1 and 16.")
    out = Path(args.out)

    def png(path: Path, a) -> None:
        with atomic_path(path) as tmp:
            ok, buf = cv2.imencode(".png", a[..., ::-1] if a.ndim == 3 else a)
            tmp.write_bytes(buf.tobytes())

    if args.kind == "sequence":
        seq = synthetic_sequence(args.n, (args.size, args.size), n=max(args.size // 20, 3), divisions=2,
                                 seed=args.seed)
        for t, (img, lab) in enumerate(zip(seq.images, seq.labels, strict=True)):
            write_tiff(out / "01" / f"t{t:03d}.tif", img)
            write_tiff(out / "01_GT" / "SEG" / f"man_seg{t:03d}.tif", lab.astype(np.uint16))
            write_tiff(out / "01_GT" / "TRA" / f"man_track{t:03d}.tif", lab.astype(np.uint16))
        rows = "".join(" ".join(map(str, r)) + "\n" for r in seq.lineage.tolist())
        with atomic_path(out / "01_GT" / "TRA" / "man_track.txt") as tmp:
            tmp.write_text(rows)
    for i in range(args.n if args.kind != "sequence" else 0):
        seed = args.seed + i
        if args.kind == "lesions":
            img, masks = synthetic_annotators((args.size, args.size), n_annotators=4, seed=seed)
            png(out / f"case{i:03d}" / "image.png", img)
            for k, m in enumerate(masks):
                png(out / f"case{i:03d}" / f"label{k}.png", m.astype(np.uint8) * 255)
            continue
        img, lab = synthetic_nuclei((args.size, args.size), n=max(args.size**2 // 2200, 3),
                                    rgb=args.kind == "nuclei", seed=seed)
        png(out / "images" / f"synth{i:03d}.png", img)
        write_tiff(out / "labels" / f"synth{i:03d}.tif", lab.astype(np.uint16))
    print(f"wrote {args.n} synthetic {args.kind} {'frames' if args.kind == 'sequence' else 'images'} to {out}")
    return 0


COMMANDS = {
    "train": ("train a model (FlowSDF or SSB) on a folder of image/mask pairs or on synthetic data",
              _train_args, _train_run),
    "synth": ("write a synthetic image/mask dataset (handy for demos and smoke tests)", _synth_args, _synth_run),
}


def _unavailable(name: str, reason: str):
    """(add_arguments, run) of a command that cannot load here: any arguments, then one sentence, exit 2."""

    def missing_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("rest", nargs=argparse.REMAINDER)

    def missing_run(args: argparse.Namespace) -> int:
        raise SegflowError(f"`trainer {name}` is unavailable here ({reason}): run `pip install torch onnx onnxscript` "
                           "(or `pip install -e \".[train]\"` in the segflow checkout).")

    return missing_args, missing_run


def _coin_command():
    """``trainer coin``: its flags load without torch (segflow.trainer.coin_cli), the run imports
    segflow.trainer.coin; a stub that explains when torch is not installed."""
    mod = importlib.import_module("segflow.trainer.coin_cli")
    if importlib.util.find_spec("torch") is None:
        return mod.HELP, None, *_unavailable("coin", "torch is not installed")
    return mod.HELP, getattr(mod, "DESCRIPTION", None), mod.add_arguments, mod.run


def _export_command():
    """``segflow.export.cli``'s (DESCRIPTION, add_arguments, run); a stub that explains if it cannot load."""
    try:
        mod = importlib.import_module("segflow.export.cli")
    except ImportError as exc:
        return None, *_unavailable("export", str(exc))
    return getattr(mod, "DESCRIPTION", None), mod.add_arguments, mod.run


def build_parser() -> argparse.ArgumentParser:
    """The ``trainer`` argument parser with one sub-parser per command."""
    parser = argparse.ArgumentParser(
        prog="trainer", description="Train segflow models (FlowSDF, SSB), export them to ONNX with their model "
        "card, and write synthetic datasets.", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands = {name: (help_, None, add, run) for name, (help_, add, run) in COMMANDS.items()}
    commands["export"] = ("export a checkpoint to ONNX graphs (encoder + field) with the model card, "
                          "checking parity with PyTorch", *_export_command())
    commands["coin"] = _coin_command()
    for name in ("train", "export", "coin", "synth"):
        help_, description, add, run = commands[name]
        p = sub.add_parser(name, help=help_, description=description or help_[0].upper() + help_[1:] + ".",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        add(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``trainer`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except SegflowError as exc:
        print(f"trainer {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"trainer {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
