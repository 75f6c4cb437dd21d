"""Run a sweep: the F16 reference, then every grid and peer point (convert + quality in parallel, speed alone).

Folder layout (OUT): files/KEY.gguf (deleted after measuring unless keep_files; the F16 file
is kept, it is the KL base), points/KEY.json (one result per point, written as soon as it is
known), logs/KEY.*.log (each child's output), source.json (the source hash, by size and mtime).
A rerun reads points/ and skips every point already measured ("ok" or "unavailable"); "error"
points are retried. Speed and memory are measured one file at a time after all conversions,
so that concurrent jobs do not slow each other's timings.
"""
from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import InputError
from . import measure, peers
from .grid import Point, file_sha256, missing_keywords, point_key, source_hash
from .measure import MeasureError, Setup

DONE = ("ok", "unavailable")


@dataclass
class Job:
    """One file to make and measure."""

    key: str
    method: str  # "F16", "edgeslim", "llama.cpp", "mlx-lm"
    point: Point | peers.PeerPoint
    record: dict  # the fixed fields of its result


class Sweep:
    """State shared by the phases: paths, setup, source hash, the F16 reference."""

    def __init__(self, src: str, out: Path, setup: Setup, keep_files: bool = False, llama_bin: str | None = None,
                 progress: bool | None = None):
        if not Path(src).exists():
            raise InputError(f"model {src} does not exist; give an HF folder or an F16/F32 GGUF file")
        self.src, self.out, self.setup = str(src), Path(out), setup
        self.keep_files, self.progress = keep_files, progress
        self.bin_dir = peers.llama_bin(llama_bin)
        for sub in ("files", "points", "logs"):
            (self.out / sub).mkdir(parents=True, exist_ok=True)
        self.source = source_hash(self.src, self.out / "source.json")
        self.setup_key = setup.key_fields(_text_sha(setup.text), _text_sha(setup.task_text))
        self.f16_job = self.job_for(Point(16))
        self.f16_path = self.file(self.f16_job)
        self.n_params: int | None = None

    # -- jobs ---------------------------------------------------------------------------------
    def job_for(self, point) -> Job:
        if isinstance(point, peers.PeerPoint):
            key = point_key(point.key_fields(), self.source, self.setup_key)
            rec = {"method": point.method, "label": point.label(), "series": point.series(), "bits": point.bits,
                   "config": point.config, "sparsity": 0.0}
            return Job(key, point.method, point, rec)
        key = point_key(point, self.source, self.setup_key)
        method = "F16" if point.bits == 16 else "edgeslim"
        rec = {"method": method, "label": point.label(), "series": point.series(), **asdict(point)}
        return Job(key, method, point, rec)

    def file(self, job: Job) -> Path:
        return self.out / "files" / f"{job.key}.gguf"

    def log(self, job: Job, what: str) -> Path:
        return self.out / "logs" / f"{job.key}.{what}.log"

    def load(self, job: Job) -> dict | None:
        p = self.out / "points" / f"{job.key}.json"
        return json.loads(p.read_text()) if p.is_file() else None

    def save(self, job: Job, res: dict) -> dict:
        p = self.out / "points" / f"{job.key}.json"
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=1))
        os.replace(tmp, p)
        return res

    # -- making files -------------------------------------------------------------------------------
    def make_file(self, job: Job) -> dict:
        """Write the job's GGUF; extra facts from the maker. Raises peers.Unavailable when it cannot be made."""
        path = self.file(job)
        if job.method in ("edgeslim", "F16"):
            from ..convert.pipeline import convert

            missing = missing_keywords(job.point, convert)
            if missing:
                raise peers.Unavailable(f"convert() has no {', '.join(missing)} keyword yet (pruning not merged)")
            return measure.convert_file(self.src, path, job.point.convert_kwargs(), self.log(job, "convert"))
        t0 = time.perf_counter()
        extra = peers.build(job.point, self.src, self.f16_path, path, self.out / "files", self.bin_dir,
                            self.log(job, "convert"))
        return {**extra, "convert_s": round(time.perf_counter() - t0, 2)}

    def reference(self, fresh: bool) -> dict:
        """The F16 file (made once, kept) and its measured result."""
        if fresh:
            self.f16_path.unlink(missing_ok=True)
        res = None if fresh else self.load(self.f16_job)
        if res is None or res.get("status") != "ok" or not self.f16_path.is_file():
            res = self.measure_quality(self.f16_job)
            if res["status"] != "measured":
                raise InputError(f"the F16 reference failed: {res.get('note')}")
            res = self.measure_speed(self.f16_job, res)
        self.n_params = res["n_params"]
        return res

    # -- phases ---------------------------------------------------------------------------------------
    def measure_quality(self, job: Job) -> dict:
        """Phase A for one job: make the file, its facts and its quality; status "measured" (or why not)."""
        base = {"key": job.key, **job.record}
        try:
            extra = self.make_file(job) if not (job.method == "F16" and self.f16_path.is_file()) else {}
            facts = measure.file_facts(self.file(job), self.n_params)
            kl_base = None if job.method == "F16" else self.f16_path
            q = measure.quality(self.file(job), kl_base, self.setup, self.log(job, "quality"))
            res = {**base, "status": "measured", **extra, **facts, **q}
        except peers.Unavailable as err:
            res = {**base, "status": "unavailable", "note": str(err)}
        except (MeasureError, RuntimeError, OSError) as err:
            res = {**base, "status": "error", "note": f"{type(err).__name__}: {err}"[:500]}
        return self.save(job, res)

    def measure_speed(self, job: Job, res: dict) -> dict:
        """Phase B for one job: decode speed and peak RSS in a child of its own; status "ok"."""
        path = self.file(job)
        try:
            if not path.is_file():
                self.make_file(job)
            res = {**res, **measure.speed(path, self.setup, self.log(job, "speed")), "status": "ok"}
            if job.method != "F16" and not self.keep_files:
                path.unlink(missing_ok=True)
        except (MeasureError, RuntimeError, OSError, peers.Unavailable) as err:
            res = {**res, "status": "error", "note": f"speed: {type(err).__name__}: {err}"[:500]}
        return self.save(job, res)


def run_sweep(sw: Sweep, points: list, jobs: int = 1, fresh: bool = False) -> list[dict]:
    """Measure the F16 reference and every point (edgeslim Points and peers.PeerPoints); all results."""
    from tqdm import tqdm

    f16 = sw.reference(fresh)
    todo = [sw.job_for(p) for p in points]
    results = {j.key: (None if fresh else sw.load(j)) for j in todo}
    phase_a = [j for j in todo if results[j.key] is None or results[j.key]["status"] == "error"]
    with tqdm(total=len(phase_a), desc="convert + quality", unit="point", disable=_quiet(sw)) as bar:
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            futures = {pool.submit(sw.measure_quality, j): j for j in phase_a}
            for fut in as_completed(futures):
                results[futures[fut].key] = fut.result()
                bar.update(1)
    phase_b = [j for j in todo if results[j.key]["status"] == "measured"]
    for j in tqdm(phase_b, desc="speed + memory", unit="point", disable=_quiet(sw)):
        results[j.key] = sw.measure_speed(j, results[j.key])
    return [f16] + [results[j.key] for j in todo]


def _quiet(sw: Sweep) -> bool | None:
    return None if sw.progress is None else not sw.progress


def _text_sha(path: str | None) -> str:
    if path is None:
        return "builtin:" + file_sha256(measure._builtin_text())[:16]
    p = Path(path)
    if not p.is_file():
        raise InputError(f"text file {path} does not exist; check the path")
    return file_sha256(p)
