"""The auxiliary segmentor of the evaluation (seeds 002/003: Dice_orig vs Dice_gen; 000/004: tumour size
and the augmentation study): a MONAI SegResNet, UNet or BasicUNet, 3D or on 2D axial slices, trained with
Dice + cross-entropy (MONAI ``DiceCELoss``) by the one training engine.

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

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import yaml
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.networks.nets import BasicUNet, SegResNet, UNet
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from volsynth.data.dataset import Case, Dataset, load_dataset
from volsynth.data.plan import Plan
from volsynth.data.prepare import PrepareOptions, fingerprint_case, make_plan, parse_label_spec
from volsynth.errors import ConfigError, DatasetError
from volsynth.io.formats import read_label, read_volume
from volsynth.io.resample import grid_affine, grid_centre, resample_array, resample_to
from volsynth.io.volume import LabelMap, Volume
from volsynth.models.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    sha256_file,
)
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
        if self.steps < 1 or self.batch_size < 1 or self.features < 1:
            raise ConfigError(None, "steps, batch_size and features must be >= 1")


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


# -- training -------------------------------------------------------------------------------------------------

def random_patch(image: torch.Tensor, target: torch.Tensor, patch: list[int],
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random crop of ``patch`` voxels from an image ``[1, X, Y, Z]`` and its labels ``[X, Y, Z]``."""
    starts = [int(torch.randint(s - p + 1, (1,), generator=generator)) for s, p in zip(target.shape, patch,
                                                                                      strict=True)]
    window = tuple(slice(s, s + p) for s, p in zip(starts, patch, strict=True))
    return image[(slice(None), *window)], target[window]


def augment(image: torch.Tensor, target: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random similarity transform (scale 0.9-1.1, rotation about the S axis up to 10°, shift up to 5%; image
    linear, labels nearest, outside = -1 / background) and intensity scale 0.9-1.1 and shift ±0.1.

    No flips: anatomy is lateralised (liver right, spleen left)."""
    u = torch.rand(7, generator=generator, dtype=torch.float64) * 2 - 1  # uniform in [-1, 1]
    angle, scale = float(u[0]) * np.pi / 18, 1.0 + 0.1 * float(u[1])
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    theta = torch.tensor([[[cos, -sin, 0.0, 0.1 * float(u[2])], [sin, cos, 0.0, 0.1 * float(u[3])],
                           [0.0, 0.0, 1.0 / scale, 0.1 * float(u[4])]]], dtype=torch.float32)
    # grid_sample indexes (x, y, z) as (W, H, D) = the last, middle and first array axes: permute to match
    volume = image[None].permute(0, 1, 4, 3, 2)
    grid = torch.nn.functional.affine_grid(theta, list(volume.shape), align_corners=False)
    moved = torch.nn.functional.grid_sample(volume + 1.0, grid, mode="bilinear", align_corners=False) - 1.0
    labels = torch.nn.functional.grid_sample(target[None, None].permute(0, 1, 4, 3, 2).float(), grid, mode="nearest",
                                             align_corners=False)
    image = moved.permute(0, 1, 4, 3, 2)[0] * (1.0 + 0.1 * float(u[5])) + 0.1 * float(u[6])
    return image, labels.permute(0, 1, 4, 3, 2)[0, 0].long()

class SegmentationStage:
    """A training stage for the engine: Dice + cross-entropy of a segmentation network on in-memory cases."""

    name = "segmentor"

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, plan: Plan, settings: SegmentorSettings,
                 meta: dict | None = None) -> None:
        settings.check()
        self.images, self.labels, self.plan, self.settings = images, labels, plan, settings
        classes = len(plan.labels) + 1
        self.configs = {"segmentor": network_config(settings.architecture, settings.spatial_dims, classes,
                                                    settings.features)}
        with torch.random.fork_rng():  # seeded initial weights without touching the caller's global RNG
            torch.manual_seed(settings.seed)
            self.networks = {"segmentor": build_segmentation_network(self.configs["segmentor"])}
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True)
        self.extra_meta = dict(meta or {})

    def num_items(self) -> int:
        """Number of training cases."""
        return len(self.images)

    def param_groups(self) -> dict[str, list[str]]:
        """One optimiser for the network."""
        return {"segmentor": ["segmentor"]}

    def batch(self, indices: list[int], generators: list[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of a batch (axial slices in 2D), with each sample's own random augmentation."""
        images, targets = [], []
        for index, generator in zip(indices, generators, strict=True):
            image, target = self.images[index], self.labels[index]
            if self.settings.patch is not None:
                image, target = random_patch(image, target, self.settings.patch, generator)
            if self.settings.augment:
                image, target = augment(image, target, generator)
            if self.settings.spatial_dims == 2:
                k = int(torch.randint(image.shape[-1], (1,), generator=generator))
                image, target = image[..., k], target[..., k]
            images.append(image)
            targets.append(target)
        return torch.stack(images), torch.stack(targets)[:, None]

    def losses(self, indices: list[int], generators: list[torch.Generator], step: int) -> dict[str, torch.Tensor]:
        """The Dice + cross-entropy loss of a batch."""
        images, targets = self.batch(indices, generators)
        return {"segmentor": self.loss(self.networks["segmentor"](images), targets)}

    def meta(self) -> dict:
        """Plan (grid, normalisation, labels) and settings, so the checkpoint predicts on its own."""
        return {"kind": "segmentor", "plan": self.plan.to_dict(), "segmentor": asdict(self.settings),
                "labels": {"background": 0, **self.plan.labels},
                "grid": {"spacing": self.plan.spacing, "size": self.plan.size},
                "normalisation": [asdict(n) for n in self.plan.normalization], **self.extra_meta}

    def preview(self, step: int, path: Path) -> None:
        """No previews for the segmentor (the evaluation report shows its predictions)."""


def stack_cases(pairs: list[tuple[Volume, LabelMap]], plan: Plan) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``[N, 1, X, Y, Z]`` and labels ``[N, X, Y, Z]`` of (image, label) pairs on the plan grid."""
    images, labels = [], []
    for image, label in pairs:
        array, ids = case_on_grid(image, label, plan)
        images.append(torch.from_numpy(array)[None])
        labels.append(torch.from_numpy(ids))
    return torch.stack(images).float(), torch.stack(labels)


def train_segmentor(pairs: list[tuple[Volume, LabelMap]], plan: Plan, out: str | Path,
                    settings: SegmentorSettings, meta: dict | None = None, progress: bool = True) -> Path:
    """Train on (image, label) pairs; writes ``out``/checkpoints and the final ``out``/segmentor; returns the latter."""
    from volsynth.training.engine import TrainConfig, Trainer

    if not pairs:
        raise ConfigError(None, "no cases to train the segmentor on")
    out = Path(out)
    config_class = network_config(settings.architecture, settings.spatial_dims, 2, settings.features)["class"]
    if latest_checkpoint(out / "checkpoints") is not None and config_class not in NETWORKS:
        # the engine would resume, but volsynth.models.registry cannot rebuild this class yet
        raise ConfigError(out, "already holds a segmentor training run, which cannot be resumed",
                          "choose a new output folder or delete this one")
    images, labels = stack_cases(pairs, plan)
    stage = SegmentationStage(images, labels, plan, settings, meta)
    # The engine's learning rate is constant after warm-up; a weight average over the last ~10% of the steps
    # plays the part of a final learning-rate decay (worth about +0.02 liver Dice on the phantoms).
    ema_decay = 1.0 - 10.0 / settings.steps if settings.ema and settings.steps > 20 else None
    config = TrainConfig(steps=settings.steps, batch_size=settings.batch_size, lr=settings.lr, weight_decay=1e-5,
                         grad_clip=10.0, ema_decay=ema_decay, checkpoint_every=settings.steps, keep_checkpoints=1,
                         seed=settings.seed, progress=progress)
    trainer = Trainer(stage, out, config)
    last = trainer.fit()
    if trainer.ema:
        stage.networks["segmentor"].load_state_dict(trainer.ema["segmentor"].state)
    step_meta = yaml.safe_load((last / "config.yaml").read_text())["settings"]
    return save_checkpoint(out / SEGMENTOR_FOLDER, stage.networks, stage.configs,
                           {**stage.meta(), "step": settings.steps}, settings=step_meta)


def train_segmentor_on_dataset(dataset: str | Path, out: str | Path, settings: SegmentorSettings | None = None,
                               case_ids: list[str] | None = None, progress: bool = True,
                               command: str | None = None) -> Path:
    """``volsynth train-seg``: plan on the chosen labelled cases of a dataset and train; returns OUT/segmentor."""
    settings = settings or SegmentorSettings()
    settings.check()
    data = load_dataset(dataset)
    cases = labelled_cases(data)
    if case_ids is not None:
        known = {c.case_id: c for c in cases}
        missing = [c for c in case_ids if c not in known]
        if missing:
            raise DatasetError(data.root, f"no labelled case(s) {missing[:5]}")
        cases = [known[c] for c in case_ids]
    plan = make_segmentor_plan(data, cases, settings)
    pairs = [read_case(case) for case in cases]
    meta = {"training_cases": [c.case_id for c in cases], "dataset": str(data.root),
            "dataset_sha256": plan.source.get("sha256"), "command": command}
    return train_segmentor(pairs, plan, out, settings, meta, progress)


# -- loading and prediction -----------------------------------------------------------------------------------

def _rebuild(path: Path):
    """Networks, config and meta of a checkpoint folder (checksums verified)."""
    configs = yaml.safe_load((path / "config.yaml").read_text()) if (path / "config.yaml").is_file() else None
    if configs and all(c.get("class") in NETWORKS for c in configs["networks"].values()):
        checkpoint = load_checkpoint(path)
        return checkpoint.networks, checkpoint.config, checkpoint.meta
    meta_path = path / "meta.json"
    if not meta_path.is_file() or configs is None:
        raise CheckpointError(path, "incomplete checkpoint: meta.json or config.yaml is missing")
    meta = json.loads(meta_path.read_text())
    for name, digest in meta.get("files", {}).items():
        if not (path / name).is_file() or sha256_file(path / name) != digest:
            raise CheckpointError(path / name, "missing, truncated or modified checkpoint file")
    try:
        weights = load_file(str(path / "model.safetensors"))
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(path, f"unreadable checkpoint ({exc})") from exc
    networks = {}
    for name, config in configs["networks"].items():
        network = build_segmentation_network(config)
        state = {k[len(name) + 1:]: v for k, v in weights.items() if k.startswith(name + ".")}
        try:
            network.load_state_dict(state)
        except RuntimeError as exc:
            raise CheckpointError(path, f"weights do not match the config of '{name}' "
                                        f"({str(exc).splitlines()[0]})") from exc
        networks[name] = network.eval()
    return networks, configs, meta


def load_segmentor(path: str | Path) -> Segmentor:
    """A segmentor from its folder (``train-seg``'s OUT, OUT/segmentor or one checkpoint-N)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(path, "segmentor checkpoint not found", "train one with volsynth train-seg")
    if (path / SEGMENTOR_FOLDER / "meta.json").is_file():
        path = path / SEGMENTOR_FOLDER
    networks, configs, meta = _rebuild(path)
    if meta.get("kind") != "segmentor" or "segmentor" not in networks:
        raise CheckpointError(path, "not a segmentor checkpoint", "train one with volsynth train-seg")
    return Segmentor(networks["segmentor"], configs["networks"]["segmentor"], Plan.from_dict(meta["plan"], path),
                     SegmentorSettings.from_dict(meta["segmentor"]), meta, path)


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
