"""One phantom case: anatomy -> image -> facts -> report, each from its own seeded stream.

The seed is split into three independent streams (anatomy, rendering, wording), so abdomen CT and
MR from the same seed share the label map, and rewording a report never moves an organ.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from volsynth.data.phantom import abdomen, chest
from volsynth.data.phantom.lesions import modality_facts
from volsynth.data.phantom.measure import label_volumes_ml
from volsynth.data.phantom.render import render_ct, render_mr
from volsynth.data.phantom.reports import abdomen_report, chest_report
from volsynth.data.phantom.scene import Scene
from volsynth.data.phantom.shapes import Grid
from volsynth.data.phantom.tissues import CHEST_PHASES, PHASES, SEQUENCES, ct_density, mr_signal
from volsynth.errors import ConfigError

PHANTOM_KINDS = ("abdomen-ct", "abdomen-mr", "chest-ct")
GENERATOR_VERSIONS = (1, 2)  # 1: the lesions of volsynth.data.phantom.liver; 2: volsynth.data.phantom.lesions
GENERATOR_VERSION = 2  # the default
LABELS = {"abdomen-ct": abdomen.LABELS, "abdomen-mr": abdomen.LABELS, "chest-ct": chest.LABELS}
FIELD_OF_VIEW_MM = 360.0  # default: spacing = FIELD_OF_VIEW_MM / size, isotropic
_OPTIONS = {"abdomen-ct": {"phase": PHASES, "lesions": None}, "abdomen-mr": {"sequence": SEQUENCES, "lesions": None},
            "chest-ct": {"phase": CHEST_PHASES, "lesions": None, "emphysema": (True, False),
                         "effusion": ("none", "right", "left", "bilateral")}}
HEPATOMEGALY_ML = 2000.0
SPLENOMEGALY_ML = 400.0


@dataclass
class PhantomCase:
    """A generated case: image (HU for CT, >= 0 for MR), labels, RAS+ affine, report and facts."""

    case_id: str
    image: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    report: str
    facts: dict


def check_request(kind: str, size: int, spacing: float | None, options: dict | None = None,
                  generator_version: int = GENERATOR_VERSION) -> None:
    """Raise ``ConfigError`` for an unknown kind or generator version, a size or spacing out of range, or a bad
    option."""
    if generator_version not in GENERATOR_VERSIONS or isinstance(generator_version, bool):
        raise ConfigError(None, f"unknown phantom generator version {generator_version!r}",
                          f"choose one of {', '.join(map(str, GENERATOR_VERSIONS))}")
    if kind not in PHANTOM_KINDS:
        raise ConfigError(None, f"unknown phantom kind {kind!r}", f"choose one of {', '.join(PHANTOM_KINDS)}")
    if not isinstance(size, (int, np.integer)) or not 8 <= size <= 1024:
        raise ConfigError(None, f"size must be an integer from 8 to 1024, got {size!r}")
    if spacing is not None and not (np.isfinite(spacing) and 0 < spacing <= 20):
        raise ConfigError(None, f"spacing must be > 0 and <= 20 mm, got {spacing!r}")
    for name, value in (options or {}).items():
        allowed = _OPTIONS[kind]
        if name not in allowed:
            raise ConfigError(None, f"option {name!r} does not apply to {kind}",
                              f"options for {kind}: {', '.join(allowed)}")
        if name == "lesions":
            if not isinstance(value, (int, np.integer)) or not 0 <= value <= 9:
                raise ConfigError(None, f"lesions must be an integer from 0 to 9, got {value!r}")
        elif value not in allowed[name]:
            raise ConfigError(None, f"{name} must be one of {', '.join(map(str, allowed[name]))}, got {value!r}")


def generate_case(kind: str, seed: int, size: int = 64, spacing: float | None = None, case_id: str | None = None,
                  generator_version: int = GENERATOR_VERSION, **options) -> PhantomCase:
    """Generate one phantom case of ``kind``; the same arguments always give the same case."""
    scene, image, report, facts = generate_scene(kind, seed, size, spacing, generator_version, **options)
    case_id = case_id or f"{kind.replace('-', '_')}_{seed}"
    return PhantomCase(case_id, image, scene.labels, scene.grid.affine, report, facts)


def generate_scene(kind: str, seed: int, size: int = 64, spacing: float | None = None,
                   generator_version: int = GENERATOR_VERSION, **options) -> tuple[Scene, np.ndarray, str, dict]:
    """Like ``generate_case`` but also returns the tissue-level scene (for tests and inspection)."""
    check_request(kind, size, spacing, options, generator_version)
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(None, f"seed must be a non-negative integer, got {seed!r}")
    spacing = FIELD_OF_VIEW_MM / size if spacing is None else float(spacing)
    grid = Grid((size, size, size), (spacing, spacing, spacing))
    anatomy_seq, render_seq, words_seq = np.random.SeedSequence(int(seed)).spawn(3)
    anatomy, render, words = (np.random.default_rng(s) for s in (anatomy_seq, render_seq, words_seq))

    # 1. anatomy (shared by abdomen CT and MR)
    if kind.startswith("abdomen"):
        scene = abdomen.build_abdomen(anatomy, grid, lesion_count=options.get("lesions"),
                                      generator_version=generator_version)
    else:
        scene = chest.build_chest(anatomy, grid, lesion_count=options.get("lesions"),
                                  emphysema=options.get("emphysema"), effusion=options.get("effusion"))
    # 2. image
    facts: dict = {"kind": kind, "seed": int(seed), "region": kind.split("-")[0]}
    if kind.endswith("mr"):
        sequence = options.get("sequence") or str(render.choice(SEQUENCES))
        image = render_mr(scene, render, sequence)
        facts.update(modality="MR", sequence=sequence)
    else:
        phases = CHEST_PHASES if kind == "chest-ct" else PHASES
        phase = options.get("phase") or str(render.choice(phases))
        image = render_ct(scene, render, phase)
        facts.update(modality="CT", phase=phase)
    # 3. facts from the final label map, then the report
    facts.update(_measured_facts(kind, scene, facts))
    report = (abdomen_report if kind.startswith("abdomen") else chest_report)(facts, words)
    return scene, image.astype(np.float32, copy=False), report, facts


def _measured_facts(kind: str, scene: Scene, facts: dict) -> dict:
    grid = scene.grid
    volumes = label_volumes_ml(scene.labels, LABELS[kind], grid.spacing)
    out: dict = {"shape": list(grid.shape), "spacing_mm": [round(float(s), 4) for s in grid.spacing],
                 "volumes_ml": volumes, "lesion_count": len(scene.lesions)}
    lesions = []
    for lesion in scene.lesions:
        entry = {k: v for k, v in lesion.items() if k not in ("pattern", "appearance")}
        if "appearance" in lesion:  # generator version 2
            rendering = facts["phase"] if facts["modality"] == "CT" else facts["sequence"]
            entry.update(modality_facts(lesion["appearance"], facts["modality"], rendering))
        elif kind.startswith("abdomen"):
            if facts["modality"] == "CT":
                entry["density"] = ct_density(lesion["pattern"], facts["phase"])
            else:
                entry["density"] = lesion["pattern"]
                entry["signal"] = mr_signal(lesion["pattern"], facts["sequence"])
        lesions.append(entry)
    out["lesions"] = lesions
    if kind.startswith("abdomen"):
        out["gallbladder"] = bool(scene.findings["gallbladder"])
        out["hepatomegaly"] = volumes["liver"] + volumes["tumour"] > HEPATOMEGALY_ML
        out["splenomegaly"] = volumes["spleen"] > SPLENOMEGALY_ML
    else:
        percent = float(scene.findings["emphysema_percent"])
        severity = "none" if percent == 0 else ("mild" if percent < 10 else "moderate" if percent < 25 else "severe")
        out["emphysema"] = {"present": percent > 0, "percent": percent, "severity": severity}
        fluid = scene.labels == LABELS[kind]["pleural_effusion"]
        right = int(fluid[grid.axis(0) > 0].sum())
        voxel_ml = float(np.prod(grid.spacing)) / 1000.0
        right_ml, left_ml = round(right * voxel_ml, 1), round((int(fluid.sum()) - right) * voxel_ml, 1)
        side = {(False, False): "none", (True, False): "right", (False, True): "left", (True, True): "bilateral"}[
            (right_ml > 0, left_ml > 0)]
        out["effusion"] = {"side": side, "right_ml": right_ml, "left_ml": left_ml}
    return out
