"""Volumes with geometry and their file formats."""

from volsynth.io.atomic import atomic_output
from volsynth.io.dicom_seg import read_dicom_seg, seg_file, write_dicom_seg
from volsynth.io.formats import FORMATS, format_of, read_array, read_label, read_volume, write_volume
from volsynth.io.volume import LabelMap, Volume, axcodes_of, make_affine, spacing_of

__all__ = [
    "FORMATS",
    "LabelMap",
    "Volume",
    "atomic_output",
    "axcodes_of",
    "format_of",
    "make_affine",
    "read_array",
    "read_dicom_seg",
    "read_label",
    "read_volume",
    "seg_file",
    "spacing_of",
    "write_dicom_seg",
    "write_volume",
]
