"""Generation jobs: queued, run one at a time by ``pipelines.jobs.run_jobs`` (the same code as ``volsynth generate``),
the sampler's steps recorded as events, cancellable between steps.

A job writes into a hidden folder that becomes ``workdir/results/<id>`` only when everything is written
(``atomic_output``): a cancelled or failed job leaves nothing behind.
"""

from __future__ import annotations

import queue
import shutil
import threading
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from volsynth.errors import VolsynthError
from volsynth.io.atomic import atomic_output
from volsynth.io.formats import read_label, read_volume, write_volume
from volsynth.io.jsonfile import read_json, write_json
from volsynth.pipelines.jobs import Job, run_jobs
from volsynth.sampling.samplers import observe_steps
from volsynth.studio.catalog import Catalog
from volsynth.studio.uploads import UPLOAD_ID, new_id

RECORD_FILE = "studio.json"  # what the studio records beside a result (request, model, input mask)
INPUT_MASK = "input_mask.nii.gz"
FINISHED = ("done", "failed", "cancelled")


class JobCancelled(Exception):
    """Raised from inside the sampling loop when a job's cancel button was pressed."""


@dataclass
class StudioJob:
    """One generation: its request, its state and the events the page streams."""

    model_id: str
    prompt: str
    seed: int
    options: dict  # GenerationRequest fields besides prompt, seed and mask
    mask: Path | None = None
    mask_source: dict | None = None  # {"upload": id} or {"dataset": id, "case": id}
    id: str = field(default_factory=new_id)
    state: str = "queued"
    error: str | None = None
    created: float = field(default_factory=time.time)
    events: list[dict] = field(default_factory=list)
    cancel: threading.Event = field(default_factory=threading.Event)

    def emit(self, event: dict) -> None:
        """Record an event (appending to a list is atomic under the GIL; readers keep their own index)."""
        self.events.append({"job": self.id, **event})

    def status(self) -> dict:
        """The job's state as JSON."""
        progress = next((e for e in reversed(self.events) if e["event"] == "progress"), None)
        return {"id": self.id, "state": self.state, "error": self.error, "model": self.model_id,
                "progress": progress, "warnings": [e["message"] for e in self.events if e["event"] == "warning"]}


class Worker:
    """A queue of jobs and the one thread that runs them."""

    def __init__(self, workdir: Path, catalog: Catalog) -> None:
        self.results = workdir / "results"
        self.scratch = workdir / "scratch"  # DICOM series being zipped
        self.catalog = catalog
        self.jobs: dict[str, StudioJob] = {}
        self._queue: queue.Queue[StudioJob | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="volsynth-studio-worker", daemon=True)
        self._thread.start()

    def submit(self, job: StudioJob) -> StudioJob:
        """Queue a job (checked by the caller)."""
        self.jobs[job.id] = job
        job.emit({"event": "queued", "position": self._queue.qsize() + 1})
        self._queue.put(job)
        return job

    def cancel(self, job_id: str) -> StudioJob:
        """Ask a queued or running job to stop; a finished one is left as it is."""
        job = self.jobs[job_id]
        if job.state not in FINISHED:
            job.cancel.set()
        return job

    def close(self) -> None:
        """Cancel what is queued or running and stop the thread."""
        for job in self.jobs.values():
            job.cancel.set()
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while (job := self._queue.get()) is not None:
            if job.cancel.is_set():
                job.state = "cancelled"
                job.emit({"event": "cancelled"})
                continue
            job.state = "running"
            job.emit({"event": "started"})
            try:
                self._run(job)
            except JobCancelled:
                job.state = "cancelled"
                job.emit({"event": "cancelled"})
            except VolsynthError as exc:
                job.state, job.error = "failed", exc.one_line()
                job.emit({"event": "failed", "error": job.error})
            except Exception as exc:  # the server keeps serving; the page shows one line
                job.state, job.error = "failed", f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500]
                job.emit({"event": "failed", "error": job.error})
            else:
                job.state = "done"
                job.emit({"event": "done", "result": job.id})

    def _run(self, job: StudioJob) -> None:
        """Generate one job into results/<id>, all or nothing."""
        pipeline = self.catalog.pipeline(job.model_id)
        stage = 0

        def on_step(step: int, total: int) -> None:
            nonlocal stage
            if job.cancel.is_set():
                raise JobCancelled(job.id)
            stage += step == 1
            job.emit({"event": "progress", "stage": stage, "step": step, "total": total})

        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught, observe_steps(on_step), \
                atomic_output(self.results / job.id, overwrite=False) as tmp:
            warnings.simplefilter("always")
            spec = Job(prompt=job.prompt, seed=job.seed, id=job.id, mask=str(job.mask) if job.mask else None,
                       modality=job.options.get("modality"))
            options = {key: value for key, value in job.options.items() if key != "modality"}
            run_jobs(pipeline, [spec], tmp, progress=False, **options)
            if job.mask is not None:
                write_volume(read_label(job.mask), tmp / INPUT_MASK)
            entry = self.catalog.entry(job.model_id)
            write_json(tmp / RECORD_FILE, {"id": job.id, "model": entry.id, "model_name": entry.name,
                                           "kind": entry.kind, "prompt": job.prompt, "seed": job.seed,
                                           "options": job.options, "mask": job.mask_source, "created": job.created,
                                           "seconds": round(time.perf_counter() - start, 3)})
            for warning in caught:
                job.emit({"event": "warning", "message": " ".join(str(warning.message).split())})

    def result_folder(self, job_id: str) -> Path:
        """The finished result folder of an id; KeyError when there is none."""
        folder = self.results / job_id
        if not UPLOAD_ID.fullmatch(job_id) or not (folder / RECORD_FILE).is_file():
            raise KeyError(job_id)
        return folder

    def result(self, job_id: str) -> dict:
        """A finished result's record and the files it offers."""
        folder = self.result_folder(job_id)
        record = read_json(folder / RECORD_FILE)
        record["files"] = [name for name, path in self.files(job_id).items() if path.is_file()]
        return record

    def files(self, job_id: str) -> dict[str, Path]:
        """The downloadable files of a result, by the name the page asks for."""
        folder = self.result_folder(job_id)
        return {"image.nii.gz": folder / f"{job_id}_image.nii.gz", "label.nii.gz": folder / f"{job_id}_label.nii.gz",
                "sidecar.json": folder / f"{job_id}.json", "mask.nii.gz": folder / INPUT_MASK}

    def dicom_zip(self, job_id: str, kind: str) -> Path:
        """The result's image or label map as a zipped DICOM series (made once, atomically)."""
        source = self.files(job_id)[f"{kind}.nii.gz"]
        if not source.is_file():
            raise KeyError(kind)
        target = source.parent / f"{kind}.dicom.zip"
        if target.is_file():
            return target
        series = self.scratch / new_id() / f"{job_id}_{kind}"
        try:
            obj = read_label(source) if kind == "label" else read_volume(source)
            write_volume(obj, series, description=f"volsynth synthetic {kind}")
            with atomic_output(target) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
                for path in sorted(series.iterdir()):
                    archive.write(path, f"{series.name}/{path.name}")
        finally:
            shutil.rmtree(series.parent, ignore_errors=True)  # made here, above
        return target

    def history(self) -> list[dict]:
        """Every finished result of this workdir, newest first."""
        if not self.results.is_dir():
            return []
        records = []
        for folder in self.results.iterdir():
            if UPLOAD_ID.fullmatch(folder.name) and (folder / RECORD_FILE).is_file():
                record = read_json(folder / RECORD_FILE)
                records.append({key: record.get(key) for key in ("id", "model", "model_name", "prompt", "seed",
                                                                 "created", "seconds", "mask")})
        return sorted(records, key=lambda r: r.get("created") or 0, reverse=True)
