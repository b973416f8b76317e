import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.conftest import make_case, write_msd
from volsynth.cli import main
from volsynth.data.verify import verify_dataset
from volsynth.io import write_volume


def _save(path: Path, array, affine) -> None:
    """Save with the sform only, so that broken affines (zero spacing, shear) are stored as given."""
    image = nib.Nifti1Image(np.asarray(array), None)
    image.set_sform(affine, code=1)
    nib.save(image, str(path))


def _image(root: Path, case: str = "case001") -> Path:
    return root / "imagesTr" / f"{case}_0000.nii.gz"


def _label(root: Path, case: str = "case001") -> Path:
    return root / "labelsTr" / f"{case}.nii.gz"


def _load(path: Path):
    image = nib.load(str(path))
    return np.asanyarray(image.dataobj), image.affine


def missing_label(root):
    _label(root).unlink()
    return _label(root), "missing file"


def unreadable_image(root):
    _image(root).write_bytes(b"this is not a nifti file at all" * 20)
    return _image(root), "unreadable"


def truncated_gzip(root):
    data = _image(root).read_bytes()
    _image(root).write_bytes(data[: len(data) // 2])
    return _image(root), "truncated"


def four_d_image(root):
    array, affine = _load(_image(root))
    _save(_image(root), np.stack([array, array], axis=-1).astype(np.float32), affine)
    return _image(root), "not 3D"


def two_d_label(root):
    array, affine = _load(_label(root))
    _save(_label(root), array[:, :, 0], affine)
    return _label(root), "not 3D"


def nan_image(root):
    array, affine = _load(_image(root))
    array = array.astype(np.float32)
    array[0, 0, 0] = np.nan
    array[1, 0, 0] = np.inf
    _save(_image(root), array, affine)
    return _image(root), "2 NaN/Inf"


def shape_mismatch(root):
    array, affine = _load(_label(root))
    _save(_label(root), array[:-2], affine)
    return _label(root), "shape"


def affine_mismatch(root):
    array, affine = _load(_label(root))
    affine = affine.copy()
    affine[0, 3] += 0.5
    _save(_label(root), array, affine)
    return _label(root), "affine differs"


def fractional_labels(root):
    array, affine = _load(_label(root))
    array = array.astype(np.float32)
    array[array == 1] = 0.5
    _save(_label(root), array, affine)
    return _label(root), "not integer"


def unknown_label(root):
    array, affine = _load(_label(root))
    array = array.copy()
    array[0, 0, 0] = 7
    _save(_label(root), array, affine)
    return _label(root), "[7] not in dataset.json"


def empty_label(root):
    array, affine = _load(_label(root))
    _save(_label(root), np.zeros_like(array), affine)
    return _label(root), "empty label map"


def zero_spacing(root):
    for path in (_image(root), _label(root)):
        array, affine = _load(path)
        affine = affine.copy()
        affine[2, 2] = 0.0
        _save(path, array, affine)
    return _image(root), "absurd spacing"


def huge_spacing(root):
    for path in (_image(root), _label(root)):
        array, affine = _load(path)
        affine = affine.copy()
        affine[:3, 2] *= 10  # 30 mm slices
        _save(path, array, affine)
    return _image(root), "absurd spacing"


def sheared(root):
    for path in (_image(root), _label(root)):
        array, affine = _load(path)
        affine = affine.copy()
        affine[:3, 1] += 0.3 * affine[:3, 0]
        _save(path, array, affine)
    return _image(root), "non-orthogonal"


def missing_reports(root):
    lines = (root / "reports.jsonl").read_text().splitlines()
    (root / "reports.jsonl").write_text("\n".join(lines[:1]) + "\n")
    return root / "reports.jsonl", "reports missing for 2 case(s)"


def duplicate_report(root):
    lines = (root / "reports.jsonl").read_text().splitlines()
    (root / "reports.jsonl").write_text("\n".join(lines + lines[:1]) + "\n")
    return root / "reports.jsonl", "duplicate report"


def wrong_num_training(root):
    meta = json.loads((root / "dataset.json").read_text())
    meta["numTraining"] = 5
    (root / "dataset.json").write_text(json.dumps(meta))
    return root / "dataset.json", "numTraining is 5"


def missing_dataset_json(root):
    (root / "dataset.json").unlink()
    return root / "dataset.json", "dataset.json not found"


BREAKERS = [missing_label, unreadable_image, truncated_gzip, four_d_image, two_d_label, nan_image, shape_mismatch,
            affine_mismatch, fractional_labels, unknown_label, empty_label, zero_spacing, huge_spacing, sheared,
            missing_reports, duplicate_report, wrong_num_training, missing_dataset_json]


def test_clean_datasets_pass(nnunet_dataset, msd_dataset, capsys):
    assert verify_dataset(nnunet_dataset) == []
    assert verify_dataset(msd_dataset) == []
    assert main(["verify", str(nnunet_dataset), "--no-progress"]) == 0
    assert "no problems" in capsys.readouterr().out


@pytest.mark.parametrize("breaker", BREAKERS, ids=[b.__name__ for b in BREAKERS])
def test_each_problem_exits_2_naming_the_file(nnunet_dataset, breaker, capsys):
    path, expected = breaker(nnunet_dataset)
    code = main(["verify", str(nnunet_dataset), "--no-progress"])
    out = capsys.readouterr()
    assert code == 2
    assert "problem(s) found" in out.err
    matching = [line for line in out.out.splitlines() if line.startswith(f"{path}:")]
    assert matching, out.out
    assert any(expected in line for line in matching), matching


def test_labels_stored_as_near_whole_floats_are_read_as_labels(nnunet_dataset):
    array, affine = _load(_label(nnunet_dataset))
    ids = sorted(int(v) for v in np.unique(array) if v)
    scaled = array.astype(np.float32)
    scaled[array == ids[0]] = ids[0] - 1e-6  # as an exporter's scaling arithmetic leaves them
    _save(_label(nnunet_dataset), scaled, affine)
    assert verify_dataset(nnunet_dataset) == []


def test_msd_duplicate_case_id(msd_dataset):
    meta = json.loads((msd_dataset / "dataset.json").read_text())
    meta["training"].append(meta["training"][0])
    (msd_dataset / "dataset.json").write_text(json.dumps(meta))
    problems = verify_dataset(msd_dataset)
    assert [p.problem for p in problems] == ["duplicate case id 'liver_0'"]
    assert problems[0].file == str(msd_dataset / "dataset.json")


def test_dicom_series_dataset(tmp_path):
    root = write_msd(tmp_path / "dicom", cases=2, suffix="")
    assert any((root / "imagesTr" / "liver_0").glob("*.dcm"))
    assert verify_dataset(root) == []


def test_workers_give_the_same_problems(nnunet_dataset):
    truncated_gzip(nnunet_dataset)
    empty_label(nnunet_dataset)
    assert verify_dataset(nnunet_dataset, workers=2) == verify_dataset(nnunet_dataset, workers=1)


def test_label_in_other_format_with_matching_geometry(tmp_path):
    image, label = make_case()
    root = tmp_path / "ds"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    write_volume(image, root / "imagesTr" / "a_0000.nrrd")
    write_volume(label, root / "labelsTr" / "a.nrrd")
    meta = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "tumour": 2}, "numTraining": 1,
            "file_ending": ".nrrd"}
    (root / "dataset.json").write_text(json.dumps(meta))
    assert verify_dataset(root) == []
