"""scripts/check_trt_api.py: the TensorRT API names segflow calls, looked up in a real library or bindings wheel.

The table must cover every TensorRT name the engine code uses (checked against the fake TensorRT the build and
emulation tests run on), and the script must report a name a library lacks, in both modes.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import zipfile
from pathlib import Path

import pytest
from fake_trt import make_fake_trt

ROOT = Path(__file__).resolve().parents[2]
TRT_CODE = ("runtime/engine.py", "runtime/trtlib.py", "runtime/backends/tensorrt.py")


@pytest.fixture(scope="module")
def check():
    spec = importlib.util.spec_from_file_location("segflow_check_trt_api", ROOT / "scripts" / "check_trt_api.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _table_names(check) -> set[str]:
    return {n for names in check.API.values() for n in names} | {k for k in check.API if k}


def test_table_covers_every_trt_name_the_code_uses(check):
    """Each attribute the engine code reads that the fake TensorRT models is in the table the script checks."""
    modelled = {"__version__"}
    for fake in (make_fake_trt(executable=True), make_fake_trt("tensorrt_rtx", executable=True)):
        modelled |= {n for n in vars(fake) if not n.startswith("_")}
        for obj in vars(fake).values():
            if inspect.isclass(obj):
                modelled |= {n for n in dir(obj) if not n.startswith("_")}
    used = set()
    for rel in TRT_CODE:
        used |= {n.attr for n in ast.walk(ast.parse((ROOT / rel).read_text())) if isinstance(n, ast.Attribute)}
    assert {"execute_async_v3", "build_serialized_network", "set_tensor_address"} <= used  # the scan sees calls
    assert (used & modelled) - _table_names(check) == set()


def test_fake_has_every_required_name_and_a_removed_one_is_reported(check, install_fake_trt, capsys):
    fake = install_fake_trt(executable=True)
    rows = check.check_module(fake)
    assert len(rows) == sum(len(v) for v in check.API.values())
    assert all(present for _q, required, present in rows if required)
    assert check.main([]) == 0
    assert "61/61 required names found" in capsys.readouterr().out  # 74 names, 13 used only with tensorrt_rtx

    del fake.IExecutionContext.execute_async_v3
    assert check.main([]) == 1
    assert "missing: IExecutionContext.execute_async_v3" in capsys.readouterr().out


def test_rtx_only_names_are_required_of_tensorrt_rtx(check):
    rows = {q: (r, p) for q, r, p in check.check_module(make_fake_trt("tensorrt_rtx", executable=True))}
    assert rows["Runtime.get_engine_validity"] == (True, False)  # the fake models full TensorRT only
    assert rows["IBuilderConfig.set_compute_capability"] == (True, False)
    assert rows["Builder.build_serialized_network"] == (True, True)


def _wheel(path: Path, names: set[str], member: str = "tensorrt_bindings/tensorrt.so") -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, b"\0".join(sorted(n.encode() for n in names)))
    return path


def test_wheel_mode_reports_absent_names(check, tmp_path, capsys):
    every = _table_names(check)
    full = _wheel(tmp_path / "tensorrt_cu13_bindings-99.0-cp311-none-any.whl", every)
    assert check.main(["--wheel", str(full)]) == 0
    assert "61/61 required names found" in capsys.readouterr().out

    lacking = _wheel(tmp_path / "tensorrt_cu13_bindings-98.0-cp311-none-any.whl", every - {"set_tensor_address"})
    assert check.main(["--wheel", str(lacking)]) == 1
    assert "missing: IExecutionContext.set_tensor_address" in capsys.readouterr().out

    # tensorrt_rtx wheels (named so) must also have the RTX-only names
    rtx = _wheel(tmp_path / "tensorrt_rtx_cu13_bindings-1.0-cp311-none-any.whl", every - {"get_engine_validity"})
    assert check.main(["--wheel", str(rtx)]) == 1
    assert "missing: Runtime.get_engine_validity" in capsys.readouterr().out


def test_wheel_mode_errors(check, tmp_path):
    with pytest.raises(SystemExit, match="does not exist: download it with pip download"):
        check.main(["--wheel", str(tmp_path / "nothing.whl")])
    docs = _wheel(tmp_path / "docs.whl", {"x"}, member="README.txt")
    with pytest.raises(SystemExit, match="holds no compiled bindings"):
        check.main(["--wheel", str(docs)])


def test_real_tensorrt_rtx_has_every_name(check):
    """With the real TensorRT-RTX installed (pip install tensorrt-rtx-cu13; imports without a GPU)."""
    trt = pytest.importorskip("tensorrt_rtx")
    missing = [q for q, required, present in check.check_module(trt) if required and not present]
    assert missing == []


def test_the_lean_runtime_is_checked_for_what_running_a_plan_needs(check, monkeypatch, capsys):
    """tensorrt_lean runs version-compatible plans and builds nothing: its rows require the run-side names only,
    and one it lacks is reported."""
    import sys

    lean = make_fake_trt("tensorrt_lean_bindings", executable=True)
    for name in ("tensorrt", "tensorrt_rtx", "tensorrt_lean"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "tensorrt_lean_bindings", lean)
    rows = {q: (r, p) for q, r, p in check.check_module(lean)}
    assert rows["Runtime.engine_host_code_allowed"] == (True, True) and rows["Builder"] == (False, False)
    assert not rows["IBuilderConfig.set_memory_pool_limit"][0] and rows["IExecutionContext.execute_async_v3"][0]
    assert check.main([]) == 0
    assert "tensorrt_lean_bindings 11.4.0.106" in (out := capsys.readouterr().out) and "28/28 required names" in out
    del lean.Runtime.engine_host_code_allowed
    assert check.main([]) == 1
    assert "missing: Runtime.engine_host_code_allowed" in capsys.readouterr().out
