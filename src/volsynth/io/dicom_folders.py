"""Finding DICOM series in folders, and describing them to a person choosing among several."""

from __future__ import annotations

import os
from pathlib import Path

import pydicom
import SimpleITK as sitk


def series_ids(reader: sitk.ImageSeriesReader, folder: Path) -> list[str]:
    """The SeriesInstanceUIDs of the DICOM files directly in ``folder`` (ITK's warning for a folder without one is
    kept off the terminal: the caller says it in its own words)."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        return list(reader.GetGDCMSeriesIDs(str(folder)))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def describe_series(folder: Path, series_uid: str, reader: sitk.ImageSeriesReader) -> str:
    """One series of a folder, for a person choosing among several: UID (modality, description, slice count)."""
    files = list(reader.GetGDCMSeriesFileNames(str(folder), series_uid))
    try:
        ds = pydicom.dcmread(files[0], stop_before_pixels=True)
        about = [str(ds.get("Modality", "") or ""), str(ds.get("SeriesDescription", "") or "")]
    except Exception:  # an unreadable first file: the UID and count still help
        about = []
    return f"{series_uid} ({', '.join([*(a for a in about if a), f'{len(files)} file(s)'])})"


def series_folders(root: Path, limit: int = 2000) -> list[Path]:
    """Folders below ``root`` that hold a DICOM series themselves, in sorted order (at most ``limit`` folders are
    looked at, so that a huge tree does not stall an error message)."""
    reader, found, looked = sitk.ImageSeriesReader(), [], 0
    for current, dirs, files in os.walk(root):
        dirs.sort()
        if Path(current) == root or not files:
            continue
        looked += 1
        if looked > limit:
            break
        if series_ids(reader, Path(current)):
            found.append(Path(current))
    return found
