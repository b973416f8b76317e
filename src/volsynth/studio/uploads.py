"""Uploaded masks: streamed into the workdir under a server-made id, size-limited, read by volsynth's readers and
kept as one NIfTI label map. A file that does not read is removed and reported in one line."""

from __future__ import annotations

import re
import shutil
import uuid
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

from volsynth.errors import ReadError, VolsynthError
from volsynth.io.formats import read_label, write_volume
from volsynth.io.jsonfile import read_json, write_json

# What an upload may be, by the end of its file name (the name is used for nothing else).
UPLOAD_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".zip")
MASK_FILE, RECORD_FILE = "mask.nii.gz", "upload.json"
UPLOAD_ID = re.compile(r"[0-9a-f]{12}")


class UploadTooLarge(VolsynthError):
    """An upload over the studio's size limit."""


def new_id() -> str:
    """A fresh server-made id (12 hex digits)."""
    return uuid.uuid4().hex[:12]


def upload_suffix(filename: str) -> str:
    """The accepted suffix a file name ends with; another is a ReadError."""
    lower = filename.lower()
    for suffix in UPLOAD_SUFFIXES:
        if lower.endswith(suffix):
            return suffix
    raise ReadError(filename, "not a mask file this studio reads",
                    "upload .nii.gz, .nii, .nrrd, .mha, or a .zip of one DICOM series")


def display_name(filename: str) -> str:
    """The user's file name as shown on the page (no folders, printable, at most 80 characters)."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(c for c in name if c.isprintable())[:80] or "mask"


class Uploads:
    """The masks uploaded into ``workdir/uploads``: one folder per id holding ``mask.nii.gz`` and ``upload.json``."""

    def __init__(self, workdir: Path, max_bytes: int) -> None:
        self.root = workdir / "uploads"
        self.max_bytes = max_bytes

    async def receive(self, filename: str, chunks: AsyncIterator[bytes], declared: int | None = None) -> dict:
        """Store, read and convert one upload; returns its record. Nothing of a refused upload stays behind."""
        name = display_name(filename)
        suffix = upload_suffix(name)
        if declared is not None and declared > self.max_bytes:
            raise UploadTooLarge(name, f"file is {declared / 2**20:.1f} MB, over the limit of "
                                       f"{self.max_bytes / 2**20:.0f} MB", "start the studio with a larger "
                                                                            "--max-upload-mb")
        upload_id = new_id()
        folder = self.root / upload_id
        folder.mkdir(parents=True)
        try:
            raw = folder / f"upload{suffix}"
            size = 0
            with raw.open("wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise UploadTooLarge(name, f"file is over the limit of {self.max_bytes / 2**20:.0f} MB",
                                             "start the studio with a larger --max-upload-mb")
                    out.write(chunk)
            record = self._convert(raw, suffix, name, upload_id)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)  # the folder and everything in it were made here
            raise
        return record

    def _convert(self, raw: Path, suffix: str, name: str, upload_id: str) -> dict:
        """Read the stored file as a label map, keep it as mask.nii.gz, remove the original."""
        source = raw
        if suffix == ".zip":
            source = self._unzip(raw, name)
        try:
            label = read_label(source)
        except VolsynthError as exc:  # name the user's file, not the workdir's copy (readers may quote its path)
            problem, hint = (text.replace(str(source), name) if text else text for text in (exc.problem, exc.hint))
            raise type(exc)(name, problem, hint) from exc
        write_volume(label, raw.parent / MASK_FILE)
        if source.is_dir():
            shutil.rmtree(source)
        raw.unlink()
        record = {"id": upload_id, "name": name, "shape": list(label.shape),
                  "spacing": [round(float(s), 3) for s in label.spacing], "labels": label.present()}
        write_json(raw.parent / RECORD_FILE, record)
        return record

    def _unzip(self, raw: Path, name: str) -> Path:
        """Extract a zipped DICOM series flat into one folder under server-made names (member paths are never
        used), refusing archives that unpack over the size limit."""
        try:
            with zipfile.ZipFile(raw) as archive:
                members = [m for m in archive.infolist() if not m.is_dir()
                           and not m.filename.rsplit("/", 1)[-1].startswith(".")]
                if not members:
                    raise ReadError(name, "the zip holds no files", "zip the files of one DICOM series")
                if sum(m.file_size for m in members) > self.max_bytes:
                    raise UploadTooLarge(name, f"the zip unpacks to over {self.max_bytes / 2**20:.0f} MB")
                series = raw.parent / "series"
                series.mkdir()
                left = self.max_bytes  # counted while unpacking too: a member's declared size may lie
                for number, member in enumerate(members):
                    with archive.open(member) as src, (series / f"{number:05d}.dcm").open("wb") as dst:
                        while chunk := src.read(1 << 20):
                            left -= len(chunk)
                            if left < 0:
                                raise UploadTooLarge(name, f"the zip unpacks to over {self.max_bytes / 2**20:.0f} MB")
                            dst.write(chunk)
        except zipfile.BadZipFile as exc:
            raise ReadError(name, f"not a valid zip file ({exc})") from exc
        return series

    def mask_path(self, upload_id: str) -> Path:
        """The stored mask of an upload id; an unknown id is a ConfigError."""
        path = self.root / upload_id / MASK_FILE
        if not UPLOAD_ID.fullmatch(upload_id) or not path.is_file():
            raise ReadError(None, f"unknown mask '{upload_id[:40]}'", "upload or draw the mask again")
        return path

    def record(self, upload_id: str) -> dict:
        """The record of an upload id."""
        return read_json(self.mask_path(upload_id).parent / RECORD_FILE)
