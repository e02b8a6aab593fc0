"""segflow.config: dataclass flags, TOML loading, overrides with type coercion."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import pytest

from segflow.config import add_dataclass_args, apply_overrides, load_toml
from segflow.errors import InputError


@dataclass(frozen=True)
class _Cfg:
    steps: int = field(default=10, metadata={"help": "number of steps"})
    name: str = "x"
    rate: float = 0.5
    flag: bool = False
    sizes: tuple[int, ...] = (1, 2)
    maybe: int | None = None


def test_flags_parse_and_default_to_none():
    p = argparse.ArgumentParser()
    add_dataclass_args(p, _Cfg)
    args = p.parse_args(["--steps", "3", "--flag", "--sizes", "4,5", "--maybe", "7"])
    assert (args.steps, args.flag, args.sizes, args.maybe, args.name) == (3, True, "4,5", 7, None)
    cfg = apply_overrides(_Cfg(), vars(args))
    assert cfg == _Cfg(steps=3, flag=True, sizes=(4, 5), maybe=7)
    assert "number of steps" in p.format_help()


def test_toml_and_errors(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('steps = 4\nsizes = [8, 9]\nname = "y"\n')
    cfg = apply_overrides(_Cfg(), load_toml(f), source=str(f))
    assert cfg == _Cfg(steps=4, sizes=(8, 9), name="y")
    with pytest.raises(InputError, match="unknown option 'nope'"):
        apply_overrides(_Cfg(), {"nope": 1}, source="c.toml")
    with pytest.raises(InputError, match="does not exist"):
        load_toml(tmp_path / "missing.toml")
    f.write_text("steps = = 3\n")
    with pytest.raises(InputError, match="not valid TOML"):
        load_toml(f)
