"""The frozen preprocessing plan (``plan.json``) that every later stage reads, and its inverse.

A plan fixes: target spacing and grid size, orientation (RAS), intensity normalisation per channel
(CT: clip to a window, scale to [-1, 1]; MR: per-case percentile scaling to [-1, 1]), the label
remapping, an optional region of interest that centres the grid, and the classes a case may leave unannotated.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from volsynth.data.intensity import foreground_values
from volsynth.errors import PlanError
from volsynth.io.jsonfile import read_json, write_json
from volsynth.io.resample import grid_affine, resample_to
from volsynth.io.volume import LabelMap, Volume

PLAN_FILE = "plan.json"
PLAN_VERSION = 1
CT_SCHEME = "ct_window"
MR_SCHEME = "mr_percentile"


@dataclass
class Normalization:
    """How one channel's intensities map to [-1, 1].

    ``ct_window``: fixed ``window`` [lo, hi] in HU for every case.
    ``mr_percentile``: per case, [lo, hi] = the case's ``percentiles``; ``window`` holds the dataset
    median of those, used to invert volumes that have no source case (generated ones).
    """

    scheme: str
    window: list[float]
    percentiles: list[float] | None = None

    def case_window(self, array: np.ndarray, seed: int = 0) -> tuple[float, float]:
        """The [lo, hi] used for one case's array (MR: percentiles of its voxels above 0, sampled with ``seed``
        when there are more than ``MAX_INTENSITY_SAMPLES``)."""
        if self.scheme == CT_SCHEME:
            return float(self.window[0]), float(self.window[1])
        lo, hi = np.percentile(foreground_values(array, seed), self.percentiles)
        return float(lo), float(hi) if hi > lo else float(lo) + 1.0

    def forward(self, array: np.ndarray, window: tuple[float, float]) -> np.ndarray:
        """Clip to the window and scale to [-1, 1]."""
        lo, hi = window
        return (2.0 * (np.clip(array, lo, hi) - lo) / (hi - lo) - 1.0).astype(np.float32)

    def inverse(self, array: np.ndarray, window: tuple[float, float] | None = None) -> np.ndarray:
        """Map [-1, 1] back to HU / MR units (values clipped by the forward map stay clipped)."""
        lo, hi = window if window is not None else self.window
        return ((np.asarray(array, dtype=np.float32) + 1.0) / 2.0 * (hi - lo) + lo).astype(np.float32)


@dataclass
class Plan:
    """Everything preprocessing decided; saved as ``plan.json`` and read by every later stage."""

    spacing: list[float]
    size: list[int]
    normalization: list[Normalization]
    labels: dict[str, int]
    label_sources: dict[str, list[int]]
    modality: str
    channel_names: dict[str, str]
    orientation: str = "RAS"
    roi: dict | None = None  # {"labels": [...], "margin_mm": float}
    partial_labels: list[str] | None = None  # classes a case may leave unannotated (absent = not given)
    fingerprint: dict = field(default_factory=dict)
    source: dict = field(default_factory=dict)
    version: int = PLAN_VERSION

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, path: str | Path | None = None) -> Plan:
        """Rebuild a plan from its dict; raises ``PlanError`` naming ``path`` when invalid."""
        try:
            data = dict(data)
            if int(data.get("version", 0)) != PLAN_VERSION:
                raise PlanError(path, f"plan version {data.get('version')} is not {PLAN_VERSION}")
            data["normalization"] = [Normalization(**n) for n in data["normalization"]]
            plan = cls(**data)
        except PlanError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanError(path, f"invalid plan ({exc})", "re-run volsynth prepare") from exc
        if len(plan.spacing) != 3 or len(plan.size) != 3 or min(plan.spacing) <= 0 or min(plan.size) <= 0:
            raise PlanError(path, f"invalid grid: spacing {plan.spacing}, size {plan.size}")
        return plan

    def save(self, path: str | Path) -> Path:
        """Write ``plan.json`` atomically."""
        return write_json(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        """Read a plan from ``plan.json`` or from the folder that holds it."""
        path = Path(path)
        if path.is_dir():
            path = path / PLAN_FILE
        return cls.from_dict(read_json(path, error=PlanError, missing="plan not found",
                                       hint="run volsynth prepare first"), path)

    def same_grid(self, other: Plan) -> bool:
        """Whether ``other`` works on the same grid: size, spacing (to 1e-3 mm) and modality."""
        return (tuple(self.size) == tuple(other.size) and np.allclose(self.spacing, other.spacing, atol=1e-3)
                and self.modality == other.modality)

    def grid(self, centre) -> np.ndarray:
        """Affine of the plan's grid centred at ``centre`` (RAS mm)."""
        return grid_affine(self.spacing, self.size, centre)

    def default_affine(self) -> np.ndarray:
        """Affine for volumes without a reference (generated ones): the plan grid centred on 0."""
        return self.grid(np.zeros(3))

    def remap(self, array: np.ndarray) -> np.ndarray:
        """Source label ids -> plan label ids; ids not mapped become background."""
        out = np.zeros(array.shape, dtype=np.uint8 if max(self.labels.values(), default=0) < 256 else np.int16)
        for name, sources in self.label_sources.items():
            out[np.isin(array, sources)] = self.labels[name]
        return out

    def denormalize(self, volume: Volume, channel: int = 0, window: tuple[float, float] | None = None) -> Volume:
        """A prepared (or generated) volume in [-1, 1] back in HU / MR units, same grid."""
        return volume.with_array(self.normalization[channel].inverse(volume.array, window))

    def invert(self, obj: Volume | LabelMap, reference_affine: np.ndarray | None = None,
               reference_shape=None, channel: int = 0, window: tuple[float, float] | None = None):
        """Undo preparation: intensities back to HU/MR units and, given a reference grid, resample onto it.

        Image voxels outside the prepared field of view get the window's low value; labels get 0.
        """
        if isinstance(obj, Volume):
            obj = self.denormalize(obj, channel, window)
        if reference_affine is None:
            return obj
        fill = None if isinstance(obj, LabelMap) else float((window or self.normalization[channel].window)[0])
        return resample_to(obj, np.asarray(reference_affine, dtype=np.float64), reference_shape, cval=fill)
