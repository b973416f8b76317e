"""The studio's HTTP API with FastAPI's TestClient: models, uploads, generation with progress events, cancel,
downloads, traversal attempts and the upload limit."""

from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.studio.conftest import liver_mask
from volsynth.io import read_label, read_volume, write_volume
from volsynth.studio.worker import Worker

pytest.importorskip("fastapi")


def _upload(client, path: Path, name: str | None = None):
    return client.post(f"/api/masks?filename={name or path.name}", content=path.read_bytes())


def _events(client, job_id: str) -> list[dict]:
    with client.stream("GET", f"/api/jobs/{job_id}/events") as stream:
        return [json.loads(line[5:]) for line in stream.iter_lines() if line.startswith("data:")]


def _files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def test_models_and_card(client):
    ids = {m["id"] for m in client.get("/api/models").json()}
    assert {"tiny-abdomen", "tiny-sgd", "tiny-hierarchical"} <= ids
    card = client.get("/api/models/tiny-abdomen").json()
    assert card["kind"] == "latent" and card["grid"]["size"] == [32, 32, 32]
    assert [c["name"] for c in card["classes"]][:4] == ["liver", "portal_vein", "hepatic_vein", "tumour"]
    assert all(c["colour"].startswith("#") for c in card["classes"]) and card["takes_mask"]
    assert "controlnet_scale" in card["options"] and "refiner_steps" not in card["options"]  # no refiner
    hierarchical = client.get("/api/models/tiny-hierarchical").json()
    assert not hierarchical["takes_mask"] and "mask_guidance" not in hierarchical["options"]
    assert client.get("/api/models/nope").status_code == 404


def test_canvas_is_the_models_grid(client, tmp_path):
    data = client.get("/api/models/tiny-abdomen/canvas.nii").content
    (tmp_path / "canvas.nii").write_bytes(data)
    canvas = read_volume(tmp_path / "canvas.nii")
    assert canvas.shape == (32, 32, 32)
    np.testing.assert_allclose(canvas.spacing, 8.3203125, atol=1e-4)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_upload_reads_every_format(client, tmp_path, suffix):
    path = write_volume(liver_mask(), tmp_path / f"mask{suffix}")
    response = _upload(client, path)
    assert response.status_code == 200, response.text
    record = response.json()
    assert record["shape"] == [20, 18, 16] and record["labels"] == [1, 4] and record["name"] == path.name
    stored = read_label(client.app.state.workdir / "uploads" / record["id"] / "mask.nii.gz")
    np.testing.assert_array_equal(stored.array, liver_mask().array)


def test_upload_zipped_dicom_series(client, tmp_path):
    series = write_volume(liver_mask(), tmp_path / "series")  # a folder: a DICOM series
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(series.iterdir()):
            archive.write(path, f"case/{path.name}")
    response = client.post("/api/masks?filename=series.zip", content=buffer.getvalue())
    assert response.status_code == 200, response.text
    assert response.json()["shape"] == [20, 18, 16]


@pytest.mark.parametrize("name,content,message", [
    ("broken.nii.gz", b"\x1f\x8b\x08\x00garbage", "broken.nii.gz"),
    ("notes.txt", b"hello", "not a mask file"),
    ("empty.zip", b"PK\x05\x06" + b"\x00" * 18, "no files"),
    ("bad.zip", b"not a zip at all", "not a valid zip"),
])
def test_bad_upload_is_one_line_and_the_server_keeps_serving(client, workdir, name, content, message):
    response = client.post(f"/api/masks?filename={name}", content=content)
    assert response.status_code == 400
    error = response.json()["error"]
    assert message in error and "\n" not in error and "Traceback" not in error
    assert str(workdir) not in error  # the message names the user's file, not the workdir's copy
    assert not _files_under(workdir / "uploads")  # nothing of a refused upload stays
    assert client.get("/api/models").status_code == 200


def test_oversized_upload_is_refused(client, workdir, tmp_path):
    big = np.zeros((128, 128, 80), dtype=np.int16)  # 2.6 MB uncompressed, limit 1 MB
    path = tmp_path / "big.nii"
    nib.save(nib.Nifti1Image(big, np.eye(4)), str(path))
    response = _upload(client, path)
    assert response.status_code == 413 and "limit of 1 MB" in response.json()["error"]

    def chunks():  # no Content-Length: the limit holds while streaming
        data = path.read_bytes()
        for start in range(0, len(data), 65536):
            yield data[start:start + 65536]

    response = client.post("/api/masks?filename=big.nii", content=chunks())
    assert response.status_code == 413
    assert not _files_under(workdir / "uploads")


def test_generate_streams_progress_and_writes_results(client, workdir, mask_file, tmp_path):
    mask_id = _upload(client, mask_file).json()["id"]
    response = client.post("/api/jobs", json={"model": "tiny-abdomen", "prompt": "One 20 mm lesion.", "seed": 3,
                                              "steps": 4, "mask": mask_id})
    assert response.status_code == 200, response.text
    job_id = response.json()["id"]
    events = _events(client, job_id)
    progress = [e for e in events if e["event"] == "progress"]
    assert [e["step"] for e in progress] == [1, 2, 3, 4] and {e["total"] for e in progress} == {4}
    assert events[-1]["event"] == "done"
    result = client.get(f"/api/results/{job_id}").json()
    assert {"image.nii.gz", "label.nii.gz", "sidecar.json", "mask.nii.gz"} <= set(result["files"])
    assert result["mask"] == {"upload": mask_id} and result["options"] == {"steps": 4}
    image_bytes = client.get(f"/api/results/{job_id}/image.nii.gz").content
    (tmp_path / "image.nii.gz").write_bytes(image_bytes)
    image = read_volume(tmp_path / "image.nii.gz")
    np.testing.assert_allclose(image.affine, liver_mask().affine, atol=1e-5)  # the mask's geometry
    assert image.shape == liver_mask().shape
    sidecar = client.get(f"/api/results/{job_id}/sidecar.json").json()
    assert sidecar["seed"] == 3 and sidecar["steps"] == 4 and sidecar["prompt"] == "One 20 mm lesion."
    dicom = client.get(f"/api/results/{job_id}/label.dicom.zip")
    assert dicom.status_code == 200
    assert len(zipfile.ZipFile(io.BytesIO(dicom.content)).namelist()) == liver_mask().shape[2]
    assert [h["id"] for h in client.get("/api/results").json()] == [job_id]
    written = {p.relative_to(workdir).parts[0] for p in _files_under(workdir)}
    assert written <= {"uploads", "results"}


def test_same_request_same_volume_as_generate(client, mask_file):
    """The studio runs the generate code path: the same request gives the same bytes."""
    mask_id = _upload(client, mask_file).json()["id"]
    ids = []
    for _ in range(2):
        ids.append(client.post("/api/jobs", json={"model": "tiny-abdomen", "steps": 3, "mask": mask_id}).json()["id"])
        _events(client, ids[-1])
    first, second = (client.get(f"/api/results/{i}/sidecar.json").json()["image_sha256"] for i in ids)
    assert first == second


def test_refused_options_and_unknown_ids_are_400(client):
    refused = client.post("/api/jobs", json={"model": "tiny-hierarchical", "mask_guidance": 2.0})
    assert refused.status_code == 400 and "--mask-guidance" in refused.json()["error"]
    assert client.post("/api/jobs", json={"model": "nope"}).status_code == 400
    missing = client.post("/api/jobs", json={"model": "tiny-abdomen", "mask": "0123456789ab"})
    assert missing.status_code == 400 and "unknown mask" in missing.json()["error"]
    assert client.post("/api/jobs", json={"model": "tiny-abdomen", "path": "/etc"}).status_code == 422
    bad_sampler = client.post("/api/jobs", json={"model": "tiny-abdomen", "sampler": "euler"})
    assert bad_sampler.status_code == 400


def test_a_failed_job_leaves_nothing(client, workdir, tmp_path):
    wrong = liver_mask()
    wrong.array[0, 0, 0] = 42  # an id the model does not have: fails when the job reads the mask
    mask_id = _upload(client, write_volume(wrong, tmp_path / "wrong.nii.gz")).json()["id"]
    job_id = client.post("/api/jobs", json={"model": "tiny-abdomen", "steps": 2, "mask": mask_id}).json()["id"]
    events = _events(client, job_id)
    assert events[-1]["event"] == "failed" and "unknown label ids [42]" in events[-1]["error"]
    assert not (workdir / "results").exists() or not any((workdir / "results").iterdir())


def test_cancel_a_running_job_leaves_no_file(client, workdir, mask_file, monkeypatch):
    started = []
    original = Worker._run

    def slow_run(self, job):  # hold the job at its second step until it is cancelled
        from volsynth.sampling.samplers import observe_steps

        def hold(step, total):
            if step == 2:
                started.append(job.id)
                deadline = time.time() + 30
                while not job.cancel.is_set() and time.time() < deadline:
                    time.sleep(0.01)

        with observe_steps(hold):
            original(self, job)

    monkeypatch.setattr(Worker, "_run", slow_run)
    mask_id = _upload(client, mask_file).json()["id"]
    job_id = client.post("/api/jobs", json={"model": "tiny-abdomen", "steps": 6, "mask": mask_id}).json()["id"]
    queued = client.post("/api/jobs", json={"model": "tiny-abdomen", "steps": 6, "mask": mask_id}).json()["id"]
    deadline = time.time() + 60
    while not started and time.time() < deadline:
        time.sleep(0.02)
    assert started == [job_id]
    assert client.get(f"/api/jobs/{queued}").json()["state"] == "queued"  # one at a time
    assert client.post(f"/api/jobs/{queued}/cancel").status_code == 200
    assert client.post(f"/api/jobs/{job_id}/cancel").status_code == 200
    events = _events(client, job_id)
    assert events[-1]["event"] == "cancelled" and max(e.get("step", 0) for e in events) <= 3
    assert _events(client, queued)[-1]["event"] == "cancelled"
    results = workdir / "results"
    assert not results.exists() or not any(results.iterdir())  # no result, no hidden partial folder
    assert client.get(f"/api/results/{job_id}").status_code == 404


@pytest.mark.parametrize("url", [
    "/api/results/../../etc/passwd", "/api/results/..%2F..%2Fetc%2Fpasswd", "/api/results/%2e%2e/uploads",
    "/api/masks/..%2Fresults/mask.nii.gz", "/static/..%2F..%2Fserver.py", "/static/../server.py",
    "/api/results/0123456789ab/..%2F..%2Fuploads", "/api/models/..%2F..%2Fmodels%2Ftiny-abdomen",
    "/api/results/0123456789ab/image.nii.gz", "/api/jobs/..%2F/events",
])
def test_traversal_is_404(client, url):
    assert client.get(url).status_code == 404


def test_traversal_into_an_existing_result_is_404(client, workdir, mask_file):
    mask_id = _upload(client, mask_file).json()["id"]
    job_id = client.post("/api/jobs", json={"model": "tiny-abdomen", "steps": 2, "mask": mask_id}).json()["id"]
    _events(client, job_id)
    assert client.get(f"/api/results/{job_id}/image.nii.gz").status_code == 200
    for name in (f"..%2F{job_id}%2F{job_id}.json", f"{job_id}.json", "studio.json", "..%2F..%2Fuploads"):
        assert client.get(f"/api/results/{job_id}/{name}").status_code == 404
    assert client.get(f"/api/masks/{mask_id}/..%2Fupload.json").status_code == 404
