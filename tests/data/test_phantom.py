"""Procedural phantoms: determinism, labels, facts against masks, intensities, reports, datasets."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.spatial.distance import pdist

from volsynth.data.phantom import LABELS, PHANTOM_KINDS, case_seed, generate_case, write_phantom_dataset
from volsynth.data.phantom.generate import generate_scene
from volsynth.data.phantom.tissues import T
from volsynth.errors import ConfigError, WriteError
from volsynth.viz import plane

SIZE = 32
LESION_LABEL = {"abdomen-ct": 4, "abdomen-mr": 4, "chest-ct": 8}
COUNT_WORDS = {1: ("one", "single", "solitary"), 2: ("two",), 3: ("three",), 4: ("four",)}


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    return ndi.label(mask, structure=np.ones((3, 3, 3), dtype=bool))


def _max_extent(mask: np.ndarray, spacing) -> float:
    """Brute force: largest distance between any two voxel centres plus the mean spacing."""
    points = np.argwhere(mask) * np.asarray(spacing)
    return (float(pdist(points).max()) if len(points) > 1 else 0.0) + float(np.mean(spacing))


@pytest.mark.parametrize("kind", PHANTOM_KINDS)
def test_same_seed_same_case_and_different_seed_differs(kind: str) -> None:
    a, b = generate_case(kind, 3, size=SIZE), generate_case(kind, 3, size=SIZE)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    assert a.facts == b.facts and a.report == b.report
    c = generate_case(kind, 4, size=SIZE)
    assert not np.array_equal(a.labels, c.labels)
    assert a.image.dtype == np.float32 and a.labels.dtype == np.uint8 and a.image.shape == (SIZE,) * 3
    json.dumps(a.facts)  # JSON-serialisable


@pytest.mark.parametrize("kind", PHANTOM_KINDS)
def test_affine_is_ras_centred_and_anatomy_is_where_ras_says(kind: str) -> None:
    case = generate_case(kind, 1, size=SIZE)
    spacing = 360.0 / SIZE
    expected = np.diag([spacing, spacing, spacing, 1.0])
    expected[:3, 3] = -spacing * (SIZE - 1) / 2
    assert np.allclose(case.affine, expected)
    world = lambda label: case.affine[:3, :3] @ np.argwhere(case.labels == label).mean(axis=0) + case.affine[:3, 3]  # noqa: E731
    ids = LABELS[kind]
    if kind.startswith("abdomen"):
        liver, spleen, spine = world(ids["liver"]), world(ids["spleen"]), world(ids["spine"])
        assert liver[0] > 0 > spleen[0]  # liver on the patient's right (+x), spleen on the left
        assert spine[1] < liver[1]  # spine posterior
    else:
        rul, rll, lul = world(ids["right_upper_lobe"]), world(ids["right_lower_lobe"]), world(ids["left_upper_lobe"])
        assert rul[0] > 0 > lul[0] and rul[2] > rll[2]  # right lung at +x, upper lobe superior


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_abdomen_has_every_organ_label(seed: int) -> None:
    case = generate_case("abdomen-ct", seed, size=SIZE, lesions=0)
    present = set(np.unique(case.labels).tolist())
    expected = set(LABELS["abdomen-ct"].values()) - {LABELS["abdomen-ct"]["tumour"]}
    assert expected <= present
    assert case.facts["lesion_count"] == 0 and LABELS["abdomen-ct"]["tumour"] not in present


@pytest.mark.parametrize("seed", [0, 1])
def test_chest_has_lobes_airway_and_vessels(seed: int) -> None:
    case = generate_case("chest-ct", seed, size=SIZE, lesions=0, effusion="none")
    assert set(range(1, 8)) <= set(np.unique(case.labels).tolist())


@pytest.mark.parametrize("kind,size", [("abdomen-ct", SIZE), ("abdomen-ct", 48), ("chest-ct", SIZE), ("chest-ct", 48)])
def test_lesion_facts_match_the_label_map(kind: str, size: int) -> None:
    seen = 0
    for seed in range(3):
        case = generate_case(kind, seed, size=size, lesions=3)
        spacing = np.asarray(case.facts["spacing_mm"])
        components, count = _components(case.labels == LESION_LABEL[kind])
        assert count == case.facts["lesion_count"] == len(case.facts["lesions"])
        for lesion in case.facts["lesions"]:
            index = components[tuple(int(round(c)) for c in lesion["centre_voxel"])]
            if index == 0:  # a concave lesion's centroid may fall outside it: take the nearest component
                centroids = ndi.center_of_mass(np.ones_like(components), components, range(1, count + 1))
                index = 1 + int(np.argmin([np.linalg.norm(np.subtract(c, lesion["centre_voxel"])) for c in centroids]))
            mask = components == index
            assert int(mask.sum()) == lesion["voxels"]
            assert abs(lesion["diameter_mm"] - _max_extent(mask, spacing)) <= spacing.max()
            assert _max_extent(mask, spacing) >= 2 * spacing.max()  # reported lesions are >= 2 voxels across
            world = case.affine[:3, :3] @ np.asarray(lesion["centre_voxel"]) + case.affine[:3, 3]
            assert np.allclose(world, lesion["centre_mm"], atol=0.01 * spacing.max() + 0.06)
        seen += count
    assert seen > 0


def _median(image: np.ndarray, mask: np.ndarray) -> float:
    assert mask.any()
    return float(np.median(image[mask]))


@pytest.mark.parametrize("phase,liver_range", [("non-contrast", (40, 80)), ("arterial", (50, 110)),
                                               ("portal-venous", (80, 160))])
def test_abdomen_ct_values_are_plausible(phase: str, liver_range: tuple[float, float]) -> None:
    scene, image, _, facts = generate_scene("abdomen-ct", 5, size=48, phase=phase)
    assert facts["phase"] == phase
    assert liver_range[0] <= _median(image, scene.labels == 1) <= liver_range[1]
    inner = ndi.binary_erosion(scene.tissue == T["fat"], iterations=1)
    assert _median(image, inner) < -50
    assert _median(image, scene.tissue == T["air"]) < -900
    assert _median(image, scene.labels == LABELS["abdomen-ct"]["spine"]) > 200
    assert image.min() >= -1024 and image.max() <= 3071


def test_chest_ct_values_are_plausible() -> None:
    scene, image, _, _ = generate_scene("chest-ct", 2, size=48, emphysema=False)
    lungs = (scene.labels >= 1) & (scene.labels <= 5) & (scene.tissue == T["lung"])
    assert _median(image, ndi.binary_erosion(lungs)) < -700
    assert _median(image, scene.tissue == T["air"]) < -900


def test_mr_shares_the_ct_anatomy_and_is_non_negative() -> None:
    ct = generate_case("abdomen-ct", 7, size=SIZE)
    for sequence in ("T1", "T2"):
        mr = generate_case("abdomen-mr", 7, size=SIZE, sequence=sequence)
        assert np.array_equal(mr.labels, ct.labels)
        assert mr.facts["sequence"] == sequence and mr.facts["modality"] == "MR"
        assert np.isfinite(mr.image).all() and mr.image.min() >= 0
        assert [x["diameter_mm"] for x in mr.facts["lesions"]] == [x["diameter_mm"] for x in ct.facts["lesions"]]


@pytest.mark.parametrize("kind", ["abdomen-ct", "abdomen-mr", "chest-ct"])
def test_reports_state_the_lesion_count_and_every_diameter(kind: str) -> None:
    counts = set()
    for seed in range(8):
        case = generate_case(kind, seed, size=SIZE)
        text, n = case.report.lower(), case.facts["lesion_count"]
        counts.add(n)
        if n == 0:
            assert re.search(r"\b(no|free of)\b[^.]*\b(lesion|lesions|nodule|nodules)\b", text), case.report
        else:
            assert any(re.search(rf"\b{w}\b", text) for w in COUNT_WORDS[n]), case.report
            for lesion in case.facts["lesions"]:
                d = lesion["diameter_mm"]
                assert f"{d} mm" in text or f"{d / 10:.1f} cm" in text, case.report
    assert 0 in counts and len(counts) > 1


def test_options_are_checked() -> None:
    with pytest.raises(ConfigError):
        generate_case("brain-mr", 0, size=SIZE)
    with pytest.raises(ConfigError):
        generate_case("abdomen-mr", 0, size=SIZE, phase="arterial")
    with pytest.raises(ConfigError):
        generate_case("chest-ct", 0, size=SIZE, effusion="huge")
    with pytest.raises(ConfigError):
        generate_case("abdomen-ct", -1, size=SIZE)


def test_axial_plane_is_radiological() -> None:
    volume = np.zeros((4, 5, 3))
    volume[3, 4, 1] = 1  # patient right (+x), anterior (+y)
    shown = plane(volume, "axial", 1)
    assert shown.shape == (5, 4) and shown[0, 0] == 1  # top-left: anterior, patient right
    volume[3, 0, 2] = 2  # patient right, superior (+z)
    assert plane(volume, "coronal", 0)[0, 0] == 2
    volume[0, 4, 2] = 3  # anterior, superior
    assert plane(volume, "sagittal", 0)[0, 0] == 3


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_dataset_is_byte_identical_across_workers_and_verifies(tmp_path: Path) -> None:
    one = write_phantom_dataset("abdomen-ct", tmp_path / "one" / "Dataset900_Phantom", cases=3, size=24, seed=11,
                                workers=1, progress=False, preview=True)
    two = write_phantom_dataset("abdomen-ct", tmp_path / "two" / "Dataset900_Phantom", cases=3, size=24, seed=11,
                                workers=2, progress=False, preview=True)
    files = _tree(one)
    assert files == _tree(two)
    assert {"dataset.json", "reports.jsonl", "preview.png", "imagesTr/abdomen_ct_0000_0000.nii.gz",
            "labelsTr/abdomen_ct_0002.nii.gz"} <= set(files)
    meta = json.loads(files["dataset.json"])
    assert meta["labels"] == LABELS["abdomen-ct"] and meta["numTraining"] == 3 and meta["name"] == "Dataset900_Phantom"
    entries = [json.loads(line) for line in files["reports.jsonl"].decode().splitlines()]
    assert [e["case"] for e in entries] == [f"abdomen_ct_{n:04d}" for n in range(3)]
    assert entries[1]["facts"]["seed"] == case_seed(11, 1)
    again = generate_case("abdomen-ct", entries[1]["facts"]["seed"], size=24)
    assert again.report == entries[1]["report"] and again.facts == entries[1]["facts"]
    from volsynth.data.verify import verify_dataset

    assert verify_dataset(one) == []


def test_dataset_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(WriteError):
        write_phantom_dataset("chest-ct", out, cases=1, size=16, progress=False)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
