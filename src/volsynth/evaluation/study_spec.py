"""The study file of ``volsynth study run STUDY.yaml``: one typed schema, unknown keys refused with the key path.

A study file names the real dataset and its split, the segmentors to train, the generator recipe the study trains
on the real training cases only, the synthetic sets it generates, the arms it compares and the text-adherence
bookkeeping. Paths are read relative to the working directory (as a recipe's ``data.dataset`` is)::

    name: liver-lesions-8
    dataset: data/abdomen-ct-phantoms      # real dataset (nnU-Net v2 / MSD layout) with label maps
    n_real: 8                              # real training cases: the first n_real by id of those not held out
    n_test: 16                             # held-out real test cases: the last n_test by id
    seeds: [0, 1, 2]
    architectures: [segresnet, unet]
    segmentor: {size: [64, 64, 64], labels: "liver=1,tumour=4", steps: 2000}
    generator: {recipe: recipes/abdomen-ct-64.yaml, set: ["diffusion.train.steps=3000"]}
    synthetic: {ratios: [1, 3], lesions: insert, diameter_mm: [10, 50], prompt: "..."}
    balance: {class: tumour, min_diameter_mm: 30, share: 0.5, diameter_mm: [35, 60]}
    text: {sizes_mm: [10, 20, 30, 40], per_size: 2, prompt: "A solitary {diameter} mm hypodense liver lesion."}
    arms: [real, real+synthetic, synthetic, balance]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from volsynth.config import read_yaml
from volsynth.errors import ConfigError
from volsynth.evaluation.segmentor import SegmentorSettings
from volsynth.pipelines.base import SAMPLING_DEFAULTS
from volsynth.training.recipe_schema import check_fields

ARMS = ("real", "real+synthetic", "synthetic", "balance")
LESION_EDITS = ("keep", "insert", "move")
SPEC_VERSION = 1


@dataclass
class GeneratorSpec:
    """``generator:``: the volsynth training recipe the study trains on its real training cases."""

    recipe: str = "recipes/abdomen-ct-64.yaml"
    set: list = field(default_factory=list)  # "block.key=value" overrides, as volsynth train --set
    profile: str | None = None
    sampling: dict = field(default_factory=dict)  # steps, sampler, text_guidance, mask_guidance, ...


@dataclass
class SyntheticSpec:
    """``synthetic:``: mask-guided pairs from the real training masks, M = ratio x n_real of them per ratio."""

    ratios: list = field(default_factory=lambda: [1, 3])
    lesions: str = "insert"  # keep the mask's lesions, insert one more, or move every lesion elsewhere in the organ
    diameter_mm: list = field(default_factory=lambda: [10.0, 50.0])  # range of inserted lesion diameters
    prompt: str | None = None  # text with the edited mask; "{diameter}" is the largest lesion's diameter in mm
    organ_class: str = "liver"
    lesion_class: str = "tumour"


@dataclass
class BalanceSpec:
    """``balance:``: large-lesion pairs added to the real cases until large-lesion cases make up ``share``."""

    lesion_class: str = "tumour"
    min_diameter_mm: float = 30.0  # largest component's equivalent (same-volume sphere) diameter
    share: float = 0.5
    diameter_mm: list = field(default_factory=lambda: [35.0, 60.0])  # range of the inserted large lesions


@dataclass
class TextSpec:
    """``text:``: text-guided volumes whose prompt states a lesion size, measured in the image (adherence)."""

    sizes_mm: list = field(default_factory=list)  # none: no text-guided volumes
    per_size: int = 2
    prompt: str = "A solitary {diameter} mm hypodense lesion in the liver."
    bins_mm: list = field(default_factory=lambda: [0.0, 15.0, 30.0, 1000.0])
    segmentor: str | None = None  # None: the study's own real-arm segmentor (first architecture and seed)


@dataclass
class StudySpec:
    """The top level of a study file."""

    dataset: str
    n_real: int
    n_test: int
    name: str = "study"
    seed: int = 0
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    architectures: list = field(default_factory=lambda: ["segresnet", "unet"])
    segmentor: dict = field(default_factory=dict)
    generator: GeneratorSpec = field(default_factory=GeneratorSpec)
    synthetic: SyntheticSpec = field(default_factory=SyntheticSpec)
    balance: BalanceSpec = field(default_factory=BalanceSpec)
    text: TextSpec = field(default_factory=TextSpec)
    arms: list = field(default_factory=lambda: list(ARMS))
    nsd_tolerance_mm: float = 2.0
    bootstrap: int = 2000
    confidence: float = 0.95

    def to_dict(self) -> dict:
        """The spec as plain data (what DIR/study.yaml pins)."""
        return asdict(self)

    def segmentor_settings(self, architecture: str, seed: int) -> SegmentorSettings:
        """The segmentor settings of one run."""
        return SegmentorSettings.from_dict({**self.segmentor, "architecture": architecture, "seed": int(seed)})


BLOCKS = {"generator": GeneratorSpec, "synthetic": SyntheticSpec, "balance": BalanceSpec, "text": TextSpec}
SUMMARY_KEYS = ("bootstrap", "confidence")  # may change on resume: they only change the summary
# may change on resume until the stage they concern has started (its folder in the study folder holds something);
# the generator's settings until the first pair is generated (its training run then accepts what it accepts on a
# resume: more or fewer steps, not other networks)
LATE_KEYS = {"segmentor": "runs", "architectures": "runs", "seeds": "runs", "nsd_tolerance_mm": "runs",
             "text.segmentor": "adherence", "generator": "synthetic"}


def _range(values: list, where: str, path: Path | str) -> None:
    if len(values) != 2 or not all(isinstance(v, (int, float)) for v in values) or not 0 < values[0] <= values[1]:
        raise ConfigError(path, f"{where}: expected two increasing positive diameters in mm, got {values!r}")


def parse_study(data: object, path: Path | str) -> StudySpec:
    """A study mapping checked against the schema: unknown keys and wrong types name the key path."""
    if not isinstance(data, dict):
        raise ConfigError(path, "a study file must be a mapping of key: value")
    data = dict(data)
    data.pop("version", None)
    check_fields(StudySpec, data, "", path)
    for key in ("dataset", "n_real", "n_test"):
        if key not in data:
            raise ConfigError(path, f"{key}: required", "see docs/evidence.md for a study file")
    blocks = {name: cls(**check_fields(cls, data.pop(name) or {}, name, path)) for name, cls in BLOCKS.items()
              if name in data}
    spec = StudySpec(**data, **blocks)
    check_spec(spec, path)
    return spec


def check_spec(spec: StudySpec, path: Path | str) -> None:
    """Values the types do not catch: counts, arms, ratios, ranges, segmentor settings, sampling keys."""
    if spec.n_real < 1 or spec.n_test < 1:
        raise ConfigError(path, "n_real and n_test must be >= 1")
    if not spec.seeds or not spec.architectures or not all(isinstance(s, int) for s in spec.seeds):
        raise ConfigError(path, "seeds (integers) and architectures must each name at least one")
    unknown = [a for a in spec.arms if a not in ARMS]
    if unknown or not spec.arms or "real" not in spec.arms:
        raise ConfigError(path, f"arms: {spec.arms!r}", f"choose from {', '.join(ARMS)}; 'real' is the baseline")
    if not spec.synthetic.ratios or not all(isinstance(r, int) and r >= 1 for r in spec.synthetic.ratios):
        raise ConfigError(path, f"synthetic.ratios: positive integers M/N, got {spec.synthetic.ratios!r}")
    if spec.synthetic.lesions not in LESION_EDITS:
        raise ConfigError(path, f"synthetic.lesions: '{spec.synthetic.lesions}'", f"choose {', '.join(LESION_EDITS)}")
    _range(spec.synthetic.diameter_mm, "synthetic.diameter_mm", path)
    _range(spec.balance.diameter_mm, "balance.diameter_mm", path)
    if not 0 < spec.balance.share < 1:
        raise ConfigError(path, f"balance.share must be in (0, 1), got {spec.balance.share}")
    if spec.balance.diameter_mm[0] < spec.balance.min_diameter_mm:
        raise ConfigError(path, "balance.diameter_mm must start at balance.min_diameter_mm or above",
                          "inserted lesions smaller than the threshold would not count as large")
    bins = spec.text.bins_mm
    if len(bins) < 2 or any(b >= a for a, b in zip(bins[1:], bins[:-1], strict=False)):
        raise ConfigError(path, f"text.bins_mm: increasing bin edges in mm, got {bins!r}")
    if spec.text.sizes_mm and "{diameter}" not in spec.text.prompt:
        raise ConfigError(path, "text.prompt must say {diameter}", "it is the stated lesion size")
    unknown = sorted(set(spec.generator.sampling) - set(SAMPLING_DEFAULTS) - {"refine"})
    if unknown:
        raise ConfigError(path, f"unknown generator.sampling key(s): {', '.join(unknown)}",
                          f"known: {', '.join(SAMPLING_DEFAULTS)}, refine")
    if not all(isinstance(s, str) for s in spec.generator.set):
        raise ConfigError(path, "generator.set: a list of 'block.key=value' strings")
    for architecture in spec.architectures:
        try:
            spec.segmentor_settings(architecture, spec.seeds[0]).check()
        except ConfigError as exc:
            raise ConfigError(path, f"segmentor: {exc.problem}", exc.hint) from exc
        except TypeError as exc:
            raise ConfigError(path, f"segmentor: {exc}") from exc
    if spec.bootstrap < 100 or not 0 < spec.confidence < 1:
        raise ConfigError(path, "bootstrap must be >= 100 replicates and confidence in (0, 1)")


def load_study_spec(path: str | Path) -> StudySpec:
    """Read and check a study YAML file."""
    path = Path(path)
    return parse_study(read_yaml(path, "study file"), path)


def spec_changes(pinned: dict, current: dict) -> list[str]:
    """Keys (dotted) whose values differ between a pinned and a current spec, summary-only keys excepted."""
    changes = []
    for key in sorted(set(pinned) | set(current)):
        if key in SUMMARY_KEYS or key == "version":
            continue
        a, b = pinned.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes += [f"{key}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            changes.append(key)
    return changes
