"""Radiology-style reports written from a case's facts (never from anything the facts do not hold).

Wording varies with a seeded generator: synonyms, sentence order, mm or cm, with or without
section headings. Every lesion's diameter appears in the text, and the lesion count is always
stated (a number word, or "single"/"solitary" for one) or negated ("No ...", "free of ...").
"""

from __future__ import annotations

import numpy as np

NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_LOBE_NAMES = {"RUL": "right upper lobe", "RML": "right middle lobe", "RLL": "right lower lobe",
               "LUL": "left upper lobe", "LLL": "left lower lobe"}
_PHASE_WORDS = {"non-contrast": ("non-contrast", "unenhanced", "native"),
                "arterial": ("arterial phase", "late arterial phase"),
                "portal-venous": ("portal venous phase", "portal-venous phase"),
                "contrast-enhanced": ("contrast-enhanced", "with intravenous contrast")}
_CT_DENSITY = {"hypodense": ("hypodense", "hypoattenuating", "low-attenuation"),
               "hyperdense": ("hyperdense", "hyperattenuating"),
               "rim-enhancing": ("rim-enhancing",), "necrotic": ("centrally necrotic", "necrotic")}


def _pick(rng: np.random.Generator, options) -> str:
    return str(options[int(rng.integers(len(options)))])


def _size(rng: np.random.Generator, mm: int, cm: bool) -> str:
    return f"{mm / 10:.1f} cm" if cm else f"{mm} mm"


def _count(rng: np.random.Generator, n: int) -> str:
    if n == 1:
        return _pick(rng, ("A single", "A solitary", "One"))
    return NUMBER_WORDS[n].capitalize() if n < len(NUMBER_WORDS) else str(n)


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _plural(word: str, n: int) -> str:
    return word if n == 1 else ("masses" if word == "mass" else word + "s")


def first_big(lesions: list[dict], mm: int) -> bool:
    """Whether the largest lesion (lesions come largest first) measures at least ``mm``."""
    return bool(lesions) and lesions[0]["diameter_mm"] >= mm


def _liver_lesion_text(rng: np.random.Generator, facts: dict, cm: bool) -> str:
    lesions, mr = facts["lesions"], facts["modality"] == "MR"
    n = len(lesions)
    if n == 0:
        return _pick(rng, ("No focal liver lesion.", "No focal hepatic lesion is identified.",
                           "The liver is free of focal lesions.", "No suspicious liver lesions."))

    adjectives: dict[tuple, tuple[str, str]] = {}

    def describe(lesion: dict) -> tuple[str, str]:  # (adjective, trailing phrase), one wording per kind
        key = (lesion["density"], lesion.get("signal"))
        if key not in adjectives:
            if mr:
                extra = {"rim-enhancing": " with a peripheral rim", "necrotic": " with central necrosis"}
                adjectives[key] = (f"{facts['sequence']}-{lesion['signal']}", extra.get(lesion["density"], ""))
            else:
                adjectives[key] = (_pick(rng, _CT_DENSITY[lesion["density"]]), "")
        return adjectives[key]

    def where(lesion: dict) -> str:
        roman = lesion["segment_roman"]
        return _pick(rng, (f"segment {roman}", f"segment {lesion['segment']}", f"S{lesion['segment']}"))

    lobes = {lesion["lobe"] for lesion in lesions}
    region = (f"in the {next(iter(lobes))} {_pick(rng, ('lobe', 'liver lobe', 'hepatic lobe'))}"
              if len(lobes) == 1 else _pick(rng, ("in both liver lobes", "scattered throughout the liver")))
    word = "mass" if n == 1 and first_big(lesions, 40) else _pick(rng, ("lesion", "focal lesion"))
    kinds = {(lesion["density"], lesion.get("signal")) for lesion in lesions}
    first = lesions[0]
    if n == 1:
        adjective, extra = describe(first)
        size = _size(rng, first["diameter_mm"], cm)
        return _pick(rng, (f"{_count(rng, 1)} {adjective} {word}{extra} in {where(first)} of the liver, "
                           f"measuring {size}.",
                           f"{_count(rng, 1)} {size} {adjective} {word}{extra} {region} ({where(first)})."))
    if len(kinds) == 1:
        adjective, extra = describe(first)
        text = (f"{_count(rng, n)} {adjective} {_plural(word, n)}{extra} {region}, the largest "
                f"{_size(rng, first['diameter_mm'], cm)} in {where(first)}.")
    else:
        noun = "mass" if word == "mass" else "lesion"
        text = f"{_count(rng, n)} focal liver {_plural(noun, n)}: " + _join(
            [f"{_size(rng, lesion['diameter_mm'], cm)} {describe(lesion)[0]} {noun}{describe(lesion)[1]} in "
             f"{where(lesion)}" for lesion in lesions]) + "."
        return text
    rest = [f"{_size(rng, lesion['diameter_mm'], cm)} ({where(lesion)})" for lesion in lesions[1:]]
    lead = _pick(rng, ("The others measure", "Further lesions measure", "Smaller ones measure"))
    return text + f" {lead if len(rest) > 1 else 'The other measures'} {_join(rest)}."


def abdomen_report(facts: dict, rng: np.random.Generator) -> str:
    """Report for an abdomen CT or MR from its facts."""
    cm = bool(rng.uniform() < 0.4)
    if facts["modality"] == "CT":
        phase = _pick(rng, _PHASE_WORDS[facts["phase"]])
        header = _pick(rng, (f"CT of the abdomen, {phase}.", f"Abdominal CT ({phase}).", f"CT abdomen, {phase}."))
    else:
        weighting = f"{facts['sequence']}-weighted"
        header = _pick(rng, (f"MRI of the abdomen, {weighting}.", f"Abdominal MR, {weighting} images.",
                             f"MR upper abdomen ({weighting})."))
    volumes = facts["volumes_ml"]
    liver = [_liver_lesion_text(rng, facts, cm)]
    if facts["hepatomegaly"]:
        liver.insert(0, _pick(rng, (f"Hepatomegaly (liver volume {volumes['liver']:.0f} ml).",
                                    "The liver is enlarged.")))
    elif rng.uniform() < 0.5:
        liver.insert(0, _pick(rng, ("Normal liver size.", "The liver is normal in size.")))
    if rng.uniform() < 0.6:
        liver.append(_pick(rng, ("The portal and hepatic veins are patent.", "Patent portal vein.")))
    others = [
        (f"Splenomegaly ({volumes['spleen']:.0f} ml)." if facts["splenomegaly"]
         else _pick(rng, ("Spleen unremarkable.", "Normal spleen size."))),
        _pick(rng, ("Both kidneys are unremarkable.", "Normal kidneys.", "No hydronephrosis.")),
        (_pick(rng, ("Gallbladder unremarkable.", "Normal gallbladder.")) if facts["gallbladder"]
         else _pick(rng, ("Status post cholecystectomy.", "Gallbladder not seen (cholecystectomy)."))),
        _pick(rng, ("Normal calibre abdominal aorta.", "No abdominal aortic aneurysm.")),
    ]
    rng.shuffle(others)
    others = others[: int(rng.integers(2, len(others) + 1))]
    impression = _liver_lesion_text(rng, facts, cm)
    if rng.uniform() < 0.5:
        return " ".join([header, *liver, *others])
    return (f"{header}\nFINDINGS: " + " ".join([*liver, *others]) + f"\nIMPRESSION: {impression}")


def _nodule_text(rng: np.random.Generator, lesions: list[dict], cm: bool) -> str:
    n = len(lesions)
    if n == 0:
        return _pick(rng, ("No pulmonary nodules.", "No suspicious pulmonary nodule is seen.",
                           "The lungs are free of nodules.", "No focal lung lesion."))
    word = "mass" if n == 1 and first_big(lesions, 31) else ("lesion" if first_big(lesions, 31) else "nodule")
    lobes = [_LOBE_NAMES[lesion["lobe"]] for lesion in lesions]
    types = {lesion["type"] for lesion in lesions}
    kind = next(iter(types)) if len(types) == 1 else ""
    region = f"in the {lobes[0]}" if len(set(lobes)) == 1 else _pick(rng, ("in both lungs", "in several lobes"))
    if len(set(lobes)) > 1 and all(lobe.startswith(lobes[0].split()[0]) for lobe in lobes):
        region = f"in the {lobes[0].split()[0]} lung"
    head = f"{_count(rng, n)} {kind + ' ' if kind else ''}{_plural(word, n)} {region}"
    if n == 1:
        return f"{head}, measuring {_size(rng, lesions[0]['diameter_mm'], cm)}."
    parts = [f"{_size(rng, lesion['diameter_mm'], cm)} {'' if kind else lesion['type'] + ' '}in the {name}"
             for lesion, name in zip(lesions, lobes, strict=True)]
    return f"{head}: {_join(parts)}."


def chest_report(facts: dict, rng: np.random.Generator) -> str:
    """Report for a chest CT from its facts."""
    cm = bool(rng.uniform() < 0.3)
    phase = _pick(rng, _PHASE_WORDS[facts["phase"]])
    header = _pick(rng, (f"CT of the chest, {phase}.", f"Chest CT ({phase}).", f"CT thorax, {phase}."))
    lungs = [_nodule_text(rng, facts["lesions"], cm)]
    emphysema = facts["emphysema"]
    if emphysema["present"]:
        lungs.append(_pick(rng, (f"{emphysema['severity'].capitalize()} centrilobular emphysema, upper lobe "
                                 "predominant.", f"{emphysema['severity'].capitalize()} emphysema.")))
    elif rng.uniform() < 0.5:
        lungs.append("No emphysema.")
    effusion = facts["effusion"]
    if effusion["side"] == "none":
        pleura = _pick(rng, ("No pleural effusion.", "No pleural fluid."))
    else:
        total = effusion["right_ml"] + effusion["left_ml"]
        size = "small" if total < 300 else ("moderate" if total < 1000 else "large")
        side = {"right": "right", "left": "left", "bilateral": "bilateral"}[effusion["side"]]
        plural = "s" if side == "bilateral" else ""
        pleura = f"{size.capitalize()} {side} pleural effusion{plural} ({total:.0f} ml)."
    others = [pleura, _pick(rng, ("The central airways are patent.", "Patent trachea and main bronchi.")),
              _pick(rng, ("Heart size normal.", "No pericardial effusion."))]
    rng.shuffle(others)
    impression = lungs[0]
    if rng.uniform() < 0.5:
        return " ".join([header, *lungs, *others])
    return f"{header}\nFINDINGS: " + " ".join([*lungs, *others]) + f"\nIMPRESSION: {impression}"
