"""Fixtures shared by the runtime tests: the tiny ONNX engines in tests/models and their numpy references."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest
from fake_trt import make_fake_trt

MODELS = Path(__file__).resolve().parents[1] / "models"


@pytest.fixture(autouse=True)
def _fresh_cuda_attempt(monkeypatch):
    """Each test starts as a new process would: no CUDA-provider failure remembered from another test."""
    from segflow.runtime.backends import onnxrt

    monkeypatch.setattr(onnxrt, "_cuda_failure", None)


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


@pytest.fixture
def blur_copy(tmp_path, models_dir) -> Path:
    """A copy of the blur engine (field and encoder graphs) in ``tmp_path``, where builds may write beside it."""
    for name in ("blur.onnx", "blur.encoder.onnx"):
        shutil.copy(models_dir / name, tmp_path / name)
    return tmp_path / "blur.onnx"


@pytest.fixture
def install_fake_trt(monkeypatch):
    """``install_fake_trt(**make_fake_trt options)``: a fake as ``tensorrt``, with ``tensorrt_rtx`` unimportable."""

    def install(**options):
        mod = make_fake_trt(**options)
        monkeypatch.setitem(sys.modules, "tensorrt", mod)
        monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)  # None in sys.modules makes the import fail
        return mod

    return install
