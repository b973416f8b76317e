"""The auxiliary segmentor of the evaluation (Dice_orig vs Dice_gen as in segmentation-guided diffusion; tumour size
and the augmentation study): a MONAI SegResNet, UNet or BasicUNet, 3D or on 2D axial slices. This module holds
its settings, networks, plan, case reading, loading and prediction; ``segtrain`` trains it.

Preprocessing is a plan (``volsynth.data.plan.Plan``), made by ``volsynth prepare``'s own fingerprint and
``make_plan`` on the training cases: isotropic spacing that fits the largest field of view into ``size``
(``spacing="fit"``, unless a spacing is given), CT window from the pooled 0.5/99.5 percentiles (or
``window``), MR per-case percentiles; the first image channel only. Each case is resampled onto the plan
grid centred on its own centre (image linear, labels nearest) and scaled to [-1, 1] in memory, as
``prepare`` does without a region of interest.

Prediction keeps the volume's own grid: the volume is resampled at the segmentor's spacing over its own
field of view (RAS), normalised, segmented by a sliding window of the training size (padding with -1, the
low end of the window), and the class *probabilities* are resampled linearly back onto the volume's grid,
where their argmax gives the label map (label ids are never interpolated).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.networks.nets import BasicUNet, SegResNet, UNet
from torch import nn

from volsynth.config import read_yaml
from volsynth.data.dataset import Case, Dataset, load_dataset
from volsynth.data.plan import PLAN_FILE, Plan
from volsynth.data.prepare import PrepareOptions, fingerprint_case, make_plan, parse_label_spec
from volsynth.errors import ConfigError, DatasetError
from volsynth.io.formats import read_label, read_volume
from volsynth.io.resample import grid_affine, grid_centre, resample_array, resample_to
from volsynth.io.volume import LabelMap, Volume
from volsynth.models.checkpoint import CheckpointError, load_checkpoint
from volsynth.models.registry import NETWORKS, build_network

SEGMENTOR_FOLDER = "segmentor"
ARCHITECTURES = ("segresnet", "unet", "basicunet")
# Until volsynth.models.registry.NETWORKS lists these classes, segmentor checkpoints are rebuilt here.
SEGMENTATION_NETWORKS: dict[str, type[nn.Module]] = {"SegResNet": SegResNet, "UNet": UNet, "BasicUNet": BasicUNet}


@dataclass
class SegmentorSettings:
    """Architecture, preprocessing and training settings of a segmentor (all saved in its checkpoint)."""

    architecture: str = "segresnet"  # segresnet, unet or basicunet
    spatial_dims: int = 3  # 3: whole volumes; 2: axial slices
    size: list[int] = field(default_factory=lambda: [64, 64, 64])  # grid of the whole volume (voxels)
    patch: list[int] | None = None  # train on random patches of this size (and predict by sliding window)
    foreground: float = 0.0  # share of patches centred on a random voxel of a present class (nnU-Net: 1/3)
    spacing: list[float] | None = None  # mm; None: isotropic, the largest field of view fits ``size``
    window: list[float] | None = None  # CT window in HU; None: pooled 0.5/99.5 percentiles
    labels: str | None = None  # label spec as for prepare ("liver=1,tumour=4"); None: every dataset label
    features: int = 16  # channels of the first level
    steps: int = 500
    batch_size: int = 2
    lr: float = 1e-3
    seed: int = 0
    augment: bool = True  # random similarity transform, intensity scale and shift (no flips: see ``augment``)
    ema: bool = True  # keep the weights averaged over about the last 10% of steps (EMA decay 1 - 10/steps)

    @classmethod
    def from_dict(cls, data: dict | None) -> SegmentorSettings:
        """Build from a dict, rejecting unknown keys."""
        data = dict(data or {})
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(None, f"unknown segmentor setting(s): {', '.join(unknown)}",
                              f"known: {', '.join(cls.__dataclass_fields__)}")
        return cls(**data)

    def check(self) -> None:
        """Raise ConfigError for an unknown architecture or a grid the network cannot take."""
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(None, f"unknown segmentor architecture '{self.architecture}'",
                              f"choose from {', '.join(ARCHITECTURES)}")
        if self.spatial_dims not in (2, 3):
            raise ConfigError(None, f"spatial_dims must be 2 or 3, got {self.spatial_dims}")
        factor = downsampling(self.architecture)
        for name, size in (("grid", self.size), ("patch", self.patch or self.size)):
            if len(size) != 3 or any(s < factor or s % factor for s in size):
                raise ConfigError(None, f"segmentor {name} {size} does not fit {self.architecture}",
                                  f"give 3 sizes that are multiples of {factor}")
        if any(p > s for p, s in zip(self.patch or self.size, self.size, strict=True)):
            raise ConfigError(None, f"segmentor patch {self.patch} is larger than the grid {self.size}")
        if self.window is not None and (len(self.window) != 2 or not self.window[1] > self.window[0]):
            raise ConfigError(None, f"CT window must be two increasing numbers, got {self.window}")
        if isinstance(self.foreground, bool) or not isinstance(self.foreground, (int, float)) \
                or not 0 <= self.foreground <= 1:
            raise ConfigError(None, f"segmentor foreground must be a share in [0, 1], got {self.foreground!r}")
        for name, kinds in (("steps", int), ("batch_size", int), ("features", int), ("seed", int),
                            ("lr", (int, float))):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, kinds):  # e.g. YAML reads "lr: 2e-3" as text
                raise ConfigError(None, f"segmentor {name} must be a number, got {value!r}",
                                  "in YAML write 0.002 or 2.0e-3, not 2e-3")
        if self.steps < 1 or self.batch_size < 1 or self.features < 1:
            raise ConfigError(None, "steps, batch_size and features must be >= 1")


def read_segmentor_settings(path: str | Path) -> dict:
    """The mapping of ``SegmentorSettings`` fields in a YAML file (``--config``); unknown keys are refused."""
    path = Path(path)
    data = read_yaml(path, "segmentor settings")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(path, "segmentor settings must be a mapping of setting: value",
                          f"known: {', '.join(SegmentorSettings.__dataclass_fields__)}")
    try:
        SegmentorSettings.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(path, exc.problem, exc.hint) from exc
    return data


def downsampling(architecture: str) -> int:
    """How many times the architecture halves the grid (sizes must be multiples of it)."""
    return 16 if architecture == "basicunet" else 8


def network_config(architecture: str, spatial_dims: int, classes: int, features: int) -> dict:
    """Constructor config (``{"class": ..., kwargs}``, YAML-safe) of a segmentation network."""
    f, common = int(features), {"spatial_dims": spatial_dims, "in_channels": 1, "out_channels": classes}
    if architecture == "segresnet":
        return {"class": "SegResNet", **common, "init_filters": f, "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1],
                "norm": ["GROUP", {"num_groups": min(8, f)}]}
    if architecture == "unet":
        return {"class": "UNet", **common, "channels": [f, 2 * f, 4 * f, 8 * f], "strides": [2, 2, 2],
                "num_res_units": 1, "norm": "instance"}
    if architecture == "basicunet":
        return {"class": "BasicUNet", **common, "features": [f, f, 2 * f, 4 * f, 8 * f, f]}
    raise ConfigError(None, f"unknown segmentor architecture '{architecture}'", f"choose from {ARCHITECTURES}")


def build_segmentation_network(config: dict) -> nn.Module:
    """A network from its config: the model registry when it knows the class, else this module's builder."""
    if config.get("class") in NETWORKS:
        return build_network(config)
    kwargs = dict(config)
    name = kwargs.pop("class", None)
    if name not in SEGMENTATION_NETWORKS:
        raise ConfigError(None, f"unknown segmentation network class '{name}'", f"known: {list(SEGMENTATION_NETWORKS)}")
    try:
        return SEGMENTATION_NETWORKS[name](**kwargs)
    except (TypeError, ValueError, AssertionError) as exc:
        raise ConfigError(None, f"cannot build {name} ({exc})") from exc


@dataclass
class Segmentor:
    """A trained segmentation network with the plan that says how to feed it."""

    network: nn.Module
    config: dict  # the network's constructor config
    plan: Plan
    settings: SegmentorSettings
    meta: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def labels(self) -> dict[str, int]:
        """Class name -> id of the predicted label maps, background included."""
        return {"background": 0, **self.plan.labels}


# -- preprocessing --------------------------------------------------------------------------------------------

def load_segmentor_dataset(path: str | Path) -> Dataset:
    """A dataset a segmentor may train or be scored on: images in scanner units, so not a prepared folder.

    A segmentor plans its own grid and intensity window on scanner units; prepared images are already normalised
    to [-1, 1], so a CT window would flatten them without a word.
    """
    if (Path(path) / PLAN_FILE).is_file():
        raise DatasetError(path, "a prepared folder: its images are normalised, not in scanner units",
                           "give the dataset it was prepared from")
    return load_dataset(path)


def labelled_cases(dataset: Dataset) -> list[Case]:
    """The dataset's cases that have a label file on disk."""
    return [c for c in dataset.cases if c.label is not None and Path(c.label).exists()]


def make_segmentor_plan(dataset: Dataset, cases: list[Case], settings: SegmentorSettings) -> Plan:
    """The segmentor's plan, fingerprinted on ``cases`` (prepare's fingerprint and make_plan, no ROI)."""
    if not cases:
        raise DatasetError(dataset.root, "no labelled cases to train a segmentor on")
    label_sources = parse_label_spec(settings.labels, dataset.labels)
    fingerprints = [fingerprint_case(case, label_sources, None) for case in cases]
    options = PrepareOptions(spacing="fit" if settings.spacing is None else list(settings.spacing),
                             size=list(settings.size), window=settings.window)
    return make_plan(replace(dataset, cases=list(cases)), fingerprints, options, label_sources)


def plan_label_ids(label: LabelMap, plan: Plan) -> np.ndarray:
    """A label map's ids as the plan's: by name when the map carries names, else by the dataset's source ids."""
    if not label.labels:
        return plan.remap(label.array)
    out = np.zeros(label.shape, dtype=np.uint8)
    for name, plan_id in plan.labels.items():
        if name in label.labels:
            out[label.array == label.labels[name]] = plan_id
    return out


def case_on_grid(image: Volume, label: LabelMap | None, plan: Plan) -> tuple[np.ndarray, np.ndarray | None]:
    """Image in [-1, 1] and label ids of the plan, on the plan grid centred on the image's centre."""
    target = plan.grid(grid_centre(image.affine, image.shape))
    norm = plan.normalization[0]
    window = norm.case_window(image.array)
    array = norm.forward(resample_to(image, target, plan.size, cval=window[0]).array, window)
    if label is None:
        return array, None
    ids = resample_to(label.with_array(plan_label_ids(label, plan)), target, plan.size).array
    return array, ids.astype(np.int64)


def read_case(case: Case, dataset_labels: dict[str, int] | None = None) -> tuple[Volume, LabelMap]:
    """First image channel and label map of a dataset case."""
    return read_volume(case.images[0]), read_label(case.label, labels=dataset_labels)


# -- loading and prediction -----------------------------------------------------------------------------------

def load_segmentor(path: str | Path) -> Segmentor:
    """A segmentor from its folder (``train segmentor``'s OUT, OUT/segmentor or one checkpoint-N)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(path, "segmentor checkpoint not found", "train one with volsynth train segmentor")
    if (path / SEGMENTOR_FOLDER / "meta.json").is_file():
        path = path / SEGMENTOR_FOLDER
    checkpoint = load_checkpoint(path, builder=build_segmentation_network)
    meta = checkpoint.meta
    if meta.get("kind") != "segmentor" or "segmentor" not in checkpoint.networks:
        raise CheckpointError(path, "not a segmentor checkpoint", "train one with volsynth train segmentor")
    return Segmentor(checkpoint.networks["segmentor"], checkpoint.config["networks"]["segmentor"],
                     Plan.from_dict(meta["plan"], path), SegmentorSettings.from_dict(meta["segmentor"]), meta, path)


def cases_seen(segmentor: Segmentor, dataset_root: str | Path, case_ids: list[str]) -> list[str]:
    """The cases of ``case_ids`` (of the dataset at ``dataset_root``) the segmentor was trained on: none when it was
    trained on another dataset (case ids repeat across datasets)."""
    trained = segmentor.meta.get("dataset")
    if not trained or Path(trained).resolve() != Path(dataset_root).resolve():
        return []
    return sorted(set(case_ids) & set(segmentor.meta.get("training_cases") or []))


def segmentor_input(segmentor: Segmentor, volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """The volume at the segmentor's spacing over its own field of view (RAS), in [-1, 1]; and that grid's affine."""
    plan = segmentor.plan
    ras = volume.reoriented("RAS")
    spacing = np.asarray(plan.spacing, dtype=np.float64)
    shape = np.maximum(1, np.round(np.asarray(ras.shape) * ras.spacing / spacing)).astype(int)
    target = grid_affine(spacing, shape, grid_centre(ras.affine, ras.shape))
    norm = plan.normalization[0]
    window = norm.case_window(volume.array)
    resampled = resample_to(volume, target, shape, cval=window[0])
    return norm.forward(resampled.array, window), target


@torch.no_grad()
def predict_probabilities(segmentor: Segmentor, volume: Volume) -> np.ndarray:
    """Class probabilities ``[classes, *volume.shape]`` on the volume's own grid."""
    array, target = segmentor_input(segmentor, volume)
    network = segmentor.network.eval()
    size = segmentor.settings.patch or segmentor.plan.size
    x = torch.from_numpy(np.ascontiguousarray(array))[None, None]
    options = dict(overlap=0.25, mode="gaussian", padding_mode="constant", cval=-1.0)
    if segmentor.settings.spatial_dims == 3:
        logits = sliding_window_inference(x, size, 1, network, **options)
    else:  # axial slices as a batch: [Z, 1, X, Y] -> [Z, C, X, Y] -> [1, C, X, Y, Z]
        slices = x[0].permute(3, 0, 1, 2).contiguous()
        logits = sliding_window_inference(slices, size[:2], 8, network, **options).permute(1, 2, 3, 0)[None]
    probabilities = torch.softmax(logits.float(), dim=1)[0].numpy()
    return np.stack([resample_array(p, target, volume.affine, volume.shape, order=1, cval=1.0 if c == 0 else 0.0)
                     for c, p in enumerate(probabilities)])


def predict(segmentor: Segmentor, volume: Volume) -> LabelMap:
    """The segmentor's label map of ``volume``, on the volume's own grid (same shape and affine)."""
    ids = np.argmax(predict_probabilities(segmentor, volume), axis=0).astype(np.uint8)
    return LabelMap(ids, volume.affine, labels=segmentor.labels)
