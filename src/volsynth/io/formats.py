"""Read and write volumes by path: NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage
(.mha, .mhd) and DICOM series folders; a DICOM SEG (a .dcm file, or a folder holding one) reads as a label map.
Every writer is atomic and keeps the affine."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from volsynth.errors import GeometryError, ReadError, VolsynthError, WriteError
from volsynth.io.atomic import atomic_output
from volsynth.io.dicom import (
    SERIES_SLICE,
    arrays_to_sitk,
    is_multiframe,
    read_dicom_series,
    read_multiframe,
    sitk_to_arrays,
    write_dicom_series,
)
from volsynth.io.dicom_seg import read_dicom_seg, seg_file
from volsynth.io.volume import LabelMap, Volume, spacing_of

NIFTI_SUFFIXES = (".nii.gz", ".nii")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
FORMATS = ("nifti", "nrrd", "mha", "dicom")


def format_of(path: str | Path) -> str:
    """The format a path names: by suffix, or ``dicom`` for a folder, a suffix-less name or a .dcm file."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith((".nrrd", ".nhdr")):
        return "nrrd"
    if name.endswith((".mha", ".mhd")):
        return "mha"
    if path.is_dir() or path.suffix == "" or name.endswith(".dcm"):
        return "dicom"
    raise ReadError(path, f"unknown volume format '{path.suffix}'",
                    "use .nii.gz, .nii, .nrrd, .mha, .mhd, a DICOM folder or a DICOM SEG .dcm file")


def read_array(path: str | Path, series: str | None = None) -> tuple[np.ndarray, np.ndarray, str | None]:
    """Read any supported file into (array in (i, j, k[, c]) order, RAS affine, modality or None).

    The array keeps its dimensionality (2D and 4D are returned as they are, for ``verify`` to report). ``series``
    picks one SeriesInstanceUID of a DICOM folder that holds several.
    """
    path = Path(path)
    if not path.exists():
        raise ReadError(path, "file not found")
    fmt = format_of(path)
    if series is not None and (fmt != "dicom" or not path.is_dir()):
        raise ReadError(path, "a series UID picks a series of a DICOM folder; this is not one",
                        "leave the series out for a single file")
    if fmt == "dicom":
        if seg_file(path) is not None:
            label = read_dicom_seg(path)
            check_affine(path, label.affine)
            return label.array, label.affine, "SEG"
        if not path.is_dir():
            if not is_multiframe(path):
                raise ReadError(path, "a DICOM series must be given as a folder (a single .dcm file is read only "
                                "when it is a DICOM SEG or a multi-frame image)")
            array, affine, modality = read_multiframe(path)
        else:
            array, affine, modality = read_dicom_series(path, series)
        check_affine(path, affine)
        return array, affine, modality
    if fmt == "nifti":
        array, affine = _read_nifti(path)
    else:
        try:
            array, affine = sitk_to_arrays(sitk.ReadImage(str(path)))
        except RuntimeError as exc:
            raise ReadError(path, f"unreadable {fmt.upper()} file ({_last_line(exc)})") from exc
    check_affine(path, affine)
    return array, affine, None


def check_affine(path: Path, affine: np.ndarray) -> None:
    """A header's geometry must be usable: finite, every voxel size within ``SPACING_RANGE`` mm, axes independent.

    A zero, negative-zero or absurd voxel size, or a singular direction matrix, would otherwise be carried silently
    into every later step."""
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise GeometryError(path, "the header's geometry is not finite (NaN or infinite spacing, origin or "
                            "orientation)", "fix or re-export the file's header")
    spacing = spacing_of(affine)
    lo, hi = SPACING_RANGE
    if np.any(spacing < lo) or np.any(spacing > hi):
        raise GeometryError(path, f"absurd spacing {[float(f'{v:.6g}') for v in spacing]} mm in the header "
                            f"(must lie in {lo:g}..{hi:g} mm)",
                            "fix the header's pixdim / spacing, or re-export the file")
    if abs(np.linalg.det(affine[:3, :3] / spacing)) < 1e-3 or np.any(np.abs(affine[:3, 3]) > MAX_ORIGIN):
        raise GeometryError(path, "the header's orientation is degenerate (axes nearly parallel) or its origin "
                            "is beyond 1 km", "fix the header's qform/sform or direction, or re-export the file")


SPACING_RANGE = (1e-4, 1e4)  # mm: from 0.1 micrometre to 10 m per voxel
MAX_ORIGIN = 1e6  # mm


def _check_raw_pixdim(path: Path) -> None:
    """Voxel sizes as stored, before nibabel repairs them: a qform (or a header with no transform) takes its voxel
    sizes from pixdim, and nibabel would silently turn a zero into 1 and a negative into its absolute value."""
    try:
        with (gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")) as handle:
            raw = handle.read(348)
    except (OSError, EOFError, zlib.error):
        return  # nibabel reports the damage
    if len(raw) < 348:
        return
    order = "<" if struct.unpack_from("<i", raw, 0)[0] == 348 else ">"
    if struct.unpack_from(order + "i", raw, 0)[0] != 348:
        return  # not a NIfTI-1 header (NIfTI-2 or not NIfTI): nibabel decides
    qform_code, sform_code = struct.unpack_from(order + "hh", raw, 252)
    if sform_code in SFORM_CODES:
        return  # the sform gives the geometry, pixdim does not enter it
    pixdim = np.asarray(struct.unpack_from(order + "8f", raw, 76)[1:4], dtype=np.float64)
    if not np.all(np.isfinite(pixdim)) or np.any(pixdim <= 0):
        raise GeometryError(path, f"absurd spacing: pixdim {pixdim.tolist()} mm in the header (voxel sizes must be "
                            "positive)", "fix the header's pixdim, or re-export the file")


SFORM_CODES = (1, 2, 3, 4, 5)  # the sform codes nibabel takes the affine from


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    _check_raw_pixdim(path)
    try:
        image = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for a bad header
        raise ReadError(path, f"unreadable NIfTI header ({_last_line(exc)})") from exc
    proxy = image.dataobj
    slope, inter = getattr(proxy, "slope", 1.0), getattr(proxy, "inter", 0.0)
    if not (np.isfinite(slope) and np.isfinite(inter)):
        raise ReadError(path, f"the header's intensity scaling is not finite (scl_slope {slope}, scl_inter {inter})",
                        "fix or re-export the file's header")
    scaled = slope != 1.0 or inter != 0.0
    _check_data_size(path, image)
    try:
        # scaled integers (scl_slope / scl_inter) straight to float32: nibabel would make a float64 copy
        array = image.get_fdata(dtype=np.float32, caching="unchanged") if scaled else np.asanyarray(proxy)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ReadError(path, "truncated or corrupt gzip data", "re-export or re-download the file") from exc
    except Exception as exc:
        raise ReadError(path, f"unreadable NIfTI data ({_last_line(exc)})") from exc
    array = np.asarray(array)
    if array.dtype.fields is not None or not (np.issubdtype(array.dtype, np.integer)
                                              or np.issubdtype(array.dtype, np.floating)):
        raise ReadError(path, f"voxels of type {image.header.get_data_dtype()} (datatype "
                        f"{int(image.header['datatype'])}) are not scalar intensities or labels",
                        "convert the image to a scalar integer or float type")
    affine = np.asarray(image.affine, dtype=np.float64)
    # world coordinates in the header's spatial unit (as ITK reads them): metres and micrometres to millimetres
    affine[:3, :] *= UNIT_TO_MM.get(image.header.get_xyzt_units()[0], 1.0)
    return array, affine


UNIT_TO_MM = {"meter": 1000.0, "micron": 0.001}  # NIfTI xyz units other than mm ("unknown" is taken as mm)


def _check_data_size(path: Path, image) -> None:
    """An uncompressed file must hold the data its header's dims and datatype promise (before anything is read:
    a garbage dim must not make the reader allocate terabytes)."""
    header = image.header
    try:
        expected = int(header.get_data_offset()) + int(np.prod(image.shape, dtype=np.float64)) \
            * np.dtype(header.get_data_dtype()).itemsize
    except (TypeError, ValueError, OverflowError) as exc:
        raise ReadError(path, f"unreadable NIfTI header ({_last_line(exc)})") from exc
    if expected > MAX_BYTES:
        raise ReadError(path, f"the header's dims {tuple(image.shape)} promise {expected / 1e9:.3g} GB of data",
                        "the header is corrupt, or the file is not a single volume")
    if path.name.lower().endswith(".nii"):
        size = path.stat().st_size
        if size < expected:
            raise ReadError(path, f"the file holds {size} bytes, its header (dims {tuple(image.shape)}, "
                            f"{header.get_data_dtype()}) needs {expected}", "the file is truncated or its header "
                            "is wrong: re-export it")


MAX_BYTES = 64e9  # one volume of more than 64 GB is a corrupt header here


def _last_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


def _require_3d(path: Path, array: np.ndarray) -> np.ndarray:
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise ReadError(path, f"expected a 3D volume, got {array.ndim}D with shape {tuple(array.shape)}")
    return array


def read_volume(path: str | Path, modality: str | None = None, series: str | None = None) -> Volume:
    """Read a 3D intensity image (any supported format) as a ``Volume``; ``series`` as ``read_array``."""
    path = Path(path)
    array, affine, found_modality = read_array(path, series)
    array = _require_3d(path, array)
    try:
        return Volume(array.astype(np.float32, copy=False), affine, modality=modality or found_modality)
    except VolsynthError as exc:
        raise type(exc)(path, exc.problem, exc.hint) from exc


def read_label(path: str | Path, labels: dict[str, int] | None = None, series: str | None = None) -> LabelMap:
    """Read a 3D integer label map (any supported format) as a ``LabelMap``; a DICOM SEG names its own classes;
    ``series`` as ``read_array``."""
    path = Path(path)
    if path.exists() and seg_file(path) is not None and series is None:
        return read_dicom_seg(path)
    masks = mask_files(path) if series is None else []
    if masks:
        return read_mask_folder(masks)
    array, affine, _ = read_array(path, series)
    array = _require_3d(path, array)
    try:
        return LabelMap(array, affine, labels=labels)
    except VolsynthError as exc:
        raise type(exc)(path, exc.problem, exc.hint) from exc


def mask_files(folder: Path) -> list[Path]:
    """The volume files of a folder that holds only volume files and no DICOM series (one mask per class, as
    TotalSegmentator writes by default), sorted; [] for anything else."""
    if not folder.is_dir():
        return []
    children = [c for c in folder.iterdir() if not c.name.startswith(".")]
    files = [c for c in children if c.is_file() and c.name.lower().endswith(NIFTI_SUFFIXES + ITK_SUFFIXES)]
    headers = [c for c in files if c.name.lower().endswith((".nhdr", ".mhd"))]
    data = {c.with_suffix(".raw").name for c in headers} | {c.with_suffix(".zraw").name for c in headers}
    rest = [c for c in children if c not in files and c.name not in data]
    return sorted(files, key=lambda c: c.name) if files and not rest else []


def read_mask_folder(files: list[Path]) -> LabelMap:
    """A folder's binary masks (``mask_files``), one per class named by its file (``liver.nii.gz``), as one label
    map whose classes carry those names (ids in file-name order). The masks must share one grid and not overlap."""
    first = read_label(files[0])
    array = np.zeros(first.shape, dtype=np.uint8 if len(files) < 256 else np.uint16)
    labels: dict[str, int] = {}
    for number, path in enumerate(files, start=1):
        mask = first if number == 1 else read_label(path)
        if mask.shape != first.shape or not np.allclose(mask.affine, first.affine, atol=1e-3):
            raise GeometryError(path, f"mask on another grid than {files[0].name} (shape {mask.shape} vs "
                                f"{first.shape})", "the masks of one folder must share one grid")
        inside = mask.array != 0
        values = mask.array[inside]  # one id inside a binary mask (np.unique over the whole grid is not needed)
        if values.size and (values != values[0]).any():
            raise GeometryError(path, f"not a binary mask (ids {np.unique(values)[:6].tolist()}): a folder is read "
                                "as one mask per class", "give the multi-label file itself")
        taken = array[inside]
        if taken.any():
            other = next(n for n, i in labels.items() if i == int(taken[taken != 0][0]))
            raise GeometryError(path, f"mask overlaps {other} in {int((taken != 0).sum())} voxel(s)",
                                "a label map has one class per voxel: fix the masks or give one multi-label file")
        array[inside] = number
        labels[path.name.split(".")[0]] = number
    return LabelMap(array, first.affine, labels=labels)


def is_volsynth_series(folder: Path) -> bool:
    """Whether a folder holds only the slice files of a DICOM series volsynth wrote (it may then be replaced)."""
    return all(child.is_file() and SERIES_SLICE.fullmatch(child.name) for child in folder.iterdir())


def write_volume(obj: Volume | LabelMap, path: str | Path, overwrite: bool = True,
                 description: str = "", compression: str | None = None) -> Path:
    """Write a Volume or LabelMap by the path's format, atomically; returns the path.

    ``description`` and ``compression`` (``"jpeg2000"``) apply to DICOM series.
    """
    path = Path(path)
    fmt = format_of(path)
    if path.name.lower().endswith(".dcm"):
        raise WriteError(path, "a .dcm file is written only as a DICOM SEG, beside its image series "
                         "(volsynth generate --format dicom)", "give a name without suffix for a DICOM series folder")
    if obj.array.ndim != 3:
        raise WriteError(path, f"can only write 3D volumes, got shape {obj.shape}")
    try:
        with atomic_output(path, overwrite=overwrite, replaceable=is_volsynth_series) as tmp:
            if fmt == "nifti":
                _write_nifti(obj, tmp)
            elif fmt == "dicom":
                tmp.mkdir()
                write_dicom_series(obj, tmp, description=description, compression=compression)
            else:
                _write_itk(obj, tmp, path.name)
    except VolsynthError as exc:
        if exc.path is None:
            raise type(exc)(path, exc.problem, exc.hint) from exc
        raise
    except OSError as exc:
        raise WriteError(path, f"cannot write ({exc.strerror or exc})") from exc
    return path


def _write_nifti(obj: Volume | LabelMap, path: Path) -> None:
    array = obj.array
    if isinstance(obj, LabelMap):
        array = array.astype(np.uint8 if array.min() >= 0 and array.max() <= 255 else np.int16)
    else:
        array = array.astype(np.float32, copy=False)
    image = nib.Nifti1Image(array, obj.affine)
    image.header.set_xyzt_units("mm", "sec")
    image.set_sform(obj.affine, code=1)  # scanner anatomical
    image.set_qform(obj.affine, code=1)
    if isinstance(obj, LabelMap):
        image.header.set_intent("label", name="volsynth labels")
    nib.save(image, str(path))


def _write_itk(obj: Volume | LabelMap, path: Path, name: str) -> None:
    """Write ``path`` (a temporary name); a header with a separate data file (.mhd, .nhdr) is written under its
    final ``name`` in a staging folder, so that the header names the data file by its final name, and the data
    file is moved beside it before the header."""
    array = obj.array
    if isinstance(obj, LabelMap):
        array = array.astype(np.uint8 if array.min() >= 0 and array.max() <= 255 else np.int16)
    else:
        array = array.astype(np.float32, copy=False)
    try:
        image = arrays_to_sitk(array, obj.affine)
    except RuntimeError as exc:
        raise GeometryError(path, f"cannot write this geometry ({_last_line(exc)})") from exc
    if not name.lower().endswith((".mhd", ".nhdr")):
        _sitk_write(image, path)
        return
    staging = path.with_name(path.name + ".d")
    staging.mkdir()
    try:
        _sitk_write(image, staging / name)
        for data in staging.iterdir():
            if data.name != name:
                os.replace(data, path.parent / data.name)
        os.replace(staging / name, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _sitk_write(image: sitk.Image, path: Path) -> None:
    try:
        sitk.WriteImage(image, str(path), useCompression=True)
    except RuntimeError as exc:
        raise WriteError(path, f"cannot write ({_last_line(exc)})") from exc
