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


def test_a_slide_split_into_region_units_equals_the_whole_slide(local_ray, cohort, tmp_path):
    """64-px blocks make the 256-px slide 16 blocks; 6 blocks per region gives 3 region units and a join."""
    engine, good, _ = cohort
    slide = good[2]
    sid = slide.name.split(".")[0]
    out = tmp_path / "out"
    opts = CohortOptions(segmenter=SEG, workers=2, threads=1, slide={"tissue": False, "block": 64},
                         region_blocks=6)
    seen = []
    res = run_cohort(engine, read_inputs([str(slide)]), out, opts, progress=seen.append)
    rec = res.records[sid]
    assert rec["state"] == "done" and rec["parts"] == 3, rec
    assert [s["done"] for s in seen] == [1]  # progress counts slides, not region units
    alone_dir = tmp_path / "alone"
    alone = _segment_alone(engine, slide, alone_dir)
    assert np.array_equal(_labels_of(rec), alone)
    for m in ("mean_sdf", "std", "prob"):  # the maps, too, are those of the single-machine run
        assert np.array_equal(tifffile.imread(rec["outputs"][m]),
                              tifffile.imread(alone_dir / Path(rec["outputs"][m]).name)), m
    assert rec["n_instances"] == int(alone.max()) and len(np.unique(alone)) - 1 == int(alone.max())
    # every tile ran at least once (tiles over a region border run in both regions)
    assert rec["tiles"] >= json.loads(Path(rec["outputs"]["json"]).read_text())["tiles"]
    assert not any(p.name.startswith(".") for p in out.iterdir())  # the shared work folder is gone


class _InProcessRay:
    """Just enough of Ray for the driver loop: actors run their unit when it is handed over."""

    class _Actor:
        def __init__(self, worker):
            self.worker = worker
            self.run = self

        def remote(self, unit):
            return _Ref([self.worker.run(unit)])  # the result, in a box hashed by identity like an ObjectRef

    def wait(self, refs, num_returns=1):
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref):
        return ref[0]


class _Ref(list):
    __hash__ = object.__hash__


def test_a_failed_region_fails_only_its_slide(cohort, tmp_path):
    """The driver loop with an in-process worker whose region part 1 finds its maps gone."""
    from segflow.runtime import cohort as cohort_mod
    from segflow.runtime.cohort import CohortManifest, CohortWorker

    engine, good, _ = cohort
    out = tmp_path / "out"
    out.mkdir()
    slide_opts = {"tissue": False, "block": 64}

    class Flaky(CohortWorker):
        def run(self, unit):
            if unit.get("stage") == "region" and unit["part"] == 1:
                import shutil

                shutil.rmtree(cohort_mod.work_dir(self.out_dir, unit["id"]) / "mean_sdf.zarr")
            return super().run(unit)

    items = read_inputs([str(good[2]), str(good[0])])
    manifest = CohortManifest(out)
    for it in items:
        manifest.slides[it["id"]] = {"path": it["path"], "state": "pending"}
    worker = Flaky(str(engine), SEG, 1, str(out), slide_opts, region_blocks=8)
    cohort_mod._drive(_InProcessRay(), [_InProcessRay._Actor(worker)], items, manifest, CohortOptions(), None, 0.0)
    recs = manifest.slides
    assert recs["slide"]["state"] == "failed" and "slide" in recs["slide"]["reason"], recs["slide"]
    assert recs["img0"]["state"] == "done"
    assert not cohort_mod.work_dir(out, "slide").exists()
    assert "_labels" not in " ".join(p.name for p in out.iterdir() if p.name.startswith("slide"))


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


@pytest.mark.parametrize("flag", ["--workers", "--threads", "--samples", "--steps", "--stride", "--max-retries"])
def test_batch_refuses_impossible_counts_before_touching_anything(tmp_path, models_dir, capsys, flag):
    """`--workers 0` used to end in a ZeroDivisionError traceback after the output folder was made."""
    from segflow.runtime.cli import main

    img = tmp_path / "a.tif"
    tifffile.imwrite(img, np.zeros((40, 40), np.uint8))
    value = "-1" if flag == "--max-retries" else "0"
    out = tmp_path / "out"
    assert main(["batch", "--engine", str(models_dir / "negx.onnx"), str(img), "--out", str(out), flag, value]) == 2
    name, low = flag[2:].replace("-", "_"), 0 if flag == "--max-retries" else 1
    assert f"{name} must be at least {low}, got {value}" in capsys.readouterr().err
    assert not out.exists()


def test_min_confidence_filters_images_as_runtime_segment_does(tmp_path, models_dir, capsys):
    """`runtime batch --min-confidence` reaches the workers: an image unit keeps exactly the instances that
    `runtime segment --min-confidence adaptive` keeps (negx: noise blobs whose K-sample scores spread)."""
    from segflow.runtime.cli import main
    from segflow.runtime.cohort import process_unit
    from segflow.runtime.session import Segmenter

    path = tmp_path / "flat.tif"
    tifffile.imwrite(path, np.full((72, 80), 128, np.uint8))
    assert main(["segment", "--engine", str(models_dir / "negx.onnx"), str(path), "--out", str(tmp_path / "ref"),
                 "-k", "4", "-n", "2", "--min-confidence", "adaptive", "--threads", "1", "-q"]) == 0
    ref = tifffile.imread(tmp_path / "ref" / "flat_labels.tif")
    with Segmenter(models_dir / "negx.onnx", samples=4, steps=2, threads=1) as seg:
        all_ = process_unit(seg, {"id": "flat", "path": str(path)}, tmp_path / "all")
        cut = process_unit(seg, {"id": "flat", "path": str(path)}, tmp_path / "cut",
                           slide={"min_confidence": "adaptive"})
    assert all_["state"] == cut["state"] == "done"
    assert 0 < cut["n_instances"] < all_["n_instances"]  # the threshold dropped some, not all
    np.testing.assert_array_equal(tifffile.imread(cut["outputs"]["labels"]), ref)
    a, b = CohortOptions(slide={}), CohortOptions(slide={"min_confidence": 0.5})
    assert a.run_key("card") != b.run_key("card")  # a new threshold is not skipped as done on a rerun

    out = tmp_path / "bad"
    assert main(["batch", "--engine", "x.onnx", str(path), "--out", str(out), "--min-confidence", "1.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "min-confidence must be in [0, 1]" in err and "\n" not in err and not out.exists()


def test_workers_close_their_engines_before_ray_stops_them():
    """A TensorRT-RTX plan saves its compiled kernels when its Segmenter closes: every live worker is asked to."""
    from segflow.runtime.cohort import CohortWorker, close_workers

    closed = []

    class Seg:
        def close(self):
            closed.append("seg")

    worker = CohortWorker.__new__(CohortWorker)
    worker.seg = Seg()
    assert worker.close() is True and closed == ["seg"]

    class Method:
        def __init__(self, name, dead=False):
            self.name, self.dead = name, dead

        def remote(self):
            if self.dead:
                raise RuntimeError("actor died")
            return self.name

    class Actor:
        def __init__(self, name, dead=False):
            self.close = Method(name, dead)

    class Ray:
        def wait(self, refs, num_returns, timeout):
            assert num_returns == len(refs) == 4 and timeout == 60.0  # one deadline for all the workers
            return [r for r in refs if r != "hung"], ["hung"]

        def get(self, ref):
            if ref == "b":
                raise RuntimeError("RayActorError")
            closed.append(ref)

    close_workers(Ray(), [Actor("a"), Actor("dead", dead=True), Actor("hung"), Actor("b"), Actor("c")])
    assert closed == ["seg", "a", "c"]  # the dead, the hung and the failing one skipped, the others closed
