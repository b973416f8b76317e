"""The studio's HTTP API and page (FastAPI). ``create_app(...)`` builds it; ``volsynth studio`` serves it.

Errors a user can cause come back as ``{"error": "<one line>"}`` with status 400 (404 for an unknown id, 413 for an
oversized upload); the server keeps serving. Ids are made by the server; files are looked up by id and a fixed
name, never by a path taken from a request.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager
from dataclasses import fields
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict

from volsynth.errors import ConfigError, VolsynthError
from volsynth.pipelines.base import GenerationRequest
from volsynth.studio.catalog import Catalog
from volsynth.studio.uploads import Uploads, UploadTooLarge
from volsynth.studio.worker import FINISHED, StudioJob, Worker

STATIC = Path(__file__).parent / "static"
VIEWER = STATIC / "vendor" / "niivue.js"
VIEWER_HINT = "the 3D viewer (NiiVue) is not installed: run `make setup` on a machine with npm (Node.js)"
REQUEST_FIELDS = {f.name for f in fields(GenerationRequest)}


class GenerateBody(BaseModel):
    """What the page posts to start a generation; fields left out (None) take the model's defaults."""

    model_config = ConfigDict(extra="forbid")
    model: str
    prompt: str = ""
    seed: int = 0
    mask: str | None = None  # an upload id
    dataset: str | None = None
    case: str | None = None
    steps: int | None = None
    sampler: str | None = None
    text_guidance: float | None = None
    mask_guidance: float | None = None
    controlnet_scale: float | None = None
    modality: str | None = None
    refine: bool | None = None
    refiner_guidance: float | None = None
    refiner_steps: int | None = None


def _error(exc: VolsynthError, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": exc.one_line()}, status_code=status)


def _not_found(what: str = "not found") -> JSONResponse:
    return JSONResponse({"error": what}, status_code=404)


def create_app(workdir: Path, model_folders: list[Path], dataset_folders: list[Path] | None = None,
               max_upload_mb: float = 512) -> FastAPI:
    """The studio app: models from ``model_folders``, masks from uploads and ``dataset_folders``, everything it
    writes under ``workdir``."""
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    catalog = Catalog([Path(f) for f in model_folders], [Path(d) for d in dataset_folders or []])
    uploads = Uploads(workdir, int(max_upload_mb * 2**20))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.worker = Worker(workdir, catalog)
        yield
        app.state.worker.close()

    app = FastAPI(title="volsynth studio", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.catalog, app.state.uploads, app.state.workdir = catalog, uploads, workdir

    def worker() -> Worker:
        return app.state.worker

    @app.get("/")
    def page() -> FileResponse:
        """The studio page."""
        return FileResponse(STATIC / "index.html")

    @app.get("/api/status")
    def status() -> dict:
        """Whether the viewer is installed, and the upload limit."""
        return {"viewer": VIEWER.is_file(), "viewer_hint": None if VIEWER.is_file() else VIEWER_HINT,
                "max_upload_mb": max_upload_mb, "datasets": catalog.dataset_summaries()}

    @app.get("/api/models")
    def models() -> list[dict]:
        """The models on offer."""
        return catalog.summaries()

    @app.get("/api/models/{model_id}")
    def model_card(model_id: str):
        """A model's card summary."""
        if model_id not in catalog.models:
            return _not_found("unknown model")
        try:
            return catalog.card(model_id)
        except VolsynthError as exc:
            return _error(exc)

    @app.get("/api/models/{model_id}/canvas.nii")
    def canvas(model_id: str, modality: str | None = None):
        """An empty volume in the model's grid, to draw a mask on."""
        if model_id not in catalog.models:
            return _not_found("unknown model")
        try:
            return Response(catalog.canvas(model_id, modality), media_type="application/octet-stream")
        except VolsynthError as exc:
            return _error(exc)

    @app.post("/api/masks")
    async def upload_mask(request: Request, filename: str = "mask.nii.gz"):
        """Upload a mask as the request body (NIfTI, NRRD, MHA, or a zipped DICOM series)."""
        declared = request.headers.get("content-length")
        try:
            record = await uploads.receive(filename, request.stream(),
                                           int(declared) if declared and declared.isdigit() else None)
        except UploadTooLarge as exc:
            return _error(exc, 413)
        except VolsynthError as exc:
            return _error(exc)
        return record

    @app.get("/api/masks/{upload_id}/mask.nii.gz")
    def mask_file(upload_id: str):
        """An uploaded mask, as the studio stored it."""
        try:
            return FileResponse(uploads.mask_path(upload_id), media_type="application/gzip")
        except VolsynthError:
            return _not_found("unknown mask")

    @app.post("/api/jobs")
    def generate(body: GenerateBody):
        """Check a generation request against the model and queue it."""
        try:
            job = _job(body)
        except VolsynthError as exc:
            return _error(exc)
        return worker().submit(job).status()

    def _job(body: GenerateBody) -> StudioJob:
        pipeline = catalog.pipeline(body.model)
        mask = source = None
        if body.mask and (body.dataset or body.case):
            raise ConfigError(None, "give an uploaded mask or a dataset case, not both")
        if body.mask:
            mask, source = uploads.mask_path(body.mask), {"upload": body.mask}
        elif body.dataset or body.case:
            mask = catalog.case_label(body.dataset or "", body.case or "")
            source = {"dataset": body.dataset, "case": body.case}
        options = {key: value for key, value in body.model_dump().items()
                   if key in REQUEST_FIELDS - {"prompt", "seed", "mask"} and value is not None}
        request = GenerationRequest(prompt=body.prompt, seed=body.seed, mask=mask, **options)
        pipeline.check(request)  # a refused option or a bad setting is an error now, not a failed job
        pipeline.scheduler(pipeline.resolve(request)["sampler"])
        return StudioJob(body.model, body.prompt, body.seed, options, mask, source)

    @app.get("/api/jobs/{job_id}")
    def job_status(job_id: str):
        """A job's state (queued, running, done, failed, cancelled) and its last progress."""
        job = worker().jobs.get(job_id)
        return job.status() if job is not None else _not_found("unknown job")

    @app.post("/api/jobs/{job_id}/cancel")
    def cancel(job_id: str):
        """Cancel a queued or running job."""
        if job_id not in worker().jobs:
            return _not_found("unknown job")
        return worker().cancel(job_id).status()

    @app.get("/api/jobs/{job_id}/events")
    async def events(job_id: str, request: Request):
        """The job's events as server-sent events, until it is finished."""
        job = worker().jobs.get(job_id)
        if job is None:
            return _not_found("unknown job")

        async def stream():
            sent = 0
            while True:
                while sent < len(job.events):
                    event = job.events[sent]
                    sent += 1
                    yield f"event: {event['event']}\ndata: {json.dumps(event)}\n\n"
                if job.state in FINISHED and sent >= len(job.events):
                    return
                if await request.is_disconnected():
                    return
                await asyncio.sleep(0.05)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.get("/api/results")
    def history() -> list[dict]:
        """This workdir's generations, newest first."""
        return worker().history()

    @app.get("/api/results/{job_id}")
    def result(job_id: str):
        """A result's record: request, model, input mask, files."""
        try:
            return worker().result(job_id)
        except KeyError:
            return _not_found("unknown result")

    @app.get("/api/results/{job_id}/{name}")
    def result_file(job_id: str, name: str):
        """A result's file: image.nii.gz, label.nii.gz, mask.nii.gz, sidecar.json, image.dicom.zip, label.dicom.zip."""
        try:
            if name in ("image.dicom.zip", "label.dicom.zip"):
                path = worker().dicom_zip(job_id, name.split(".")[0])
            else:
                path = worker().files(job_id)[name]
        except KeyError:
            return _not_found()
        except VolsynthError as exc:
            return _error(exc)
        if not path.is_file():
            return _not_found()
        media = "application/json" if name.endswith(".json") else "application/octet-stream"
        return FileResponse(path, media_type=media, filename=f"{job_id}_{name}")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
