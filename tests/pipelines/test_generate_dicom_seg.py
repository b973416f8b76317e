"""``volsynth generate --format dicom`` with a mask: the image as a DICOM series and the label map as a DICOM SEG
that references it; the sidecar names the SEG, which reads back as the generated label map."""

import json

import numpy as np
import pydicom

from volsynth.cli import main
from volsynth.evaluation.inputs import read_generated
from volsynth.io import read_label, read_volume


def test_generate_dicom_writes_a_seg_referencing_the_series(tiny_model, nnunet_dataset, tmp_path):
    out = tmp_path / "out"
    assert main(["generate", str(tiny_model), "--out", str(out), "--steps", "3", "--no-progress",
                 "--masks-from", str(nnunet_dataset), "--limit", "1", "--format", "dicom"]) == 0
    sidecar = json.loads((out / "case000.json").read_text())
    assert sidecar["format"] == "dicom" and sidecar["label"] == "case000_label.dcm"
    series, seg_path = out / "case000_image", out / "case000_label.dcm"
    assert sorted(p.name for p in out.iterdir()) == ["case000.json", "case000_image", "case000_label.dcm"]
    slices = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(series.iterdir())]
    seg = pydicom.dcmread(seg_path)
    assert seg.StudyInstanceUID == slices[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == slices[0].FrameOfReferenceUID
    referenced = {i.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence
                  for i in s.ReferencedInstanceSequence}
    assert referenced == {s.SOPInstanceUID for s in slices}
    label, image = read_label(seg_path), read_volume(series)
    assert label.shape == image.shape
    np.testing.assert_allclose(label.affine, image.affine, atol=1e-4)
    mask = read_label(nnunet_dataset / "labelsTr" / "case000.nii.gz")
    assert label.present() and set(label.present()) <= set(mask.present())  # the model's classes of the mask
    assert {s.SegmentLabel for s in seg.SegmentSequence} <= {"liver", "tumour"}
    # evaluate reads the DICOM output: the series as the image, the SEG (with its own class names) as the label map
    (item,) = read_generated(out, {"background": 0, "other": 1}, progress=False)
    assert item.label_names_from == "DICOM SEG" and item.label.labels == label.labels
    np.testing.assert_array_equal(item.label.array, label.array)
