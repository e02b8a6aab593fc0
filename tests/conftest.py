"""Shared pytest configuration: GPU tests are skipped without a device, torch tests without torch."""

from __future__ import annotations

import importlib.util

import pytest


def pytest_collection_modifyitems(config, items):
    import warnings

    from segflow.runtime.gpu import cupy_with_gpu

    with warnings.catch_warnings():  # the suite turns warnings into errors; one from importing CuPy must not
        warnings.simplefilter("default")  # read as "no GPU" and skip every GPU test on a GPU machine
        has_gpu = cupy_with_gpu() is not None
    has_torch = importlib.util.find_spec("torch") is not None
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs an NVIDIA GPU with CuPy"))
        if "torch" in item.keywords and not has_torch:
            item.add_marker(pytest.mark.skip(reason="needs the train extra (torch)"))
