"""Phantom generator versions: version 1 writes the files it always wrote; version 2's lesions have the contrast,
sizes and facts it promises, measured on the written images; the version travels into prepared data and models."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from volsynth.cli import main
from volsynth.data.phantom import case_seed, generate_case, write_phantom_dataset
from volsynth.data.phantom.lesions import COUNT_P, DIAMETER_MM, LESION_TYPES, sample_diameter
from volsynth.data.phantom.measure import FULL_CONNECTIVITY, lesion_contrasts, max_extent_mm
from volsynth.data.phantom.writer import write_case
from volsynth.data.plan import Plan
from volsynth.data.prepare import prepare_dataset
from volsynth.io import read_label, read_volume
from volsynth.training.assemble import phantom_generators

# `volsynth phantom KIND DIR --cases 2 --size 20 --seed 3 --generator-version 1` as written before generator
# versions existed (the phantoms every shipped model was made with); dataset.json only gains the generator key.
# Label maps and reports: their sha256 (integers and text are the same on every machine). Images: float
# intensities, whose last bits follow the CPU (OpenBLAS picks other kernels on an AVX-512 CPU than on an AVX2 one:
# 1e-8 apart), so they are compared by a summary (phantom_v1_images.json: a few quantiles and the means of 4^3-voxel
# blocks) within a relative 1e-5; `python tests/data/test_phantom_versions.py` rewrites it.
V1_SHA256 = {  # labels 0, labels 1, reports.jsonl
    "abdomen-ct": ("ecf8296b3110fceab8334579c399a5965627ecab133b77e656b1ba7ae8764cd3",
                   "aa01701d90e754e54c642cb541d251b3d90f1ea2257af396cbdac31b6847bd21",
                   "df58b250e0c648114bc4a68b1fbaec3f49726bee045d8be7947cd84868c67c55"),
    "abdomen-mr": ("ecf8296b3110fceab8334579c399a5965627ecab133b77e656b1ba7ae8764cd3",
                   "aa01701d90e754e54c642cb541d251b3d90f1ea2257af396cbdac31b6847bd21",
                   "c770dae796fe1d62dc48d1ef8fd9a7ecba0832020805a58e6bb1716f0efa22b0"),
    "chest-ct": ("926182f21169dd11162bdeebfd63e5f0a9fa5bc48fb50823e3bc3e493c9b99f9",
                 "b24a0d2741b67e14db13728f0074574c7dca14c408be31d95e95022e13cdda68",
                 "6597eaf50a39746be33b0a25d5308f92b5da55dc8e94a8d13b50746345704d9d"),
}
V1_IMAGES = Path(__file__).with_name("phantom_v1_images.json")


def _write_v1(kind: str, out: Path) -> list[Path]:
    """The version-1 dataset of the hashes above; its two image files."""
    assert main(["phantom", kind, str(out), "--cases", "2", "--size", "20", "--seed", "3", "--no-progress",
                 "--generator-version", "1"]) == 0
    prefix = kind.replace("-", "_")
    return [out / "imagesTr" / f"{prefix}_000{i}_0000.nii.gz" for i in range(2)]


def _image_summary(path: Path) -> dict:
    """Quantiles and 4^3-block means of an image: what a change of the phantoms moves, an ulp does not."""
    stored = read_volume(path).array
    array = stored.astype(np.float64)
    blocks = array.reshape(5, 4, 5, 4, 5, 4).mean(axis=(1, 3, 5))
    return {"dtype": str(stored.dtype), "shape": list(array.shape),
            "quantiles": np.quantile(array, [0, 0.01, 0.25, 0.5, 0.75, 0.99, 1]).tolist(),
            "std": float(array.std()), "blocks": blocks.ravel().tolist()}


@pytest.mark.parametrize("kind", sorted(V1_SHA256))
def test_version_1_writes_the_files_it_always_wrote(kind: str, tmp_path: Path) -> None:
    out = tmp_path / kind
    images = _write_v1(kind, out)
    prefix = kind.replace("-", "_")
    names = [f"labelsTr/{prefix}_0000.nii.gz", f"labelsTr/{prefix}_0001.nii.gz", "reports.jsonl"]
    assert tuple(hashlib.sha256((out / name).read_bytes()).hexdigest() for name in names) == V1_SHA256[kind]
    expected = json.loads(V1_IMAGES.read_text())[kind]
    for path, reference in zip(images, expected, strict=True):
        summary = _image_summary(path)
        assert (summary["dtype"], summary["shape"]) == (reference["dtype"], reference["shape"]), path.name
        for key in ("quantiles", "std", "blocks"):
            scale = max(abs(q) for q in reference["quantiles"])  # relative to the image's range
            np.testing.assert_allclose(summary[key], reference[key], rtol=1e-5, atol=1e-5 * scale,
                                       err_msg=f"{path.name}: {key}")
    meta = json.loads((out / "dataset.json").read_text())
    assert meta.pop("phantom_generator") == {"kind": kind, "version": 1}
    assert meta["description"] == (f"volsynth procedural {kind} phantoms: 2 cases, 20^3 voxels, 360 mm field of "
                                   "view, seed 3")
    assert list(meta) == ["name", "description", "channel_names", "labels", "numTraining", "file_ending"]


def test_an_unknown_version_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    assert main(["phantom", "abdomen-ct", str(tmp_path / "x"), "--cases", "1", "--size", "16",
                 "--generator-version", "3"]) == 2
    assert "unknown phantom generator version 3" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_version_2_size_and_count_distributions_are_long_tailed() -> None:
    rng = np.random.default_rng(0)
    d = np.array([sample_diameter(rng) for _ in range(20000)])
    assert d.min() >= DIAMETER_MM[0] and d.max() <= DIAMETER_MM[1]
    assert (d < 15).mean() > 0.6 and 0.03 < (d > 30).mean() < 0.15  # many small, few large
    assert abs(sum(COUNT_P) - 1) < 1e-9 and COUNT_P[0] > 0 and COUNT_P[1] > COUNT_P[2] > COUNT_P[5] > COUNT_P[9] > 0


def _written_cases(tmp_path: Path, kind: str, seeds: range, size: int = 64,
                   **options) -> list[tuple[np.ndarray, np.ndarray, dict]]:
    """Generate, write and read back cases: (image, labels, facts) as they are on disk."""
    out = []
    for seed in seeds:
        case = generate_case(kind, case_seed(5, seed), size=size, case_id=f"case_{seed:04d}", **options)
        write_case(case, tmp_path, kind)
        image = read_volume(tmp_path / "imagesTr" / f"{case.case_id}_0000.nii.gz").array
        labels = read_label(tmp_path / "labelsTr" / f"{case.case_id}.nii.gz").array
        out.append((image, labels, case.facts))
    return out


def _component(labels: np.ndarray, lesion: dict) -> np.ndarray:
    components, _ = ndi.label(labels == 4, structure=FULL_CONNECTIVITY)
    index = components[tuple(int(round(c)) for c in lesion["centre_voxel"])]
    assert index > 0
    return components == index


def test_version_2_ct_lesions_contrast_sizes_and_facts_match_the_written_image(tmp_path: Path) -> None:
    interior, seen_types = [], set()
    for image, labels, facts in _written_cases(tmp_path, "abdomen-ct", range(10), 80, lesions=6,
                                                  phase="portal-venous"):
        spacing = np.asarray(facts["spacing_mm"])
        voxel = float(spacing.max())
        measured = lesion_contrasts(image, labels, spacing)
        assert len(measured) == facts["lesion_count"] == len(facts["lesions"])
        liver = float(np.median(image[labels == 1]))
        for lesion in facts["lesions"]:
            seen_types.add(lesion["type"])
            assert lesion["type"] in LESION_TYPES and 1 <= lesion["segment"] <= 8
            assert 30 <= abs(lesion["contrast_hu"]) <= 80
            assert (lesion["contrast_hu"] > 0) == (lesion["type"] == "hyperdense")
            mask = _component(labels, lesion)
            assert abs(max_extent_mm(mask, spacing) - lesion["diameter_mm"]) <= voxel
            equivalent = (6 * mask.sum() * np.prod(spacing) / np.pi) ** (1 / 3)
            assert abs(equivalent - lesion["equivalent_diameter_mm"]) <= 0.1
            assert DIAMETER_MM[0] <= lesion["diameter_mm"] <= DIAMETER_MM[1] + voxel
            assert lesion["diameter_mm"] - equivalent <= 2 * voxel  # near-spherical: either diameter describes it
            inner = ndi.binary_erosion(np.pad(mask, 1), FULL_CONNECTIVITY)[1:-1, 1:-1, 1:-1]
            if inner.any():
                value = float(np.median(image[inner])) - liver
                assert np.sign(value) == np.sign(lesion["contrast_hu"])
                if lesion["type"] != "necrotic":  # a necrotic interior is mostly its darker core
                    interior.append(abs(value))
    assert len(interior) >= 4 and len(seen_types) >= 3
    assert 30 <= float(np.median(interior)) <= 80


def test_version_2_mr_lesions_follow_their_signal_ratio(tmp_path: Path) -> None:
    checked = 0
    for sequence in ("T1", "T2"):
        for image, labels, facts in _written_cases(tmp_path / sequence, "abdomen-mr", range(4), lesions=6,
                                                   sequence=sequence):
            liver = float(np.median(image[labels == 1]))
            for lesion in facts["lesions"]:
                assert lesion["signal"] == ("hyperintense" if lesion["contrast_ratio"] > 1 else "hypointense")
                mask = _component(labels, lesion)
                inner = ndi.binary_erosion(np.pad(mask, 1), FULL_CONNECTIVITY)[1:-1, 1:-1, 1:-1]
                if inner.any() and abs(lesion["contrast_ratio"] - 1) > 0.25:
                    assert (np.median(image[inner]) > liver) == (lesion["contrast_ratio"] > 1)
                    checked += 1
    assert checked >= 2


def test_the_generator_version_travels_into_prepared_data_and_model_provenance(tmp_path: Path) -> None:
    data = write_phantom_dataset("abdomen-mr", tmp_path / "ph", cases=2, size=24, seed=1, progress=False)
    assert json.loads((data / "dataset.json").read_text())["phantom_generator"] == {"kind": "abdomen-mr",
                                                                                    "version": 2}
    plan = prepare_dataset(data, tmp_path / "prepared", progress=False)
    assert plan.source["phantom_generator"] == {"kind": "abdomen-mr", "version": 2}
    assert Plan.load(tmp_path / "prepared").source["phantom_generator"]["version"] == 2
    assert json.loads((tmp_path / "prepared" / "dataset.json").read_text())["phantom_generator"]["version"] == 2
    ct = {"source": {"phantom_generator": {"kind": "abdomen-ct", "version": 1}}}
    assert phantom_generators({"plan": plan.to_dict()}) == [{"kind": "abdomen-mr", "version": 2}]
    assert phantom_generators({"plans": {"ct": ct, "mr": ct}}) == [{"kind": "abdomen-ct", "version": 1}]
    assert phantom_generators({"plan": {"source": {"sha256": "x"}}}) == []


if __name__ == "__main__":  # rewrite phantom_v1_images.json (only after checking that version 1 is unchanged)
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        summaries = {kind: [_image_summary(p) for p in _write_v1(kind, Path(folder) / kind)] for kind in V1_SHA256}
    V1_IMAGES.write_text(json.dumps(summaries, indent=1) + "\n")
    print(f"wrote {V1_IMAGES}")
