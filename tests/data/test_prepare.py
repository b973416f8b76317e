import json
import warnings

import numpy as np
import pytest

from tests.conftest import oblique_direction, write_msd, write_nnunet
from volsynth.cli import main
from volsynth.data.plan import Plan
from volsynth.data.prepare import PlanWarning, PrepareOptions, load_manifest, parse_label_spec, prepare_dataset
from volsynth.errors import ConfigError, DatasetError, PlanError
from volsynth.io import LabelMap, Volume, make_affine, read_label, read_volume, write_volume
from volsynth.io.resample import resample_to


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_round_trip_returns_original_geometry(tmp_path):
    # oblique, LPS-like source; prepare at the source spacing, then invert back onto the source grid
    root = write_nnunet(tmp_path / "ds", cases=2, direction=oblique_direction(20), spacing=(1.5, 1.5, 3.0))
    out = tmp_path / "prep"
    plan = prepare_dataset(root, out, PrepareOptions(size=[40, 40, 20]), progress=False)
    manifest = load_manifest(out)
    for entry in manifest["cases"]:
        source = read_volume(entry["source_images"][0])
        source_label = read_label(entry["source_label"])
        prepared = read_volume(out / entry["images"][0])
        prepared_label = read_label(out / entry["label"])
        assert prepared.orientation == "RAS" and prepared.shape == (40, 40, 20)
        assert prepared.array.min() >= -1 and prepared.array.max() <= 1
        back = plan.invert(prepared, entry["source_affine"], entry["source_shape"], window=entry["windows"][0])
        back_label = plan.invert(prepared_label, entry["source_affine"], entry["source_shape"])
        write_volume(back, tmp_path / "back.nii.gz")
        write_volume(back_label, tmp_path / "back_label.nii.gz")
        reread, reread_label = read_volume(tmp_path / "back.nii.gz"), read_label(tmp_path / "back_label.nii.gz")
        np.testing.assert_allclose(reread.affine, source.affine, atol=1e-4)
        np.testing.assert_allclose(reread_label.affine, source.affine, atol=1e-4)
        assert reread.shape == source.shape
        for label_id in (1, 2):
            assert _dice(reread_label.array == label_id, source_label.array == label_id) > 0.8
        inside = source_label.array > 0  # tissue inside the field of view comes back in HU
        assert np.median(np.abs(reread.array[inside] - source.array[inside])) < 15.0


@pytest.mark.parametrize("roi", [None, ["liver"]])
def test_a_grid_on_the_source_lattice_is_not_interpolated(tmp_path, roi):
    """Prepared at the source's own spacing (or a whole multiple of it), whatever the grid's size and centre (the
    image's or the ROI box's), the grid's voxels are the source's: no sub-voxel blur in the training data."""
    root = write_nnunet(tmp_path / "ds", cases=2, shape=(24, 20, 12), spacing=(1.5, 1.6, 3.0))
    for spacing, size in (([1.5, 1.6, 3.0], [15, 9, 7]), ([1.5, 3.2, 3.0], [16, 7, 6])):
        out = tmp_path / f"prep-{spacing[1]}"
        plan = prepare_dataset(root, out, PrepareOptions(spacing=spacing, size=size, roi=roi), progress=False)
        for entry in load_manifest(out)["cases"]:
            mapping = np.linalg.solve(np.asarray(entry["source_affine"]), np.asarray(entry["affine"]))
            np.testing.assert_allclose(mapping[:3, 3], np.round(mapping[:3, 3]), atol=1e-6)  # on a source voxel
            if spacing[1] != 1.6:
                continue
            source = read_volume(entry["source_images"][0])
            prepared = read_volume(out / entry["images"][0])
            back = resample_to(prepared, source.affine, source.shape, cval=np.nan).array
            inside = ~np.isnan(back)
            assert inside.sum() == prepared.array.size  # every prepared voxel is one source voxel...
            expected = plan.normalization[0].forward(source.array, entry["windows"][0])
            np.testing.assert_allclose(back[inside], expected[inside], atol=1e-5)  # ...with its value


def test_plan_defaults_and_contents(nnunet_dataset, tmp_path):
    plan = prepare_dataset(nnunet_dataset, tmp_path / "prep", progress=False)
    assert plan.orientation == "RAS"
    np.testing.assert_allclose(plan.spacing, [1.5, 1.6, 3.0], atol=1e-4)
    assert all(s % 16 == 0 for s in plan.size)
    norm = plan.normalization[0]
    assert norm.scheme == "ct_window" and norm.window[0] < -900 and norm.window[1] > 50
    assert plan.labels == {"liver": 1, "tumour": 2}
    loaded = Plan.load(tmp_path / "prep")
    assert loaded.to_dict() == plan.to_dict()
    reports = (tmp_path / "prep" / "reports.jsonl").read_text().splitlines()
    assert len(reports) == 3
    from volsynth.data.verify import verify_dataset

    assert verify_dataset(tmp_path / "prep") == []  # the output is itself a valid dataset


def test_a_grid_smaller_than_the_cases_warns_and_a_fitted_one_does_not(nnunet_dataset, tmp_path):
    with pytest.warns(PlanWarning, match=r"the grid \(12 x 13 x 24 mm\) is smaller than the median field of view"):
        prepare_dataset(nnunet_dataset, tmp_path / "cut", PrepareOptions(size=[8, 8, 8]), progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PlanWarning)
        prepare_dataset(nnunet_dataset, tmp_path / "whole", PrepareOptions(size=[8, 8, 8], spacing="fit"),
                        progress=False)
        prepare_dataset(nnunet_dataset, tmp_path / "default", progress=False)  # median spacing, size to fit


def test_label_remap_and_roi(nnunet_dataset, tmp_path):
    options = PrepareOptions(size=[16, 16, 16], spacing="fit", roi=["liver"], margin_mm=4.0,
                             label_sources=parse_label_spec("liver=liver+tumour,lesion=2", {"liver": 1, "tumour": 2}))
    plan = prepare_dataset(nnunet_dataset, tmp_path / "prep", options, progress=False)
    assert plan.labels == {"liver": 1, "lesion": 2}
    assert plan.spacing[0] == plan.spacing[1] == plan.spacing[2]
    for entry in load_manifest(tmp_path / "prep")["cases"]:
        label = read_label(tmp_path / "prep" / entry["label"])
        assert set(np.unique(label.array)) <= {0, 1, 2}
        assert entry["roi_found"] is True
        # the liver (with its lesion) is centred in the grid and fits inside it
        organ = np.argwhere(label.array > 0)
        centre = (organ.min(0) + organ.max(0)) / 2
        np.testing.assert_allclose(centre, [7.5, 7.5, 7.5], atol=1.5)
        assert organ.min() > 0 and organ.max() < 15


def test_label_spec_parsing_errors_and_yaml(tmp_path):
    assert parse_label_spec(None, {"background": 0, "liver": 1}) == {"liver": [1]}
    spec = tmp_path / "labels.yaml"
    spec.write_text("liver: 5\ntumour: [6, 7]\n")
    assert parse_label_spec(str(spec), {}) == {"liver": [5], "tumour": [6, 7]}
    with pytest.raises(ConfigError, match="bad label spec"):
        parse_label_spec("liver", {})
    with pytest.raises(ConfigError, match="neither an id nor a label name"):
        parse_label_spec("liver=spleen", {"liver": 1})


def test_mr_percentile_scaling(tmp_path):
    root = write_nnunet(tmp_path / "mr", cases=3, modality="MR")
    plan = prepare_dataset(root, tmp_path / "prep", PrepareOptions(size=[16, 16, 16]), progress=False)
    norm = plan.normalization[0]
    assert norm.scheme == "mr_percentile" and norm.percentiles == [0.5, 99.5]
    manifest = load_manifest(tmp_path / "prep")
    windows = [tuple(e["windows"][0]) for e in manifest["cases"]]
    assert len(set(windows)) == 3  # one window per case
    entry = manifest["cases"][0]
    prepared = read_volume(tmp_path / "prep" / entry["images"][0])
    back = plan.denormalize(prepared, window=tuple(entry["windows"][0]))
    assert back.array.max() == pytest.approx(entry["windows"][0][1], rel=1e-4)


def test_workers_give_identical_files(nnunet_dataset, tmp_path):
    prepare_dataset(nnunet_dataset, tmp_path / "one", PrepareOptions(size=[16, 16, 16]), progress=False)
    prepare_dataset(nnunet_dataset, tmp_path / "two", PrepareOptions(size=[16, 16, 16]), workers=2, progress=False)
    for path in sorted((tmp_path / "one").rglob("*.nii.gz")):
        assert path.read_bytes() == (tmp_path / "two" / path.relative_to(tmp_path / "one")).read_bytes()


def test_dicom_series_dataset_prepares(tmp_path):
    root = write_msd(tmp_path / "dicom", cases=2, suffix="")
    prepare_dataset(root, tmp_path / "prep", PrepareOptions(size=[16, 16, 16]), progress=False)
    assert len(load_manifest(tmp_path / "prep")["cases"]) == 2


def test_large_scanner_like_volume(tmp_path):
    # a few hundred thin slices; the crop-before-filter path keeps this fast and small
    shape = (160, 160, 240)
    affine = make_affine([0.75, 0.75, 0.7], [-60, -60, -84], np.diag([-1.0, -1.0, 1.0]))
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    liver = ((grid ** 2).sum(0) < 0.3).astype(np.uint8)
    root = tmp_path / "big"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    write_volume(Volume(np.where(liver, 60.0, -100.0).astype(np.float32), affine), root / "imagesTr" / "a_0000.nii.gz")
    write_volume(LabelMap(liver, affine), root / "labelsTr" / "a.nii.gz")
    meta = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1}, "numTraining": 1,
            "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    plan = prepare_dataset(root, tmp_path / "prep", PrepareOptions(spacing=[2.5] * 3, size=[48, 48, 64]),
                           progress=False)
    label = read_label(tmp_path / "prep" / "labelsTr" / "a.nii.gz")
    volume_ml = label.array.sum() * np.prod(plan.spacing) / 1000
    true_ml = liver.sum() * 0.75 * 0.75 * 0.7 / 1000
    assert volume_ml == pytest.approx(true_ml, rel=0.08)


def test_cli_prepare_bad_dataset_writes_nothing(nnunet_dataset, tmp_path, capsys):
    (nnunet_dataset / "labelsTr" / "case001.nii.gz").unlink()
    out = tmp_path / "prep"
    assert main(["prepare", str(nnunet_dataset), str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "case001.nii.gz" in err and "missing file" in err
    assert not out.exists()
    assert not list(tmp_path.glob(".partial-*"))


def test_cli_prepare_refuses_to_overwrite(nnunet_dataset, tmp_path, capsys):
    out = tmp_path / "prep"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert main(["prepare", str(nnunet_dataset), str(out), "--size", "16", "--no-progress"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "precious"
    # --overwrite replaces only a folder prepare wrote: this one is the user's, so it stays
    assert main(["prepare", str(nnunet_dataset), str(out), "--size", "16", "--no-progress", "--overwrite"]) == 2
    assert (out / "keep.txt").read_text() == "precious" and not (out / "plan.json").exists()


def test_cli_prepare_option_errors(nnunet_dataset, tmp_path, capsys):
    assert main(["prepare", str(nnunet_dataset), str(tmp_path / "p"), "--size", "a,b"]) == 2
    assert "--size" in capsys.readouterr().err
    assert main(["prepare", str(nnunet_dataset), str(tmp_path / "p"), "--roi", "spleen", "--no-progress"]) == 2
    assert "spleen" in capsys.readouterr().err


def test_invalid_plan_is_a_clear_error(tmp_path):
    (tmp_path / "plan.json").write_text(json.dumps({"version": 1, "spacing": [1, 1]}))
    with pytest.raises(PlanError, match="invalid plan") as info:
        Plan.load(tmp_path)
    assert "plan.json" in str(info.value)
    with pytest.raises(PlanError, match="not found"):
        Plan.load(tmp_path / "missing")
    with pytest.raises(DatasetError, match="manifest not found"):
        load_manifest(tmp_path)


def test_prepare_like_a_plan_or_a_model_reproduces_the_plan(nnunet_dataset, tmp_path, tiny_model, capsys):
    options = PrepareOptions(size=[16, 16, 16], spacing="fit", roi=["liver"], margin_mm=4.0, window=[-150, 250])
    first = prepare_dataset(nnunet_dataset, tmp_path / "first", options, progress=False)
    other = write_nnunet(tmp_path / "other", cases=2)
    assert main(["prepare", str(other), str(tmp_path / "like"), "--like", str(tmp_path / "first"),
                 "--no-progress"]) == 0
    like = Plan.load(tmp_path / "like")
    assert (like.spacing, like.size, like.labels, like.roi) == (first.spacing, first.size, first.labels, first.roi)
    assert like.normalization[0].window == [-150.0, 250.0]
    # a model folder: its meta.json holds the plan it was trained with
    model_plan = Plan.from_dict(json.loads((tiny_model / "meta.json").read_text())["plan"])
    assert main(["prepare", str(other), str(tmp_path / "model"), "--like", str(tiny_model), "--no-progress"]) == 0
    assert Plan.load(tmp_path / "model").spacing == model_plan.spacing
    assert main(["prepare", str(other), str(tmp_path / "bad"), "--like", str(tmp_path / "first"), "--size", "8",
                 "--no-progress"]) == 2
    assert "--like" in capsys.readouterr().err
    assert main(["prepare", str(other), str(tmp_path / "bad"), "--like", str(tmp_path), "--no-progress"]) == 2
    assert not (tmp_path / "bad").exists()


def _write_one_case(root, image: np.ndarray, label: np.ndarray, affine: np.ndarray, modality: str) -> None:
    """A one-case nnU-Net dataset stored with the given dtypes, as a scanner export would be."""
    import nibabel as nib

    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    nib.save(nib.Nifti1Image(image, affine), str(root / "imagesTr" / "a_0000.nii.gz"))
    nib.save(nib.Nifti1Image(label, affine), str(root / "labelsTr" / "a.nii.gz"))
    meta = {"channel_names": {"0": modality}, "labels": {"background": 0, "liver": 1}, "numTraining": 1,
            "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))


def _rank(values: np.ndarray, value: float) -> float:
    """Percentile rank of ``value`` among ``values`` (0..100)."""
    return 100.0 * float(np.mean(values <= value))


def test_sampled_intensity_statistics_are_seeded_and_close_to_exact(tmp_path, monkeypatch):
    from volsynth.data import intensity
    from volsynth.data.dataset import load_dataset
    from volsynth.data.prepare import fingerprint_case

    root = write_nnunet(tmp_path / "mr", cases=2, modality="MR", shape=(40, 36, 30))
    prepare_dataset(root, tmp_path / "exact", PrepareOptions(size=[16, 16, 16]), progress=False)
    monkeypatch.setattr(intensity, "MAX_INTENSITY_SAMPLES", 1000)  # a case has 43200 voxels: sampling is on
    first = prepare_dataset(root, tmp_path / "a", PrepareOptions(size=[16, 16, 16]), progress=False)
    second = prepare_dataset(root, tmp_path / "b", PrepareOptions(size=[16, 16, 16]), progress=False)
    assert first.to_dict() == second.to_dict()  # same seed, same plan
    assert load_manifest(tmp_path / "a")["cases"] == load_manifest(tmp_path / "b")["cases"]
    assert load_manifest(tmp_path / "a")["cases"] != load_manifest(tmp_path / "exact")["cases"]  # sampled
    # Tolerance, in percentile rank of the exact values: a sampled 0.5 / 99.5 percentile lies within 0.7 points
    # of its rank (3 standard errors of ~1000 samples: 0.67), a sampled median within 5 points (4.7).
    dataset = load_dataset(root)
    for case, entry in zip(dataset.cases, load_manifest(tmp_path / "a")["cases"], strict=True):
        image = read_volume(case.images[0]).array
        foreground = image[image > 0]
        lo, hi = entry["windows"][0]
        assert abs(_rank(foreground, lo) - 0.5) <= 0.7 and abs(_rank(foreground, hi) - 99.5) <= 0.7
        label = read_label(case.label).array
        sampled = fingerprint_case(case, {"liver": [1]}, None)["intensity_per_label"]["liver"]
        liver = image[label == 1]
        assert liver.size > 1000
        for value, rank, tolerance in zip(sampled, (0.5, 50, 99.5), (0.7, 5, 0.7), strict=True):
            assert abs(_rank(liver, value) - rank) <= tolerance


def test_sample_values_is_exact_below_the_limit_and_bounded_above():
    from volsynth.data.intensity import count_labels, sample_values

    array = np.random.default_rng(0).normal(size=(30, 20, 10)).astype(np.float32)
    labels = (array > 0.5).astype(np.uint8)
    np.testing.assert_array_equal(sample_values(array, 0, lambda s: labels[s] == 1), array[labels == 1])
    np.testing.assert_array_equal(count_labels(labels, 3), np.bincount(labels.ravel(), minlength=3))
    drawn = sample_values(array, 0, lambda s: labels[s] == 1, limit=500)
    assert 350 < drawn.size < 650 and np.all(drawn > 0.5)
    np.testing.assert_array_equal(drawn, sample_values(array, 0, lambda s: labels[s] == 1, limit=500))
    assert not np.array_equal(drawn, sample_values(array, 1, lambda s: labels[s] == 1, limit=500))


def test_int16_lps_ct_and_uint16_mr_prepare(tmp_path):
    # CT in HU -1024..3071 stored as int16 with an LPS affine; MR in 0..40000 stored as uint16
    shape = (48, 40, 32)
    affine = make_affine([0.8, 0.8, 1.2], [40.0, 30.0, -20.0], oblique_direction(10) @ np.diag([1.0, -1.0, 1.0]))
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    liver = ((grid ** 2).sum(0) < 0.3).astype(np.uint8)
    body = (grid[:2] ** 2).sum(0) < 0.8
    rng = np.random.default_rng(0)
    ct = np.clip(np.where(body, 40, -1024) + np.where(liver, 20, 0) + rng.integers(-20, 20, shape), -1024, 3071)
    ct[0, 0, :4] = 3071  # a bright metal streak at the top of the range
    _write_one_case(tmp_path / "ct", ct.astype(np.int16), liver, affine, "CT")
    mr = np.where(body, 12000 + rng.integers(0, 2000, shape), 0) + np.where(liver, 20000, 0)
    mr[1, 1, :2] = 40000
    _write_one_case(tmp_path / "mr", mr.astype(np.uint16), liver, affine, "MR")
    assert read_volume(tmp_path / "ct" / "imagesTr" / "a_0000.nii.gz").orientation == "LPS"
    ct_plan = prepare_dataset(tmp_path / "ct", tmp_path / "ct-prep", PrepareOptions(size=[24, 24, 24]),
                              progress=False)
    lo, hi = ct_plan.normalization[0].window
    assert -1024 <= lo < -900 and 40 < hi <= 3071
    liver_hu = ct_plan.fingerprint["intensity_per_label"]["liver"]
    assert 30 < liver_hu[1] < 110  # the median HU inside the liver
    prepared = read_volume(tmp_path / "ct-prep" / "imagesTr" / "a_0000.nii.gz")
    assert prepared.orientation == "RAS" and prepared.array.min() >= -1 and prepared.array.max() <= 1
    mr_plan = prepare_dataset(tmp_path / "mr", tmp_path / "mr-prep", PrepareOptions(size=[24, 24, 24]),
                              progress=False)
    window = load_manifest(tmp_path / "mr-prep")["cases"][0]["windows"][0]
    assert 10000 < window[0] < 14000 and 30000 < window[1] <= 40000
    back = mr_plan.denormalize(read_volume(tmp_path / "mr-prep" / "imagesTr" / "a_0000.nii.gz"), window=window)
    assert back.array.max() == pytest.approx(window[1], rel=1e-3) and back.array.min() >= window[0] - 1e-3
