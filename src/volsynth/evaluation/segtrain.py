"""Training of the evaluation segmentor (``volsynth train segmentor``) and its held-out Dice/NSD.

The network is trained with Dice + cross-entropy (MONAI ``DiceCELoss``) by the one training engine, on the
training cases resampled onto the segmentor's plan (``segmentor.make_segmentor_plan``), optionally as random
patches, with a random similarity transform and intensity jitter per sample. ``evaluate_holdout`` scores the
trained segmentor on labelled cases it did not see, as ``volsynth evaluate``'s Dice_orig does.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import yaml
from monai.losses import DiceCELoss

from volsynth.data.plan import Plan
from volsynth.errors import ConfigError, DatasetError
from volsynth.evaluation.adherence import lesion_class_ids, measure_lesions
from volsynth.evaluation.overlap import compute_dice_per_class, compute_nsd_per_class, mean_per_class
from volsynth.evaluation.segmentor import (
    SEGMENTOR_FOLDER,
    SegmentorSettings,
    build_segmentation_network,
    case_on_grid,
    cases_seen,
    labelled_cases,
    load_segmentor,
    load_segmentor_dataset,
    make_segmentor_plan,
    network_config,
    plan_label_ids,
    predict,
    read_case,
)
from volsynth.evaluation.study_stats import bootstrap_interval
from volsynth.io.volume import LabelMap, Volume
from volsynth.models.checkpoint import latest_checkpoint, save_checkpoint
from volsynth.models.registry import NETWORKS
from volsynth.training.engine import TrainConfig, Trainer
from volsynth.training.placement import DevicePlacement

LESION_BINS_MM = (0.0, 15.0, 30.0, float("inf"))  # held-out lesion Dice per bin of the largest lesion's diameter


def random_patch(image: torch.Tensor, target: torch.Tensor, patch: list[int], generator: torch.Generator,
                 foreground: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A random crop of ``patch`` voxels from an image ``[1, X, Y, Z]`` and its labels ``[X, Y, Z]``.

    With probability ``foreground`` the crop is centred (as far as the borders allow) on a random voxel of one
    class drawn uniformly from those present, so that small structures (tumours, vessels) are seen often; the
    nnU-Net default is 1/3.
    """
    shape = target.shape
    starts = [int(torch.randint(s - p + 1, (1,), generator=generator)) for s, p in zip(shape, patch, strict=True)]
    if foreground > 0 and float(torch.rand(1, generator=generator)) < foreground:
        classes = [int(c) for c in torch.unique(target) if c != 0]
        if classes:
            chosen = classes[int(torch.randint(len(classes), (1,), generator=generator))]
            voxels = torch.nonzero(target == chosen)
            centre = voxels[int(torch.randint(len(voxels), (1,), generator=generator))]
            starts = [min(max(int(c) - p // 2, 0), s - p) for c, p, s in zip(centre, patch, shape, strict=True)]
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


class SegmentationStage(DevicePlacement):
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
                image, target = random_patch(image, target, self.settings.patch, generator, self.settings.foreground)
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
        images, targets = self.put(*self.batch(indices, generators))
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
    """``volsynth train segmentor``: plan on the chosen labelled cases of a dataset and train; returns OUT/segmentor."""
    settings = settings or SegmentorSettings()
    settings.check()
    data = load_segmentor_dataset(dataset)
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


# -- held-out evaluation --------------------------------------------------------------------------------------

def evaluate_holdout(segmentor_path: str | Path, dataset: str | Path, case_ids: list[str],
                     tolerance_mm: float = 2.0, command: str | None = None) -> dict:
    """Dice and NSD per class of a trained segmentor on labelled cases of a dataset, per case and their means."""

    segmentor = load_segmentor(segmentor_path)
    data = load_segmentor_dataset(dataset)
    known = {c.case_id: c for c in labelled_cases(data)}
    missing = [c for c in case_ids if c not in known]
    if missing:
        raise DatasetError(data.root, f"no labelled case(s) {missing[:5]}")
    trained_on = cases_seen(segmentor, data.root, case_ids)
    if trained_on:  # a "held-out" score on training cases would flatter the segmentor
        raise ConfigError(None, f"case(s) {trained_on[:5]} are not held out: the segmentor was trained on them")
    names = {n: i for n, i in segmentor.labels.items() if i != 0}
    lesions = lesion_class_ids(segmentor.labels)
    lesion_names = [n for n, i in names.items() if i in lesions]
    per_case = []
    for case_id in case_ids:
        image, label = read_case(known[case_id], data.labels)
        # dataset ids -> the segmentor's classes, as volsynth evaluate's mask faithfulness does
        reference = LabelMap(plan_label_ids(label, segmentor.plan), label.affine, labels=segmentor.labels)
        prediction = predict(segmentor, image)
        row = {"id": case_id, "dice": compute_dice_per_class(prediction, reference, names, ignore_empty=True),
               "nsd": compute_nsd_per_class(prediction, reference, tolerance_mm, names, ignore_empty=True)}
        if lesions:
            real, found = measure_lesions(reference, lesions), measure_lesions(prediction, lesions)
            row.update(largest_lesion_mm=real[0] if real else 0.0, largest_found_mm=found[0] if found else 0.0)
        per_case.append(row)
    return {"cases": list(case_ids), "tolerance_mm": tolerance_mm,
            "mean": {metric: mean_per_class([c[metric] for c in per_case]) for metric in ("dice", "nsd")},
            "by_lesion_size": lesion_size_bins(per_case, lesion_names),
            "lesions_from_15mm": lesion_size_bins(per_case, lesion_names, (15.0, float("inf")))[0],
            "per_case": per_case, "command": command, "segmentor": str(segmentor.path), "dataset": str(data.root),
            "training_dataset_sha256": segmentor.meta.get("dataset_sha256"),
            "training_cases": segmentor.meta.get("training_cases"), "settings": asdict(segmentor.settings),
            "note": "cases lacking a class do not count for its mean (null per case)"}


def lesion_size_bins(per_case: list[dict], lesion_names: list[str], edges=LESION_BINS_MM) -> list[dict]:
    """Per bin of the largest real lesion's diameter (cases without one left out): the lesion classes' mean Dice
    with its 95 % bootstrap interval over the cases, the cases in which a lesion was found, and the median absolute
    error of the largest found lesion's diameter."""
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = [c for c in per_case if c.get("largest_lesion_mm", 0) > 0 and lo <= c["largest_lesion_mm"] < hi]
        dice = [c["dice"][n] for c in inside for n in lesion_names if c["dice"].get(n) is not None]
        errors = [abs(c["largest_found_mm"] - c["largest_lesion_mm"]) for c in inside]
        interval = bootstrap_interval(np.asarray(dice)[None])["ci"] if dice else [None, None]
        rows.append({"bin_mm": [lo, hi], "cases": len(inside), "dice": float(np.mean(dice)) if dice else None,
                     "dice_ci95": interval,
                     "found": sum(c["largest_found_mm"] > 0 for c in inside),
                     "median_abs_size_error_mm": float(np.median(errors)) if errors else None})
    return rows
