"""DICOM Segmentation objects (highdicom): a label map written as a binary SEG that references its image series,
and a SEG read back as a ``LabelMap``.

Writing: one segment per class present in the label map, its class name as the segment label and its label id
as the segmented property type's code value in the private coding scheme ``99VOLSYNTH`` (so ids survive a round
trip even when a class between them is absent); the SEG shares the image series' Study and Frame of Reference,
references every slice of it, and is marked synthetic (content label, description and algorithm identification:
AUTOMATIC, ``volsynth``). Every slice is stored for every segment (empty frames are kept) so the SEG alone holds
the label map's full grid.

Reading: BINARY and LABELMAP segmentations; segment ``n`` becomes label id ``n`` unless its type carries a
``99VOLSYNTH`` id; the geometry comes from the SEG's plane positions and orientation, with the slice axis along
the image plane's normal (as the DICOM series reader orders slices).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from volsynth import __version__
from volsynth.errors import GeometryError, ReadError, WriteError
from volsynth.io.atomic import atomic_output
from volsynth.io.dicom import SYNTHETIC_MARK
from volsynth.io.volume import LabelMap

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
LABEL_SCHEME = "99VOLSYNTH"  # private coding scheme: code value = the volsynth label id
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
_IJK_TO_KJI = [2, 1, 0, 3]  # volsynth arrays are (i, j, k); highdicom volumes (slice, row, column)


def _sop_class(path: Path) -> str | None:
    """SOPClassUID of a DICOM file, or None when the file is not DICOM."""
    try:
        return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"]).SOPClassUID)
    except Exception:  # not DICOM, or no SOPClassUID: not a SEG
        return None


def seg_file(path: str | Path) -> Path | None:
    """The DICOM SEG file ``path`` names (the file itself, or a folder holding exactly one file that is a SEG)."""
    path = Path(path)
    if path.is_dir():
        files = [p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")]
        path = files[0] if len(files) == 1 else None
        if path is None:
            return None
    if path.is_file() and _sop_class(path) == SEGMENTATION_STORAGE:
        return path
    return None


def _source_images(folder: Path) -> list[pydicom.Dataset]:
    """The headers of an image series folder's slice files, in instance order."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise WriteError(folder, "image series folder is empty: a DICOM SEG needs its source images")
    try:
        headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    except Exception as exc:
        raise ReadError(folder, f"unreadable image series ({exc})") from exc
    return sorted(headers, key=lambda ds: int(ds.InstanceNumber))


def _segment_description(number: int, label_id: int, name: str) -> hd.seg.SegmentDescription:
    algorithm = hd.AlgorithmIdentificationSequence(name="volsynth", version=__version__,
                                                   family=codes.cid7162.ArtificialIntelligence)
    return hd.seg.SegmentDescription(
        segment_number=number, segment_label=name[:64], segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=hd.sr.CodedConcept(str(label_id), LABEL_SCHEME, name[:64]),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm)


def write_dicom_seg(label: LabelMap, image_series: str | Path, path: str | Path, overwrite: bool = True) -> Path:
    """Write ``label`` as a binary DICOM SEG at ``path`` (atomically), referencing the series in ``image_series``."""
    path, image_series = Path(path), Path(image_series)
    sources = _source_images(image_series)
    present = label.present()
    if not present:
        raise WriteError(path, "label map has no labelled voxel", "a DICOM SEG needs at least one segment")
    names = {i: n for n, i in (label.labels or {}).items()}
    segments = np.stack([label.array == i for i in present], axis=-1).astype(np.uint8)
    affine = _LPS @ label.affine[:, _IJK_TO_KJI]
    volume = hd.Volume(np.ascontiguousarray(segments.transpose(2, 1, 0, 3)), affine, "PATIENT",
                       frame_of_reference_uid=str(sources[0].FrameOfReferenceUID),
                       channels={"SegmentNumber": list(range(1, len(present) + 1))})
    descriptions = [_segment_description(n, i, names.get(i, f"label {i}")) for n, i in enumerate(present, start=1)]
    # UIDs derive from the content and the image series: the same label map on the same series keeps its UIDs.
    digest = hashlib.sha256(label.array.tobytes() + label.affine.tobytes()
                            + str(sources[0].SeriesInstanceUID).encode()).hexdigest()
    try:
        seg = hd.seg.Segmentation(
            source_images=sources, pixel_array=volume, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=generate_uid(entropy_srcs=[digest, "series"]),
            series_number=int(getattr(sources[0], "SeriesNumber", 1) or 1) + 1,
            sop_instance_uid=generate_uid(entropy_srcs=[digest, "instance"]), instance_number=1,
            manufacturer="volsynth", manufacturer_model_name="volsynth", software_versions=__version__,
            device_serial_number="0", omit_empty_frames=False, content_label="SYNTHETIC",
            content_description=SYNTHETIC_MARK[:64], content_creator_name="volsynth^",
            series_description="volsynth synthetic label map (DICOM SEG)")
    except (ValueError, TypeError) as exc:
        raise GeometryError(path, f"cannot write the label map as a DICOM SEG ({exc})") from exc
    with atomic_output(path, overwrite=overwrite) as tmp:
        seg.save_as(tmp)
    return path


def _label_id(segment: pydicom.Dataset) -> int:
    """The label id a segment stands for: its ``99VOLSYNTH`` code value, else its segment number."""
    number = int(segment.SegmentNumber)
    for code in getattr(segment, "SegmentedPropertyTypeCodeSequence", []):
        if code.get("CodingSchemeDesignator") == LABEL_SCHEME and str(code.get("CodeValue", "")).isdigit():
            return int(code.CodeValue)
    return number


def read_dicom_seg(path: str | Path) -> LabelMap:
    """A DICOM SEG file (or a folder holding one) as a LabelMap: ids and names from its segments."""
    source = Path(path)
    path = seg_file(source)
    if path is None:
        raise ReadError(source, "not a DICOM Segmentation object (SOP class 1.2.840.10008.5.1.4.1.1.66.4)")
    try:
        seg = hd.seg.segread(path)
    except Exception as exc:
        raise ReadError(path, f"unreadable DICOM SEG ({str(exc).splitlines()[0] if str(exc) else exc})") from exc
    kind = seg.segmentation_type.value
    if kind not in ("BINARY", "LABELMAP"):
        raise ReadError(path, f"DICOM SEG of type {kind} is not a label map", "only BINARY and LABELMAP are read")
    ids = {int(s.SegmentNumber): _label_id(s) for s in seg.SegmentSequence}
    if len(set(ids.values())) != len(ids) or 0 in ids.values():
        raise ReadError(path, "DICOM SEG segments give duplicate or zero label ids")
    try:
        volume = seg.get_volume(combine_segments=True, relabel=False, dtype=np.uint16)
    except (RuntimeError, ValueError) as exc:
        problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "overlap" in problem.lower():
            raise ReadError(path, "DICOM SEG segments overlap: it is not a label map",
                            "export the segments without overlap, or one SEG per segment") from exc
        raise ReadError(path, f"DICOM SEG is not one regular 3D grid ({problem})") from exc
    array = np.asarray(volume.array).transpose(2, 1, 0)
    affine = _LPS @ np.asarray(volume.affine)[:, _IJK_TO_KJI]
    normal = np.cross(affine[:3, 0], affine[:3, 1])
    if float(normal @ affine[:3, 2]) < 0:  # slice axis along the plane normal, as the series reader orders slices
        array = array[:, :, ::-1]
        affine = affine.copy()
        affine[:3, 3] += affine[:3, 2] * (array.shape[2] - 1)
        affine[:3, 2] *= -1
    out = np.zeros(array.shape, dtype=np.int32 if max(ids.values()) > 255 else np.uint8)
    for number, label_id in ids.items():
        out[array == number] = label_id
    names = {"background": 0, **{str(s.SegmentLabel): ids[int(s.SegmentNumber)] for s in seg.SegmentSequence}}
    return LabelMap(np.ascontiguousarray(out), affine, labels=names)
