"""Cohorts: many images and slides on a Ray cluster, resumable, with failures isolated per slide.

How a cohort runs
-----------------
1. **Inputs** come from paths (files or folders) or a manifest CSV with a ``path`` column (optional ``id``).
2. **State** lives in ``OUT/cohort.json`` (:class:`CohortManifest`): one record per slide with its state
   (``pending``, ``done``, ``failed`` + one-sentence reason), output paths, instance count, timings, attempts,
   and the *run key* — the model card's hash plus the sampling settings. A rerun skips every slide that is
   ``done`` under the same key with its outputs present, and retries what failed. The manifest is rewritten
   atomically after every unit, so a killed driver loses at most the units in flight.
3. **Workers** are Ray actors (:class:`CohortWorker`) that load the engine once. With GPUs there is one actor
   per GPU (``num_gpus=1``); on CPU-only machines ``workers x threads <= cores`` so ONNX Runtime threads never
   oversubscribe the machine.
4. **Units of work**: an ordinary image or a slide is one unit. Slides go through the whole-slide path of
   ``runtime segment`` (:mod:`segflow.runtime.wsi`: bounded memory, seam-free labels), so a cohort's outputs
   equal those of ``runtime segment`` on each slide. (Splitting one huge slide into region units spread over
   several workers is not built yet; see docs/cohorts.md.)
5. **Failures**: a bad input raises a :class:`~segflow.errors.SegflowError` inside the worker and marks that
   slide ``failed`` with its sentence (not retried in this run). A worker that dies (killed, out of memory, lost
   node) is restarted by Ray (``max_restarts``) and its unit retried up to ``max_retries`` times; after that the
   slide is marked failed with the reason. Either way the rest of the cohort completes.

Outputs are those of ``runtime segment`` (per-image TIFFs + JSON, or the slide's OME-TIFF pyramids, GeoJSON
and JSON), each written atomically.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from segflow.errors import InputError, SegflowError, check_at_least
from segflow.imageio import IMAGE_SUFFIXES, write_json

__all__ = ["CohortOptions", "CohortManifest", "CohortWorker", "CohortResult", "read_inputs", "run_cohort",
           "process_unit", "default_workers"]

MANIFEST_NAME = "cohort.json"
SLIDE_SUFFIXES = IMAGE_SUFFIXES + (".svs", ".ndpi", ".scn", ".bif", ".qptiff", ".mrxs", ".vms", ".czi")


@dataclass(frozen=True)
class CohortOptions:
    """How to run a cohort (sampling settings are passed to every worker's Segmenter).

    Attributes
    ----------
    segmenter : dict
        Keyword arguments of :class:`~segflow.runtime.session.Segmenter` (samples, steps, method, seed, ...).
    slide : dict
        Keyword arguments of :class:`~segflow.runtime.wsi.SlideOptions` for slides (roi is per slide, not here).
        Its ``min_confidence`` (a float or ``"adaptive"``) filters the instances of ordinary images too, as
        ``runtime segment --min-confidence`` does.
    workers : int, optional
        Number of actors (default: one per GPU, else ``cores // threads``).
    threads : int, optional
        ONNX Runtime threads per CPU actor (default: ``cores // workers``, at least 1).
    max_retries : int
        Retries of a unit whose worker died (Ray actor restarts and task retries are bounded by it).
    address : str, optional
        ``HOST:PORT`` of an existing Ray cluster (default: ``RAY_ADDRESS``, else a local Ray started and
        stopped by the run).
    region_blocks : int
        A slide with more processing blocks than this (``slide["block"]``, default 2048² pixels each) is split
        into region units of about this many blocks, spread over the workers and joined seam-free; 0 never
        splits. Splitting does not change the outputs.
    """

    segmenter: dict = field(default_factory=dict)
    slide: dict = field(default_factory=dict)
    workers: int | None = None
    threads: int | None = None
    max_retries: int = 2
    address: str | None = None
    region_blocks: int = 16

    def __post_init__(self) -> None:
        """Refuse counts that cannot work before any folder, manifest or Ray cluster is touched."""
        check_at_least(("workers", self.workers, 1), ("threads", self.threads, 1),
                       ("max_retries", self.max_retries, 0), ("region_blocks", self.region_blocks, 0),
                       *((k, self.segmenter.get(k), 1) for k in ("samples", "steps", "stride")))

    def run_key(self, card_digest: str) -> str:
        """Hash of what determines the outputs: the model card and the sampling/slide settings."""
        text = json.dumps({"card": card_digest, "seg": self.segmenter, "slide": self.slide}, sort_keys=True,
                          default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# -- inputs and the manifest -----------------------------------------------------------------------------------
def read_inputs(paths: list[str | Path] | None = None, manifest: str | Path | None = None) -> list[dict]:
    """Return ``[{"id", "path"}]`` from paths/folders or a CSV manifest with a ``path`` column (ids unique)."""
    items: list[tuple[str | None, Path]] = []
    if manifest is not None:
        mp = Path(manifest)
        if not mp.is_file():
            raise InputError(f"manifest {mp} does not exist: pass a CSV file with a 'path' column.")
        with mp.open(newline="") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or "path" not in reader.fieldnames:
                raise InputError(f"manifest {mp} has no 'path' column: add a header line 'path[,id]'.")
            for row in reader:
                p = Path(row["path"])
                items.append((row.get("id") or None, p if p.is_absolute() else mp.parent / p))
    for item in paths or []:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in SLIDE_SUFFIXES and q.is_file())
            if not found:
                raise InputError(f"folder {p} holds no images or slides: add image or slide files.")
            items.extend((None, q) for q in found)
        else:
            items.append((None, p))  # missing files become failed slides, not a cohort-wide error
    if not items:
        raise InputError("no slides given: pass slide paths, a folder, or --manifest cohort.csv.")
    out, seen = [], set()
    for sid, p in items:
        base = sid or p.name.split(".")[0]
        sid, k = base, 1
        while sid in seen:
            k += 1
            sid = f"{base}-{k}"
        seen.add(sid)
        out.append({"id": sid, "path": str(p)})
    return out


class CohortManifest:
    """The cohort's state file ``OUT/cohort.json``: one record per slide, rewritten atomically."""

    def __init__(self, out_dir: str | Path) -> None:
        self.path = Path(out_dir) / MANIFEST_NAME
        self.slides: dict[str, dict] = {}
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text())
                self.slides = dict(data["slides"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise InputError(f"cohort manifest {self.path} is damaged: move it away to start afresh.") from exc

    def is_done(self, sid: str, key: str) -> bool:
        """True when ``sid`` finished under run key ``key`` and its outputs still exist."""
        rec = self.slides.get(sid)
        return bool(rec and rec.get("state") == "done" and rec.get("run_key") == key
                    and all(Path(p).exists() for p in rec.get("outputs", {}).values()))

    def update(self, sid: str, **fields: Any) -> None:
        """Merge ``fields`` into the record of ``sid`` and save."""
        self.slides.setdefault(sid, {}).update(fields)
        self.save()

    def save(self) -> None:
        """Write the manifest atomically."""
        write_json(self.path, {"schema": 1, "slides": self.slides})

    def counts(self) -> dict[str, int]:
        """Number of slides per state."""
        out: dict[str, int] = {}
        for rec in self.slides.values():
            out[rec.get("state", "pending")] = out.get(rec.get("state", "pending"), 0) + 1
        return out


# -- the work done in a worker ---------------------------------------------------------------------------------
def _segment_image(seg: Any, path: Path, out: Path, min_confidence: float | str | None = None) -> dict:
    from segflow.runtime.confidence import filter_segmentation
    from segflow.runtime.outputs import write_segmentation

    from segflow.imageio import read_image

    img = read_image(path)
    res, _ = filter_segmentation(seg(img, name=f"image {path}"), min_confidence)
    files = write_segmentation(res, out, path.name.split(".")[0], input_path=path, input_shape=img.shape,
                               input_dtype=str(img.dtype))
    return {"outputs": {k: str(v) for k, v in files.items()}, "n_instances": int(res.n_instances),
            "tiles": int(res.timings.get("tiles", 0)), "timings": {"total_s": res.timings["total_s"]}}


def work_dir(out: str | Path, sid: str) -> Path:
    """Shared folder holding the maps of a slide that was split into region units."""
    return Path(out) / f".{sid}.regions"


def _slide_done(res: Any) -> dict:
    return {"outputs": dict(res.outputs), "n_instances": int(res.n_instances), "tiles": int(res.tiles_run),
            "timings": dict(res.timings)}


def _segment_slide(seg: Any, path: Path, out: Path, slide: dict, unit: dict, region_blocks: int) -> dict:
    """A slide unit: the whole slide, or (stage ``split`` / ``region`` / ``join``) one step of a split slide."""
    from segflow.runtime import wsi
    from segflow.runtime.slide import open_slide

    sid, stage, opts = unit["id"], unit.get("stage"), wsi.SlideOptions(**slide)
    with open_slide(path) as reader:
        if stage is None:  # first look at the slide: run it whole, or split it into region units
            if region_blocks > 0:
                parts = wsi.prepare_regions(seg, reader, work_dir(out, sid), options=opts,
                                            region_blocks=region_blocks)
                if parts > 1:
                    return {"state": "split", "parts": parts}
                shutil.rmtree(work_dir(out, sid), ignore_errors=True)
            return _slide_done(wsi.segment_slide(seg, reader, out, name=sid, options=opts))
        if stage == "region":
            t0 = time.perf_counter()
            n = wsi.map_region(seg, reader, work_dir(out, sid), unit["part"], unit["parts"], options=opts)
            return {"state": "region", "tiles": n, "maps_s": time.perf_counter() - t0}
        res = wsi.finish_regions(seg, reader, work_dir(out, sid), out, name=sid, options=opts,
                                 tiles_run=unit.get("tiles", 0), maps_s=unit.get("maps_s", 0.0))
        return _slide_done(res)


def process_unit(seg: Any, unit: dict, out_dir: str | Path, slide: dict | None = None, region_blocks: int = 0
                 ) -> dict:
    """Run one unit of work with an open Segmenter; never raises for a bad input.

    A unit is ``{"id", "path"}`` (an image or a whole slide), or for a slide split into region units
    ``{"stage": "region", "part", "parts"}`` / ``{"stage": "join"}``. Returns ``{"state": "done", ...}`` with
    outputs, count and timings; ``{"state": "split", "parts"}`` when a slide has more than ``region_blocks``
    blocks (its shared arrays are then ready for the region units); ``{"state": "region", "tiles"}`` for a
    finished region; or ``{"state": "failed", "reason"}``.
    """
    from segflow.runtime.slide import is_slide

    t0 = time.perf_counter()
    path, out = Path(unit["path"]), Path(out_dir)
    try:
        if not path.exists():
            raise InputError(f"slide {path} does not exist: check the path or remove it from the manifest.")
        if is_slide(path):
            res = _segment_slide(seg, path, out, dict(slide or {}), unit, region_blocks)
        else:
            res = _segment_image(seg, path, out, (slide or {}).get("min_confidence"))
    except SegflowError as exc:
        return {"state": "failed", "reason": str(exc), "wall_s": time.perf_counter() - t0}
    except Exception as exc:  # noqa: BLE001 - one slide's unexpected error must not stop the cohort
        return {"state": "failed", "reason": f"{type(exc).__name__} while segmenting {path}: {exc}",
                "wall_s": time.perf_counter() - t0}
    return {"state": "done", **res, "wall_s": time.perf_counter() - t0, "pid": os.getpid()}


class CohortWorker:
    """A Ray actor body: loads the engine once, then processes the units handed to it."""

    def __init__(self, engine: str, segmenter: dict, threads: int | None, out_dir: str, slide: dict,
                 region_blocks: int = 0) -> None:
        from segflow.runtime.gpu import open_segmenter

        self.seg = open_segmenter(engine, threads=threads, **segmenter)
        self.out_dir, self.slide, self.region_blocks = out_dir, slide, region_blocks

    def pid(self) -> int:
        """Process id (tests use it to kill a worker)."""
        return os.getpid()

    def card_digest(self) -> str:
        """Hash of the loaded model's card."""
        return self.seg.card.digest()

    def run(self, unit: dict) -> dict:
        """Process one unit (see :func:`process_unit`)."""
        return process_unit(self.seg, unit, self.out_dir, self.slide, self.region_blocks)

    def close(self) -> bool:
        """Release the engine: GPU memory, and a TensorRT-RTX plan saves the kernels it compiled (its runtime
        cache), so the next cohort on this machine does not compile them again."""
        self.seg.close()
        return True


def close_workers(ray: Any, actors: list, timeout: float = 60.0) -> None:
    """Ask every worker to close its engine before Ray stops them, waiting ``timeout`` seconds in all (a worker
    still busy with a slide, dead or hung, is left to Ray)."""
    refs = []
    for actor in actors:
        with contextlib.suppress(Exception):
            refs.append(actor.close.remote())
    if not refs:
        return
    with contextlib.suppress(Exception):
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)  # one deadline for all of them
        for ref in ready:
            with contextlib.suppress(Exception):  # RayActorError: nothing left to save there
                ray.get(ref)


# -- the driver ------------------------------------------------------------------------------------------------
@dataclass
class CohortResult:
    """What a cohort run did: per-slide records, counts, wall time and throughput."""

    records: dict[str, dict]
    ran: int
    skipped: int
    failed: int
    wall_s: float
    workers: int
    threads: int | None
    tiles: int = 0

    def summary_table(self) -> str:
        """A plain-text closing table (one row per slide processed or skipped)."""
        rows = [("slide", "state", "instances", "seconds", "reason")]
        for sid, rec in self.records.items():
            rows.append((sid, rec.get("state", "?"), str(rec.get("n_instances", "")),
                         f"{rec.get('wall_s', 0):.1f}" if rec.get("wall_s") else "",
                         (rec.get("reason") or "")[:80]))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=False)) + ("  " + r[4] if r[4] else "")
                 for r in rows]
        rate = self.ran / self.wall_s * 3600 if self.wall_s > 0 else 0.0
        lines.append(f"{self.ran} run, {self.skipped} skipped (already done), {self.failed} failed; "
                     f"{self.wall_s:.1f} s wall, {rate:.1f} slides/hour, {self.workers} workers")
        return "\n".join(lines)


def default_workers(cores: int, gpus: int, workers: int | None, threads: int | None) -> tuple[int, int | None]:
    """Actors and ORT threads per actor: one actor per GPU, else ``workers * threads <= cores``.

    Examples
    --------
    >>> default_workers(8, 0, None, None)
    (4, 2)
    >>> default_workers(8, 2, None, None)
    (2, None)
    >>> default_workers(2, 0, 2, None)
    (2, 1)
    """
    if gpus > 0:
        return (workers or gpus), threads
    if workers is None:
        threads = threads or min(2, cores)
        workers = max(1, cores // threads)
    threads = threads or max(1, cores // workers)
    if workers * threads > cores:
        threads = max(1, cores // workers)
    return workers, threads


def _start_ray(address: str | None, cores: int):
    from segflow.errors import require

    ray = require("ray", '"ray>=2.9"', "runtime batch (a cohort on Ray)")
    address = address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        return ray, False
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address:
        ray.init(address=address, **kwargs)
    else:
        # a local one-machine Ray needs only the loopback interface; letting Ray pick the "node IP" chose an
        # unreachable address on sandboxed hosts and the start timed out
        ray.init(num_cpus=cores, _node_ip_address="127.0.0.1", **kwargs)
    return ray, not address


def run_cohort(engine: str | Path, items: list[dict], out_dir: str | Path, options: CohortOptions | None = None,
               *, progress: Callable[[dict], None] | None = None,
               on_start: Callable[[list], None] | None = None) -> CohortResult:
    """Run a cohort on Ray and return what happened (see the module docstring).

    Parameters
    ----------
    engine : str or Path
        ``--engine`` path, as for ``runtime segment``.
    items : list of dict
        ``[{"id", "path"}]`` from :func:`read_inputs`.
    out_dir : str or Path
        Output folder (on a filesystem all workers share); holds ``cohort.json``.
    options : CohortOptions
        Sampling settings, workers, retries, Ray address.
    progress : callable, optional
        Called after every unit with ``{"done", "total", "failed", "tiles_per_s", "eta_s", "slide"}``.
    on_start : callable, optional
        Called with the list of actor handles once they exist (tests use it to kill one mid-run).
    """
    from segflow.card import load_card, resolve_engine

    opts = options or CohortOptions()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK):
        raise InputError(f"output folder {out} is not writable: choose another --out.")
    card = load_card(resolve_engine(engine))  # fail fast, before Ray starts, on a bad engine
    key = opts.run_key(card.digest())
    manifest = CohortManifest(out)
    todo = [it for it in items if not manifest.is_done(it["id"], key)]
    skipped = len(items) - len(todo)
    for it in todo:
        manifest.slides.setdefault(it["id"], {}).update(path=it["path"], state="pending", run_key=key)
    manifest.save()
    t0 = time.perf_counter()
    if not todo:
        return CohortResult({it["id"]: manifest.slides[it["id"]] for it in items}, 0, skipped, 0, 0.0, 0, None)
    cores = os.cpu_count() or 1
    ray, started = _start_ray(opts.address, cores)
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        total_cpus = int(ray.cluster_resources().get("CPU", cores))
        n_workers, threads = default_workers(total_cpus, gpus, opts.workers, opts.threads)
        n_workers = min(n_workers, len(todo))
        actor_cls = ray.remote(num_cpus=0 if gpus else (threads or 1), num_gpus=1 if gpus else 0,
                               max_restarts=opts.max_retries, max_task_retries=opts.max_retries)(CohortWorker)
        actors = [actor_cls.remote(str(engine), opts.segmenter, threads, str(out), opts.slide, opts.region_blocks)
                  for _ in range(n_workers)]
        try:
            if on_start is not None:
                on_start(actors)
            done = _drive(ray, actors, todo, manifest, opts, progress, t0)
        finally:
            close_workers(ray, actors)
    finally:
        if started:
            ray.shutdown()
    recs = {it["id"]: manifest.slides[it["id"]] for it in items}
    failed = sum(1 for it in todo if recs[it["id"]].get("state") == "failed")
    return CohortResult(recs, len(todo), skipped, failed, time.perf_counter() - t0, n_workers, threads, done)


def _drive(ray: Any, actors: list, todo: list[dict], manifest: CohortManifest, opts: CohortOptions,
           progress: Callable[[dict], None] | None, t0: float) -> int:
    """Hand units to idle actors until every slide is finished; return the tiles processed.

    A slide's first unit either finishes it or splits it (``state == "split"``): its region units then go to
    the front of the queue so idle workers share the slide, and once all regions are in, a ``join`` unit labels
    and writes it. A failed region fails the slide (its other regions are dropped, its work folder removed).
    """
    from ray.exceptions import RayActorError, RayTaskError

    queue = list(todo)
    idle = list(range(len(actors)))
    pending: dict[Any, tuple[int, dict]] = {}
    split: dict[str, dict] = {}  # slide id -> {"left": regions still running, "tiles", "maps_s", "closed", ...}
    finished, failed, tiles = 0, 0, 0
    while queue or pending:
        while queue and idle:
            unit = queue.pop(0)
            if unit["id"] in split and split[unit["id"]]["closed"]:
                continue
            a = idle.pop()
            rec = manifest.slides[unit["id"]]
            if "stage" not in unit:
                rec["attempts"] = rec.get("attempts", 0) + 1
            pending[actors[a].run.remote(unit)] = (a, unit)
        if not pending:
            continue
        ready, _ = ray.wait(list(pending), num_returns=1)
        ref = ready[0]
        a, unit = pending.pop(ref)
        idle.append(a)
        sid = unit["id"]
        try:
            res = ray.get(ref)
        except (RayActorError, RayTaskError) as exc:
            res = {"state": "failed", "reason": f"the worker processing {unit['path']} died "
                                                f"{opts.max_retries + 1} times ({type(exc).__name__}); "
                                                f"rerun the cohort to retry it"}
        job = split.get(sid)
        if job is not None and job["closed"]:
            continue  # a region of a slide that already failed
        if res["state"] == "split":
            split[sid] = {"left": res["parts"], "tiles": 0, "maps_s": 0.0, "closed": False,
                          "started": time.perf_counter() - float(res.get("wall_s", 0.0))}
            manifest.update(sid, state="running", parts=res["parts"])
            queue[:0] = [{**unit, "stage": "region", "part": i, "parts": res["parts"]} for i in range(res["parts"])]
            continue
        if res["state"] == "region":
            tiles += int(res["tiles"])
            job["left"] -= 1
            job["tiles"] += int(res["tiles"])
            job["maps_s"] += float(res["maps_s"])
            if job["left"] == 0:
                queue.insert(0, {**unit, "stage": "join", "tiles": job["tiles"], "maps_s": job["maps_s"]})
            continue
        if job is not None:  # the join of a split slide, or the failure of one of its units
            job["closed"] = True
            shutil.rmtree(work_dir(manifest.path.parent, sid), ignore_errors=True)
            res["wall_s"] = time.perf_counter() - job["started"]
            for k in ("stage", "part"):
                res.pop(k, None)
        else:
            tiles += int(res.get("tiles", 0))
        finished += 1
        failed += res["state"] == "failed"
        manifest.update(sid, **res, finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
        if progress is not None:
            el = time.perf_counter() - t0
            progress({"done": finished, "total": len(todo), "failed": failed, "slide": sid,
                      "tiles_per_s": tiles / el if el > 0 else 0.0,
                      "eta_s": el / finished * (len(todo) - finished)})
    return tiles


def summary_json(result: CohortResult) -> dict:
    """JSON-ready summary of a run."""
    d = asdict(result)
    d["slides_per_hour"] = result.ran / result.wall_s * 3600 if result.wall_s else 0.0
    return d
