import json
import re
from pathlib import Path

import numpy as np
import pytest

from volsynth.cli import main
from volsynth.data.labelspec import parse_label_spec
from volsynth.data.prepare import load_manifest
from volsynth.data.vocabularies import (
    LabelPreset,
    class_members,
    label_groups,
    load_vocabulary,
    preset_mapping,
    vocabulary_names,
)
from volsynth.errors import ConfigError
from volsynth.io import read_label

ROOT = Path(__file__).resolve().parents[2]
TINY_ABDOMEN = json.loads((ROOT / "models" / "tiny-abdomen" / "model_index.json").read_text())["plans"]["plan"]
CHEST = json.loads((ROOT / "models" / "chest-hierarchical-64" / "model_index.json").read_text())["plans"]["plan"]
SNAKE = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")


def test_the_shipped_vocabularies():
    assert vocabulary_names() == ["amos", "maisi", "msd-liver", "totalsegmentator"]


def test_the_command_line_help_names_the_presets(capsys):
    for command in ("generate", "prepare"):
        assert main([command, "--help"]) == 0
        text = " ".join(capsys.readouterr().out.replace("│", " ").split())
        assert all(name in text for name in vocabulary_names()), text


@pytest.mark.parametrize("name", ["amos", "maisi", "msd-liver", "totalsegmentator"])
def test_each_table_loads_with_its_source_and_unique_ids(name):
    vocabulary = load_vocabulary(name)
    assert {"project", "version", "url", "table"} <= set(vocabulary.source)
    assert vocabulary.source["url"].startswith("https://")
    ids = [c.id for c in vocabulary.classes]
    assert len(ids) == len(set(ids)) and min(ids) >= 1
    assert all(SNAKE.fullmatch(c.canonical) for c in vocabulary.classes if c.canonical is not None)


def test_known_ids_of_the_real_tables():
    """Spot checks against the source tables (TotalSegmentator map_to_binary.py class_map["total"], MAISI
    configs/label_dict.json, the AMOS and MSD dataset.json labels)."""
    def ids(name):
        return {c.canonical: c.id for c in load_vocabulary(name).classes if c.canonical}

    def sources(name):
        return {c.id: c.source for c in load_vocabulary(name).classes}

    ts = ids("totalsegmentator")
    assert len(load_vocabulary("totalsegmentator").classes) == 117 and max(sources("totalsegmentator")) == 117
    assert (ts["spleen"], ts["kidney_right"], ts["liver"], ts["lung_upper_lobe_left"]) == (1, 2, 5, 10)
    assert (ts["aorta"], ts["pulmonary_vein"], ts["inferior_vena_cava"], ts["portal_vein"]) == (52, 53, 63, 64)
    assert sources("totalsegmentator")[64] == "portal_vein_and_splenic_vein"
    assert (ts["vertebrae_s1"], ts["vertebrae_c1"], ts["costal_cartilages"]) == (26, 50, 117)
    maisi = ids("maisi")
    assert len(load_vocabulary("maisi").classes) == 133  # 132 ids (8 placeholders) and body
    assert (maisi["liver"], maisi["spleen"], maisi["liver_tumour"], maisi["airway"]) == (1, 3, 26, 132)
    assert maisi["body"] == 200 and ts["trachea"] == 16
    assert sources("maisi")[2] == "dummy1" and load_vocabulary("maisi").classes[1].canonical is None
    amos = ids("amos")
    assert len(amos) == 15 and (amos["spleen"], amos["liver"], amos["inferior_vena_cava"], amos["urinary_bladder"]) \
        == (1, 6, 9, 14)
    assert ids("msd-liver") == {"liver": 1, "liver_tumour": 2} and sources("msd-liver")[2] == "cancer"


def test_merge_groups_name_only_canonical_names():
    canonical = {n for name in vocabulary_names() for n in load_vocabulary(name).canonical_names()}
    for group, members in label_groups().items():
        assert SNAKE.fullmatch(group) and members <= canonical, (group, members - canonical)
    assert class_members("lobes") == {"lobes", "lung_upper_lobe_left", "lung_lower_lobe_left",
                                      "lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right"}


def test_a_preset_gives_the_model_classes_it_knows():
    assert preset_mapping("totalsegmentator", TINY_ABDOMEN["labels"]) == {
        "liver": [5], "portal_vein": [64], "spleen": [1], "kidney": [2, 3], "aorta": [52], "ivc": [63],
        "stomach_bowel": [6, 18, 19, 20], "spine": list(range(26, 51))}  # no hepatic_vein, no tumour
    assert preset_mapping("msd-liver", TINY_ABDOMEN["labels"]) == {"liver": [1], "tumour": [2]}
    assert preset_mapping("totalsegmentator", ["lobes", "airway", "vessels"]) == {
        "lobes": [10, 11, 12, 13, 14], "airway": [16], "vessels": [53]}
    chest = preset_mapping("maisi", CHEST["labels"])
    assert chest["left_upper_lobe"] == [28] and chest["airway"] == [57, 132] and chest["pulmonary_vessels"] == [119]


def test_selection_by_canonical_source_or_group_name():
    labels = TINY_ABDOMEN["labels"]
    assert preset_mapping("totalsegmentator", labels, ["liver", "portal_vein_and_splenic_vein"]) == {
        "liver": [5], "portal_vein": [64]}
    assert preset_mapping("totalsegmentator", labels, ["kidney_left"]) == {"kidney": [2, 3]}  # whole classes
    assert preset_mapping("amos", labels, ["postcava", "Right Kidney"]) == {"kidney": [2, 3], "ivc": [9]}
    with pytest.raises(ConfigError, match="gives none of the model's classes"):
        preset_mapping("totalsegmentator", labels, ["heart"])
    with pytest.raises(ConfigError, match="'livr' is not a class of the totalsegmentator vocabulary.*spleen"):
        LabelPreset.parse("totalsegmentator:livr")
    with pytest.raises(ConfigError, match="unknown label vocabulary 'nope'.*amos, maisi, msd-liver"):
        LabelPreset.parse("nope")
    assert str(LabelPreset.parse("totalsegmentator:liver, spleen")) == "totalsegmentator:liver,spleen"


def test_prepare_label_specs_take_presets(msd_dataset, tmp_path, capsys):
    assert parse_label_spec("msd-liver", {}) == {"liver": [1], "liver_tumour": [2]}
    assert parse_label_spec("totalsegmentator:lobes,spleen", {}) == {"lobes": [10, 11, 12, 13, 14], "spleen": [1]}
    with pytest.raises(ConfigError, match="neither name=id nor a preset.*presets: amos"):
        parse_label_spec("nope:liver", {})
    out = tmp_path / "prep"
    assert main(["prepare", str(msd_dataset), str(out), "--size", "16", "--labels", "msd-liver:tumour,liver",
                 "--no-progress"]) == 0
    plan = json.loads((out / "plan.json").read_text())
    assert plan["labels"] == {"tumour": 1, "liver": 2}
    for entry in load_manifest(out)["cases"]:
        assert set(np.unique(read_label(out / entry["label"]).array)) == {0, 1, 2}
    capsys.readouterr()
    assert main(["prepare", str(msd_dataset), str(tmp_path / "bad"), "--labels", "msd-liver:lobes"]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no 'lobes'" in err and "\n" not in err and not (tmp_path / "bad").exists()


def test_the_guidance_page_lists_every_preset_and_merge_group():
    page = (ROOT / "docs" / "guidance.md").read_text()
    section = page[page.index("## Label presets"):page.index("## Refiner")]
    for name in vocabulary_names():
        assert f"| `{name}` |" in section and load_vocabulary(name).source["url"] in section
    for group in label_groups():
        assert f"`{group}`" in section, group


def test_every_shipped_model_class_but_the_hepatic_vein_comes_from_some_preset():
    classes = set()
    for index in (ROOT / "models").glob("*/model_index.json"):
        for plan in (json.loads(index.read_text()).get("plans") or {}).values():
            for one in [plan] if "labels" in plan else plan.values():  # a model per modality: CT and MR plans
                classes |= set(one["labels"]) - {"background"}
    given = {c for name in vocabulary_names() for c in preset_mapping(name, sorted(classes))}
    assert {"lobes", "vessels", "left_upper_lobe", "pulmonary_vessels", "spine"} <= classes
    assert classes - given == {"hepatic_vein"}
