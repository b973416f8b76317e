"""Text adherence: the report parser on written-out sentences and on phantom reports (whose facts are
known), lesion measurement on hand-made masks with exactly known extents, and the comparison."""

import math

import numpy as np
import pytest

from volsynth.data.phantom import generate_case
from volsynth.evaluation.adherence import (
    Measured,
    StatedFacts,
    compare,
    measure,
    measure_lesions,
    parse_report,
    stated_facts,
    summarise,
    volume_statistics,
)
from volsynth.io import LabelMap, make_affine


@pytest.mark.parametrize("text, count, sizes", [
    ("Two hypodense lesions in the right lobe, the largest 24 mm in segment IV. The other measures 1.2 cm (S6).",
     2, [24.0, 12.0]),
    ("No focal liver lesion. Normal spleen size.", 0, []),
    ("The liver is free of focal lesions.", 0, []),
    ("A solitary 2.4 cm rim-enhancing mass in the left hepatic lobe (segment II).", 1, [24.0]),
    ("One 8 mm solid nodule in the right upper lobe.", 1, [8.0]),
    ("3 nodules in both lungs: 8 mm, 6 mm and 5,5 mm.", 3, [8.0, 6.0, 5.5]),
    ("A single lesion in segment 4 of the liver, measuring 24 mm.", 1, [24.0]),
    ("Normal kidneys. No hydronephrosis.", None, []),
])
def test_parse_report_counts_and_sizes(text, count, sizes):
    stated = parse_report(text)
    assert stated.lesion_count == count
    assert stated.diameters_mm == pytest.approx(sizes)


def test_parse_report_reads_findings_once_and_organ_volumes():
    text = ("CT abdomen, portal venous phase.\nFINDINGS: Hepatomegaly (liver volume 2150 ml). Two hypodense lesions "
            "in the right lobe, the largest 31 mm in S7. The other measures 12 mm (S6). Splenomegaly (455 ml).\n"
            "IMPRESSION: Two hypodense lesions, the largest 3.1 cm in segment VII. The other measures 1.2 cm.")
    stated = parse_report(text)
    assert stated.lesion_count == 2
    assert stated.diameters_mm == pytest.approx([31.0, 12.0])  # the impression's repetition is not counted again
    assert stated.volumes_ml == {"liver": 2150.0, "spleen": 455.0}


@pytest.mark.parametrize("kind", ["abdomen-ct", "abdomen-mr", "chest-ct"])
def test_parser_recovers_phantom_facts(kind):
    """Phantom reports are worded at random from known facts: the parser must read every one of them back."""
    for seed in range(12):
        case = generate_case(kind, seed, size=16)
        stated = parse_report(case.report)
        assert stated.lesion_count == case.facts["lesion_count"], case.report
        expected = sorted((float(x["diameter_mm"]) for x in case.facts["lesions"]), reverse=True)
        assert [round(d) for d in stated.diameters_mm] == expected, case.report


def test_structured_facts_win_over_text():
    facts = {"lesion_count": 3, "lesions": [{"diameter_mm": 10}, {"diameter_mm": 30}, {"diameter_mm": 20}]}
    stated = stated_facts("Two lesions of 5 mm and 6 mm. Splenomegaly (500 ml).", facts)
    assert (stated.lesion_count, stated.diameters_mm, stated.source) == (3, [30.0, 20.0, 10.0], "facts")
    assert stated.volumes_ml == {"spleen": 500.0}  # volumes always come from the text
    assert stated_facts("", None).empty


def lesion_map(spacing=(2.0, 2.0, 2.0)) -> LabelMap:
    """Liver (1) with two tumours (4): a 5-voxel rod along x and a single voxel, far apart."""
    array = np.zeros((20, 12, 12), dtype=np.uint8)
    array[2:18, 2:10, 2:10] = 1
    array[3:8, 5, 5] = 4  # rod: centres 4 voxels apart -> 4 * sx + mean spacing
    array[14, 8, 8] = 4  # one voxel -> one mean spacing
    return LabelMap(array, make_affine(spacing), labels={"background": 0, "liver": 1, "tumour": 4})


def test_measure_lesions_on_known_masks():
    label = lesion_map((2.0, 1.0, 3.0))
    mean = (2.0 + 1.0 + 3.0) / 3
    assert measure_lesions(label, [4]) == pytest.approx([4 * 2.0 + mean, mean])
    assert measure_lesions(label, [4], min_voxels=2) == pytest.approx([4 * 2.0 + mean])
    measured = measure(label, label.labels)
    assert measured.lesion_count == 2
    voxel_ml = 2.0 * 1.0 * 3.0 / 1000
    assert measured.volumes_ml["tumour"] == pytest.approx(round(6 * voxel_ml, 1))
    assert measured.volumes_ml["liver"] == pytest.approx(round((16 * 8 * 8 - 6) * voxel_ml, 1))


def test_diagonal_extent_is_euclidean():
    array = np.zeros((8, 8, 8), dtype=np.uint8)
    array[1:4, 1:4, 1:4] = 8  # a 3x3x3 cube: corner to corner 2·sqrt(3) voxels
    label = LabelMap(array, make_affine((1.5, 1.5, 1.5)), labels={"nodule": 8})
    assert measure_lesions(label, [8]) == pytest.approx([2 * math.sqrt(3) * 1.5 + 1.5])


def test_compare_and_summarise():
    label = lesion_map()
    measured = measure(label, label.labels)  # diameters 10 mm and 2 mm
    right = compare(StatedFacts(2, [12.0, 2.0], {"liver": 10.0}), measured)
    assert right["count_correct"] and right["count_error"] == 0
    assert [p["abs_error_mm"] for p in right["diameter_pairs"]] == pytest.approx([2.0, 0.0])
    assert right["volumes"]["liver"]["measured_ml"] == measured.volumes_ml["liver"]
    wrong = compare(StatedFacts(3, [10.0]), measured)
    assert wrong["count_correct"] is False and wrong["count_error"] == -1
    silent = compare(StatedFacts(None, []), Measured(0, [], {}))
    summary = summarise([right, wrong, silent])
    assert summary["volumes_with_stated_count"] == 2
    assert summary["count_accuracy"] == pytest.approx(0.5)
    assert summary["count_mae"] == pytest.approx(0.5)
    assert summary["diameter_pairs"] == 3
    assert summary["diameter_mae_mm"] == pytest.approx(2.0 / 3)


def test_volume_statistics_over_maps():
    maps = [(lesion_map(), lesion_map().labels), (lesion_map((1.0, 1.0, 1.0)), lesion_map().labels)]
    stats = volume_statistics(maps, classes=["tumour"])
    assert list(stats) == ["tumour"] and stats["tumour"]["n"] == 2
    assert stats["tumour"]["mean_ml"] == pytest.approx(np.mean([round(6 * 8 / 1000, 1), round(6 / 1000, 1)]))
