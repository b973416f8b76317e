"""One pipeline contract over every model kind (diffusers' ``AutoPipeline`` habit).

Every pipeline takes one ``GenerationRequest`` and returns one ``GenerationResult``. A pipeline declares the
request fields it accepts (``options``); a field it does not accept, given a value, is a ``ConfigError`` naming
the command-line option, raised before anything is generated. Sampling settings left unset come from the model's
recommendation (``sampling`` in its meta.json, with its ``with_mask`` settings over it when a mask guides), else
from ``SAMPLING_DEFAULTS``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from volsynth.data.plan import Plan
from volsynth.data.vocabularies import LabelPreset
from volsynth.errors import ConfigError
from volsynth.io.jsonfile import read_json
from volsynth.io.volume import LabelMap, Volume

# Sampling settings when neither the request nor the model (``sampling`` in its meta.json) gives them.
# refiner_steps None: the refiner's own setting (RefinerSettings.steps).
SAMPLING_DEFAULTS = {"steps": 30, "sampler": "ddim", "text_guidance": 3.0, "mask_guidance": 1.0,
                     "controlnet_scale": 1.0, "refiner_guidance": 1.0, "refiner_steps": None}
# Key of a model's ``sampling`` recommendation that holds the settings recommended when a mask guides (e.g. a
# lower text guidance: text guidance pulls samples away from the mask), over the model's plain recommendation.
WITH_MASK = "with_mask"
# Request fields every pipeline takes.
ALWAYS = frozenset({"prompt", "seed"})


@dataclass(frozen=True)
class GenerationRequest:
    """What to generate: a report and/or a mask, a seed, and sampling settings (None: the model's default)."""

    prompt: str = ""
    mask: LabelMap | str | Path | None = None
    mask_labels: dict[str, list[int]] | LabelPreset | None = None  # parse_mask_labels' result
    known: list[str] | None = None  # the mask's classes that are given (partial labels); None: all in the mask
    modality: str | None = None
    seed: int = 0
    steps: int | None = None
    sampler: str | None = None
    text_guidance: float | None = None
    mask_guidance: float | None = None
    controlnet_scale: float | None = None
    refine: bool | None = None  # False skips the model's refiner
    refiner_guidance: float | None = None
    refiner_steps: int | None = None  # the refiner's sampling steps; None: the model's
    dtype: torch.dtype | None = None  # autocast dtype of the latent sampler (torch.bfloat16); None: float32
    body_ct: Volume | str | Path | None = None  # a CT the body label is made from (models that need a body label)


# How each request field is spelled on the command line (for error messages).
OPTION_NAMES = {f.name: "--" + f.name.replace("_", "-") for f in fields(GenerationRequest)}
OPTION_NAMES.update(refine="--no-refine", known="known (given classes)", dtype="dtype")
LIBRARY_ONLY = frozenset({"known", "dtype"})  # request fields with no command-line option


@dataclass
class GenerationResult:
    """A generated volume (HU / MR units, with its affine), its label map when there is one, and its sidecar
    record (what made it: request, resolved settings, model, timing)."""

    image: Volume
    label: LabelMap | None = None
    sidecar: dict = field(default_factory=dict)


def meta_file(model_path: str | Path | None) -> Path | None:
    """A model folder's meta.json (errors about what it names point at it), or None without a folder."""
    return None if model_path is None else Path(model_path) / "meta.json"


def sampling_recommendation(model_path: str | Path | None) -> dict:
    """The ``sampling`` recommendation stored in a model folder's meta.json ({} when none)."""
    meta = Path(model_path) / "meta.json" if model_path is not None else None
    return dict((read_json(meta).get("sampling") or {}) if meta is not None and meta.is_file() else {})


def resolve_sampling(recommended: dict, masked: bool = False, **given) -> dict:
    """Each sampling setting from ``given`` (not None), else the recommendation (its ``with_mask`` settings over
    it when ``masked``), else SAMPLING_DEFAULTS."""
    recommended = dict(recommended)
    with_mask = recommended.pop(WITH_MASK, None) or {}
    if masked:
        recommended.update(with_mask)
    unknown = sorted(set(given) - set(SAMPLING_DEFAULTS))
    if unknown:
        raise ConfigError(None, f"unknown sampling setting(s) {unknown}")
    return {key: given[key] if given.get(key) is not None else recommended.get(key, default)
            for key, default in SAMPLING_DEFAULTS.items()}


class Pipeline:
    """Base of every pipeline: ``pipeline(GenerationRequest(...))`` or ``pipeline(prompt=..., seed=...)``.

    A subclass sets ``kind``, ``model_path``, ``recommended`` (the model's sampling recommendation), implements
    ``options`` (the request fields it accepts besides prompt and seed) and ``generate`` (keyword arguments: the
    accepted fields, sampling settings resolved).
    """

    kind = "pipeline"
    model_path: Path | None = None
    plan: Plan  # the grid, classes and normalisation of the (default) modality
    recommended: dict = {}
    device = torch.device("cpu")

    @property
    def options(self) -> frozenset[str]:
        """The request fields this model accepts besides ``prompt`` and ``seed``."""
        raise NotImplementedError

    def generate(self, **settings) -> GenerationResult:
        """Generate one volume from resolved settings."""
        raise NotImplementedError

    def plan_for(self, modality: str | None = None) -> Plan:
        """The plan a request for ``modality`` generates on (one plan unless the model has several modalities)."""
        if modality is not None and modality.upper() != self.plan.modality:
            raise ConfigError(self.model_path, f"model generates {self.plan.modality}, not {modality}",
                              "use a segmentation-guided model for CT and MR from one mask")
        return self.plan

    def check(self, request: GenerationRequest) -> None:
        """Refuse a request that sets a field this model does not take (before anything is generated)."""
        accepted = self.options | ALWAYS
        refused = [f.name for f in fields(request) if f.name not in accepted and getattr(request, f.name) is not None]
        if refused:
            names = ", ".join(OPTION_NAMES[name] for name in refused)
            takes = ", ".join(sorted(OPTION_NAMES[name] for name in accepted - ALWAYS - LIBRARY_ONLY))
            takes = takes or "--prompt and --seed only"
            raise ConfigError(self.model_path, f"{names}: not an option of this {self.kind} model",
                              f"it takes {takes}{self.refusal_hint(refused)}")

    def refusal_hint(self, refused: list[str]) -> str:
        """Extra words for a refused option (e.g. why a model takes no mask)."""
        return ""

    def resolve(self, request: GenerationRequest) -> dict:
        """The keyword arguments of ``generate`` for a checked request: accepted fields, sampling resolved."""
        given = {key: getattr(request, key) for key in SAMPLING_DEFAULTS}
        resolved = resolve_sampling(self.recommended, masked=request.mask is not None, **given)
        resolved["steps"], resolved["sampler"] = int(resolved["steps"]), str(resolved["sampler"])
        if resolved["steps"] < 1:
            raise ConfigError(self.model_path, f"steps must be >= 1, got {resolved['steps']}")
        settings = {name: getattr(request, name) for name in self.options | ALWAYS
                    if name not in SAMPLING_DEFAULTS and getattr(request, name) is not None}
        settings.update({key: value for key, value in resolved.items() if key in self.options})
        return settings

    def __call__(self, request: GenerationRequest | None = None, /, **fields_given) -> GenerationResult:
        """Check the request against the model's options, resolve its settings and generate."""
        if request is None:
            try:
                request = GenerationRequest(**fields_given)
            except TypeError as exc:
                raise ConfigError(self.model_path, f"bad generation request ({exc})") from exc
        elif fields_given:
            raise ConfigError(self.model_path, "give a GenerationRequest or keyword fields, not both")
        self.check(request)
        return self.generate(**self.resolve(request))

    def estimate(self, request: GenerationRequest):
        """What ``request`` would cost (``generate --dry-run``); a model kind that cannot predict it refuses."""
        raise ConfigError(self.model_path, f"--dry-run: a {self.kind} model does not predict its cost",
                          "leave --dry-run out (MAISI models predict theirs)")
