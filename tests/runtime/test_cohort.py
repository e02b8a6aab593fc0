"""Cohorts on a local Ray (2 CPUs): same labels as `runtime segment`, corrupt slides isolated, resumable."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from segflow.runtime.cohort import CohortOptions, default_workers, read_inputs, run_cohort
from segflow.runtime.commands import batch as batch_cmd
from slide_helpers import make_engine, write_pyramid

from segflow.synthetic import synthetic_nuclei

ray = pytest.importorskip("ray")

SEG = {"samples": 2, "steps": 2, "seed": 3}


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray with 2 CPUs for the whole module (started and stopped by the test, as the issue asks)."""
    import os

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             _node_ip_address="127.0.0.1")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """An engine, three good inputs (two images, one pyramidal slide) and two bad ones."""
    d = tmp_path_factory.mktemp("cohort")
    engine = make_engine(d, tile=32)
    good = []
    for i in range(2):
        img, _ = synthetic_nuclei((160, 144), n=12, seed=10 + i)
        p = d / f"img{i}.tif"
        tifffile.imwrite(p, img)
        good.append(p)
    big, _ = synthetic_nuclei((256, 256), n=30, seed=5)
    good.append(write_pyramid(d / "slide.ome.tif", big, levels=2, tile=64))
    corrupt = d / "corrupt.tif"
    corrupt.write_bytes(good[0].read_bytes()[:300])  # truncated TIFF
    missing = d / "missing.tif"
    return engine, good, [corrupt, missing]


def _segment_alone(engine: Path, path: Path, out: Path) -> np.ndarray:
    """Labels from the single-machine path (what `runtime segment` runs)."""
    from segflow.runtime.cohort import process_unit
    from segflow.runtime.session import Segmenter

    with Segmenter(engine, **SEG) as seg:
        res = process_unit(seg, {"id": path.name.split(".")[0], "path": str(path)}, out)
    assert res["state"] == "done", res
    return tifffile.imread(res["outputs"]["labels"] if "labels" in res["outputs"]
                           else res["outputs"]["labels.ome.tif"])


def _labels_of(rec: dict) -> np.ndarray:
    outs = rec["outputs"]
    return tifffile.imread(outs.get("labels") or outs["labels.ome.tif"])


def test_default_workers_never_oversubscribe():
    for cores in (1, 2, 3, 8, 16):
        for workers in (None, 1, 2, 5):
            w, t = default_workers(cores, 0, workers, None)
            assert w >= 1 and t >= 1
            assert w * t <= max(cores, w)  # more workers than cores get one thread each
    assert default_workers(16, 4, None, None)[0] == 4  # one actor per GPU


def test_read_inputs_manifest_and_unique_ids(tmp_path):
    (tmp_path / "a.tif").write_bytes(b"")
    csv = tmp_path / "cohort.csv"
    csv.write_text("path,id\na.tif,\nsub/a.tif,\n")
    items = read_inputs(None, csv)
    assert [i["id"] for i in items] == ["a", "a-2"]
    assert items[0]["path"] == str(tmp_path / "a.tif")
    bad = tmp_path / "bad.csv"
    bad.write_text("file\nx.tif\n")
    with pytest.raises(Exception, match="no 'path' column"):
        read_inputs(None, bad)


def test_cohort_matches_segment_isolates_corrupt_and_resumes(local_ray, cohort, tmp_path):
    engine, good, bad = cohort
    out = tmp_path / "out"
    items = read_inputs([str(p) for p in good + bad])
    opts = CohortOptions(segmenter=SEG, workers=2, threads=1, slide={"tissue": False})
    res = run_cohort(engine, items, out, opts)
    recs = res.records
    assert res.ran == 5 and res.failed == 2
    for p in good:
        sid = p.name.split(".")[0]
        assert recs[sid]["state"] == "done", recs[sid]
        alone = _segment_alone(engine, p, tmp_path / f"alone-{sid}")
        assert np.array_equal(_labels_of(recs[sid]), alone), sid
    assert recs["corrupt"]["state"] == "failed" and "corrupt.tif" in recs["corrupt"]["reason"]
    assert recs["missing"]["state"] == "failed" and "does not exist" in recs["missing"]["reason"]
    saved = json.loads((out / "cohort.json").read_text())["slides"]
    assert saved["img0"]["state"] == "done" and saved["img0"]["n_instances"] == recs["img0"]["n_instances"]

    # a second run does no work for the done slides and retries only the failed ones
    mtimes = {p: Path(p).stat().st_mtime_ns for p in recs["img0"]["outputs"].values()}
    again = run_cohort(engine, items, out, opts)
    assert again.skipped == 3 and again.ran == 2 and again.failed == 2
    assert {p: Path(p).stat().st_mtime_ns for p in recs["img0"]["outputs"].values()} == mtimes
    only_good = read_inputs([str(p) for p in good])
    assert run_cohort(engine, only_good, out, opts).ran == 0
    # new sampling settings are another run key: the work is redone
    assert run_cohort(engine, only_good[:1], out, CohortOptions(segmenter={**SEG, "seed": 4}, workers=1)).ran == 1


def test_killing_a_worker_mid_run_still_completes(local_ray, cohort, tmp_path):
    engine, good, _ = cohort
    items = read_inputs([str(p) for p in good] * 2)  # 6 units (ids de-duplicated)
    killed = []

    def on_start(actors):
        pid = ray.get(actors[0].pid.remote())  # wait until the worker is up

        def kill():
            time.sleep(0.2)
            ray.kill(actors[0], no_restart=False)
            killed.append(pid)

        threading.Thread(target=kill, daemon=True).start()

    opts = CohortOptions(segmenter=SEG, workers=2, threads=1, max_retries=3, slide={"tissue": False})
    res = run_cohort(engine, items, tmp_path / "out", opts, on_start=on_start)
    assert killed, "the test did not kill a worker"
    assert res.failed == 0 and all(r["state"] == "done" for r in res.records.values())


def test_batch_cli_errors_without_inputs(tmp_path, capsys):
    from segflow.runtime.cli import main

    assert main(["batch", "--engine", "x.onnx", "--out", str(tmp_path)]) == 2
    assert "no slides given" in capsys.readouterr().err
    assert batch_cmd.HELP
