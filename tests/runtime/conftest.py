"""Fixtures shared by the runtime tests: the tiny ONNX engines in tests/models and their numpy references."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

MODELS = Path(__file__).resolve().parents[1] / "models"


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """tests/models (tiny engines: negx, const, dirac, dirac_rgb, blur)."""
    return MODELS


@pytest.fixture(scope="session")
def models_meta():
    """tests/models/meta.py (numpy references and ``check_backend``)."""
    spec = importlib.util.spec_from_file_location("segflow_test_models_meta", MODELS / "meta.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
