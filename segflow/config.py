"""Dataclass configs with command-line and TOML overrides (one small helper, no framework)."""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from segflow.errors import InputError


def _base_type(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return tp


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, *, prefix: str = "") -> None:
    """Add one ``--field-name`` flag per scalar field of dataclass ``cls`` (default None = keep config's)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = _base_type(hints[f.name])
        flag = "--" + prefix + f.name.replace("_", "-")
        doc = f.metadata.get("help", "")
        if tp is bool:
            parser.add_argument(flag, dest=prefix + f.name, default=None, action=argparse.BooleanOptionalAction,
                                help=doc)
        elif tp in (int, float, str):
            parser.add_argument(flag, dest=prefix + f.name, type=tp, default=None,
                                help=f"{doc} (default: {f.default if f.default is not dataclasses.MISSING else '...'})")
        elif typing.get_origin(tp) in (tuple, list):
            parser.add_argument(flag, dest=prefix + f.name, default=None,
                                help=f"{doc} comma-separated (default: {_fmt_default(f)})")


def _fmt_default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return str(f.default)
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return str(f.default_factory())  # type: ignore[misc]
    return "..."


def _coerce(value: Any, tp: Any) -> Any:
    tp = _base_type(tp)
    origin = typing.get_origin(tp)
    if origin in (tuple, list) and isinstance(value, str):
        args = typing.get_args(tp)
        elem = args[0] if args else str
        items = [elem(v) for v in value.split(",") if v.strip()]
        return tuple(items) if origin is tuple else items
    if origin in (tuple, list) and isinstance(value, list | tuple):
        return tuple(value) if origin is tuple else list(value)
    return value


def apply_overrides(cfg: Any, overrides: dict[str, Any], *, source: str = "overrides") -> Any:
    """Return a copy of dataclass ``cfg`` with ``overrides`` (None values skipped) applied."""
    hints = typing.get_type_hints(type(cfg))
    names = {f.name for f in dataclasses.fields(cfg)}
    changes = {}
    for k, v in overrides.items():
        if v is None:
            continue
        if k not in names:
            raise InputError(f"{source} sets unknown option {k!r}: valid options are {sorted(names)}.")
        changes[k] = _coerce(v, hints[k])
    return dataclasses.replace(cfg, **changes)


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file, with a one-sentence error if it is missing or malformed."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"config file {p} does not exist: check the path.")
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"config file {p} is not valid TOML ({exc}): fix the line it names.") from exc
