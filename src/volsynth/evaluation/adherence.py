"""Text adherence (dual-guided liver CT: tumour size in the generated image against the prompt; MedSyn: airway volume):
what a prompt states (lesion count, diameters, organ volumes) against what a generated volume shows.

What is stated, in order of preference:
1. structured facts carried with the volume (``facts`` in a sidecar or its job, or the facts of the real
   case whose report is the prompt word for word): ``lesion_count`` and ``lesions[*].diameter_mm``;
2. the prompt text, read by ``parse_report`` (a small regex parser, below).
Organ volumes always come from the text: structured facts hold every organ's volume, which a prompt does
not state.

``parse_report`` reads (documented rules, not a language model):
- diameters: every length ``<number> mm|cm`` ("24 mm", "2.4 cm", "2,4 cm") is a lesion diameter in mm;
- count: the first phrase "<count word or number> [up to 5 words] <lesion noun>" ("two hypodense lesions",
  "A solitary 24 mm mass", "3 nodules"); numbers followed by a unit are sizes, not counts; a negation
  ("no ... lesion", "free of ... nodules", "without ... masses") in the same sentence gives 0;
- organ volumes: "<organ word> ... <number> ml|cc" within one sentence (hepatomegaly/liver -> liver,
  splenomegaly/spleen -> spleen, effusion -> pleural_effusion, airway -> airway);
- when the text has an IMPRESSION section repeating the findings, only the part before it is read (if it
  states anything), so a lesion is not counted twice.

Measured (``volsynth.data.phantom.measure``, as the phantom facts are): lesions are the 26-connected
components of the lesion classes (``tumour``, ``nodule``, ...) of a label map; a diameter is the
component's maximum 3D extent in mm; organ volumes are voxel counts times the voxel volume. Stated and
measured diameters are paired largest with largest; the error of a pair is |measured - stated| in mm.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage as ndi

from volsynth.data.phantom.measure import FULL_CONNECTIVITY, label_volumes_ml, max_extent_mm
from volsynth.io.volume import LabelMap

NUMBER_WORDS = {"no": 0, "zero": 0, "a": 1, "an": 1, "one": 1, "single": 1, "solitary": 1, "two": 2, "three": 3,
                "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11,
                "twelve": 12}
LESION_CLASSES = ("tumour", "tumor", "lesion", "nodule", "metastasis", "mass", "cyst")
ORGAN_WORDS = {"hepatomegaly": "liver", "liver": "liver", "splenomegaly": "spleen", "spleen": "spleen",
               "effusion": "pleural_effusion", "airway": "airway", "airways": "airway"}
_NOUN = r"(?:lesions?|masses|mass|nodules?|tumou?rs?|metastas[ie]s|cysts?|foci|focus)"
_WORDS = "|".join(sorted(NUMBER_WORDS, key=len, reverse=True))
_COUNT = r"(?:\b(?:" + _WORDS + r")\b|(?<![\d.,])\d+(?![\d.,]|\s*(?:mm|cm|ml|cc)\b))"  # a number not followed by a unit
COUNT_PATTERN = re.compile(_COUNT + r"((?:\s+[\w.,()/-]+){0,5}?)\s+" + _NOUN + r"\b", re.IGNORECASE)
NEGATION_PATTERN = re.compile(r"\b(?:no|free of|without|negative for)\b(?:\s+[\w-]+){0,4}?\s+" + _NOUN + r"\b",
                              re.IGNORECASE)
SIZE_PATTERN = re.compile(r"(?<![\w.])(\d+(?:[.,]\d+)?)\s*(mm|cm)\b", re.IGNORECASE)
VOLUME_PATTERN = re.compile(r"\b(" + "|".join(ORGAN_WORDS) + r")\b[^.]{0,60}?(\d+(?:[.,]\d+)?)\s*(ml|cc)\b",
                            re.IGNORECASE)


@dataclass
class StatedFacts:
    """What a prompt states: lesion count (None when it says nothing), diameters (mm, largest first), volumes (ml)."""

    lesion_count: int | None = None
    diameters_mm: list[float] = field(default_factory=list)
    volumes_ml: dict[str, float] = field(default_factory=dict)
    source: str = "text"  # "text" or "facts"

    @property
    def empty(self) -> bool:
        """Whether nothing measurable is stated."""
        return self.lesion_count is None and not self.diameters_mm and not self.volumes_ml


def _number(text: str) -> float:
    return float(text.replace(",", "."))


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.;:!?])\s+|\n+", text) if s.strip()]


def parse_count(text: str) -> int | None:
    """The lesion count a text states: the first counted or negated lesion phrase (see module doc)."""
    for sentence in _sentences(text):
        negation, match = NEGATION_PATTERN.search(sentence), COUNT_PATTERN.search(sentence)
        if negation and (match is None or negation.start() <= match.start()):
            return 0
        if match:
            word = match.group(0).split()[0].lower()
            return NUMBER_WORDS[word] if word in NUMBER_WORDS else int(word)
    return None


def parse_sizes_mm(text: str) -> list[float]:
    """Every length in the text in mm ("24 mm", "2.4 cm"), largest first."""
    sizes = [_number(v) * (10.0 if unit.lower() == "cm" else 1.0) for v, unit in SIZE_PATTERN.findall(text)]
    return sorted(sizes, reverse=True)


def parse_volumes_ml(text: str) -> dict[str, float]:
    """Organ volumes stated in ml or cc, per class name (the first statement per organ)."""
    volumes: dict[str, float] = {}
    for sentence in _sentences(text):
        for word, value, _ in VOLUME_PATTERN.findall(sentence):
            volumes.setdefault(ORGAN_WORDS[word.lower()], _number(value))
    return volumes


def parse_report(text: str) -> StatedFacts:
    """Lesion count, diameters and organ volumes stated by a report or prompt (regex rules in the module doc)."""
    text = text or ""
    split = re.search(r"\bIMPRESSION\s*:", text, re.IGNORECASE)
    findings, impression = (text[:split.start()], text[split.end():]) if split else (text, "")
    part = findings if (parse_count(findings) is not None or parse_sizes_mm(findings)) else (impression or text)
    return StatedFacts(parse_count(part), parse_sizes_mm(part), parse_volumes_ml(text), "text")


def stated_facts(prompt: str, facts: Mapping | None = None) -> StatedFacts:
    """Structured facts when given (count and diameters), else what the prompt text states."""
    parsed = parse_report(prompt)
    if facts and ("lesion_count" in facts or "lesions" in facts):
        lesions = facts.get("lesions") or []
        diameters = sorted((float(x["diameter_mm"]) for x in lesions if "diameter_mm" in x), reverse=True)
        count = int(facts["lesion_count"]) if "lesion_count" in facts else len(lesions)
        return StatedFacts(count, diameters, parsed.volumes_ml, "facts")
    return parsed


# -- measurement ------------------------------------------------------------------------------------------------

def lesion_class_ids(labels: Mapping[str, int]) -> list[int]:
    """Ids of the classes whose name says lesion (tumour, nodule, ...)."""
    return [int(i) for name, i in labels.items() if int(i) != 0 and any(w in name.lower() for w in LESION_CLASSES)]


def measure_lesions(label: LabelMap, class_ids: Sequence[int], min_voxels: int = 1) -> list[float]:
    """Diameters (mm, largest first) of the 26-connected components of the lesion classes."""
    mask = np.isin(label.array, list(class_ids))
    components, count = ndi.label(mask, structure=FULL_CONNECTIVITY)
    diameters = []
    for index, window in enumerate(ndi.find_objects(components), start=1):
        component = components[window] == index
        if window is not None and component.sum() >= min_voxels:
            diameters.append(max_extent_mm(component, label.spacing))
    return sorted(diameters, reverse=True)


@dataclass
class Measured:
    """What a label map of a generated volume shows."""

    lesion_count: int
    diameters_mm: list[float]
    volumes_ml: dict[str, float]


def measure(label: LabelMap, labels: Mapping[str, int], min_voxels: int = 1) -> Measured:
    """Lesion count and diameters and every class's volume (ml) of a label map with class names ``labels``."""
    diameters = measure_lesions(label, lesion_class_ids(labels), min_voxels)
    named = {name: int(i) for name, i in labels.items() if int(i) != 0}
    volumes = label_volumes_ml(np.asarray(label.array), {"background": 0, **named}, label.spacing) if named else {}
    return Measured(len(diameters), [round(d, 2) for d in diameters], volumes)


# -- comparison -----------------------------------------------------------------------------------------------

def compare(stated: StatedFacts, measured: Measured) -> dict:
    """Count agreement, paired diameter errors (largest with largest) and organ volume errors of one volume."""
    pairs = list(zip(stated.diameters_mm, measured.diameters_mm, strict=False))
    volume_errors = {name: {"stated_ml": v, "measured_ml": measured.volumes_ml[name],
                            "abs_error_ml": abs(measured.volumes_ml[name] - v),
                            "rel_error": abs(measured.volumes_ml[name] - v) / v if v > 0 else math.nan}
                     for name, v in stated.volumes_ml.items() if name in measured.volumes_ml}
    return {"stated": asdict(stated), "measured": asdict(measured),
            "count_correct": None if stated.lesion_count is None else measured.lesion_count == stated.lesion_count,
            "count_error": None if stated.lesion_count is None else measured.lesion_count - stated.lesion_count,
            "diameter_pairs": [{"stated_mm": s, "measured_mm": m, "abs_error_mm": abs(m - s)} for s, m in pairs],
            "volumes": volume_errors}


def summarise(results: Sequence[dict]) -> dict:
    """Count accuracy, mean |count error|, diameter errors (mm) and per-organ volume errors over volumes."""
    counted = [r for r in results if r["count_correct"] is not None]
    errors = [p["abs_error_mm"] for r in results for p in r["diameter_pairs"]]
    organs: dict[str, list[dict]] = {}
    for r in results:
        for name, v in r["volumes"].items():
            organs.setdefault(name, []).append(v)
    return {
        "volumes_with_stated_count": len(counted),
        "count_accuracy": float(np.mean([r["count_correct"] for r in counted])) if counted else None,
        "count_mae": float(np.mean([abs(r["count_error"]) for r in counted])) if counted else None,
        "diameter_pairs": len(errors),
        "diameter_mae_mm": float(np.mean(errors)) if errors else None,
        "diameter_median_ae_mm": float(np.median(errors)) if errors else None,
        "organ_volume": {name: {"n": len(v), "mae_ml": float(np.mean([x["abs_error_ml"] for x in v])),
                                "mean_rel_error": float(np.nanmean([x["rel_error"] for x in v]))}
                         for name, v in organs.items()},
    }


def volume_statistics(label_maps: Sequence[tuple[LabelMap, Mapping[str, int]]],
                      classes: Sequence[str] | None = None) -> dict[str, dict]:
    """Mean, SD and n of each class's volume (ml) over label maps (e.g. airway volume, MedSyn)."""
    collected: dict[str, list[float]] = {}
    for label, labels in label_maps:
        for name, value in measure(label, labels).volumes_ml.items():
            if classes is None or name in classes:
                collected.setdefault(name, []).append(value)
    return {name: {"mean_ml": float(np.mean(v)), "sd_ml": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
                   "n": len(v)} for name, v in collected.items()}
