"""Segmentation-guided generation (also on AMOS): mask in, CT or MR volume out, in pixel space;
2D models generate every slice along their axis in one batch and restack them into the volume."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from volsynth.data.plan import Plan
from volsynth.errors import ConfigError
from volsynth.io.resample import resample_to
from volsynth.io.volume import LabelMap, Volume
from volsynth.models.checkpoint import load_checkpoint, optional_sha256
from volsynth.models.controlnet import combine_features
from volsynth.models.stages import SLICE_AXES
from volsynth.pipelines.base import GenerationResult, Pipeline, meta_file, sampling_recommendation
from volsynth.pipelines.masks import class_flags, place_mask
from volsynth.sampling import dual_guidance, sample
from volsynth.sampling.samplers import scheduler_for
from volsynth.text import get_text_encoder


def to_slices(array: torch.Tensor, axis: int) -> torch.Tensor:
    """[C, X, Y, Z] -> [S, C, H, W]: the slices along array axis ``axis`` as a batch."""
    return array.movedim(1 + axis, 0)


def from_slices(slices: torch.Tensor, axis: int) -> torch.Tensor:
    """Inverse of ``to_slices``: [S, C, H, W] -> [C, X, Y, Z]."""
    return slices.movedim(0, 1 + axis)


class SegGuidedPipeline(Pipeline):
    """``SegGuidedPipeline.from_pretrained(dir)(mask=..., modality="MR", seed=...)``."""

    kind = "segmentation-guided"
    options = frozenset({"mask", "mask_labels", "known", "modality", "steps", "sampler", "text_guidance",
                         "mask_guidance"})

    def __init__(self, unet, plans: dict[str, Plan], settings: dict, text_encoder: str,
                 model_path: Path | None = None, model_sha256: str | None = None) -> None:
        self.unet = unet.eval().float()
        self.plans, self.settings, self.text_encoder_id = plans, settings, text_encoder
        self.modalities = list(plans)
        self.plan = plans[self.modalities[0]]  # the default modality's plan
        self.model_path, self.model_sha256 = model_path, model_sha256
        self._text_encoder = None
        self.recommended = sampling_recommendation(model_path)
        self.device = torch.device("cpu")

    @classmethod
    def from_pretrained(cls, path: str | Path) -> SegGuidedPipeline:
        """Load a segmentation-guided model folder."""
        checkpoint = load_checkpoint(path, use_ema=True)
        meta = checkpoint.meta
        plans = {m: Plan.from_dict(p) for m, p in meta["plans"].items()}
        return cls(checkpoint.networks["unet"], plans, meta["diffusion"], meta["text_encoder"], Path(path),
                   meta["files"].get("model.safetensors"))

    def to(self, device: str | torch.device) -> SegGuidedPipeline:
        """Move the network to a device."""
        self.device = torch.device(device)
        self.unet.to(self.device)
        return self

    @property
    def slice_model(self) -> bool:
        """Whether the model denoises 2D slices (restacked into the volume)."""
        return self.settings.get("spatial_dims", 3) == 2

    def scheduler(self, sampler: str):
        """A sampling scheduler matching the trained schedule."""
        return scheduler_for(self.settings, sampler, model_path=self.model_path, pixel_space=True)

    def prepare_mask(self, mask, mask_labels=None, known=None, modality: str | None = None):
        """Mapped mask, plan grid, the concatenated condition [B, 2K, ...] and the known classes."""
        plan = self.plan_for(modality)
        mapped, grid, on_grid, known, source = place_mask(mask, plan, mask_labels, known)
        _, ids, flags = class_flags(plan, known)
        labels = torch.from_numpy(on_grid.array.astype(np.int64))
        onehot = torch.stack([(labels == i).float() for i in ids])[None]  # [1, K, X, Y, Z]
        if self.slice_model:
            onehot = to_slices(onehot[0], SLICE_AXES[self.settings["slice_axis"]])
            flags = flags.expand(onehot.shape[0], -1)
        return mapped, grid, combine_features(onehot, flags), known, source

    def plan_for(self, modality: str | None = None) -> Plan:
        """The plan of a modality (CT / MR); the first one by default."""
        modality = (modality or self.modalities[0]).upper()
        if modality not in self.plans:
            raise ConfigError(self.model_path, f"model has no modality '{modality}'", f"it has {self.modalities}")
        return self.plans[modality]

    @torch.no_grad()
    def generate(self, mask: LabelMap | str | Path | None = None, modality: str | None = None, prompt: str = "",
                 seed: int = 0, steps: int = 30, sampler: str = "ddim", text_guidance: float = 1.0,
                 mask_guidance: float = 1.0, mask_labels: dict | None = None,
                 known: list[str] | None = None) -> GenerationResult:
        """1. encode prompt 2. prepare mask 3. noise 4. denoise 5. restack slices 6. back to units and geometry.

        2D slice models draw each slice's starting noise on its own.
        """
        if mask is None:
            raise ConfigError(self.model_path, "a segmentation-guided model needs --mask")
        start = time.perf_counter()
        plan = self.plan_for(modality)
        modality = plan.modality
        # 1. encode the prompt
        if self._text_encoder is None:
            self._text_encoder = get_text_encoder(self.text_encoder_id, source=meta_file(self.model_path))
        context = self._text_encoder.encode([prompt])[0] if prompt else None
        # 2. prepare the mask condition (one per slice for 2D models)
        mapped, grid, cond, given, source = self.prepare_mask(mask, mask_labels, known, modality)
        cond = cond.to(self.device)
        batch = cond.shape[0]
        class_labels = torch.full((batch,), self.modalities.index(modality), device=self.device)
        # 3. noise from the seed
        generator = torch.Generator().manual_seed(seed)
        shape = [batch, 1, *cond.shape[2:]]
        x = torch.randn(shape, generator=generator).expand(batch, -1, *[-1] * (len(shape) - 2)).contiguous()
        x = x.to(self.device)

        # 4. denoise with separate text and mask guidance
        def predict(x, t, text_on: bool, mask_on: bool):
            ctx = context.expand(batch, -1, -1) if text_on and context is not None else None
            return self.unet(x, t, context=ctx, cond=cond if mask_on else torch.zeros_like(cond),
                             class_labels=class_labels)

        denoiser = dual_guidance(predict, context is not None, True, text_guidance, mask_guidance)
        x = sample(denoiser, x, self.scheduler(sampler), steps, generator=generator)
        # 5. restack 2D slices into the volume
        if self.slice_model:
            x = from_slices(x, SLICE_AXES[self.settings["slice_axis"]])[None]
        # 6. back to HU / MR units, onto the mask's grid
        volume = Volume(x[0, 0].clamp(-1, 1).cpu().numpy().astype(np.float32), grid, modality=modality)
        volume = resample_to(plan.denormalize(volume), mapped.affine, mapped.shape,
                             cval=float(plan.normalization[0].window[0]))
        provenance = {"prompt": prompt, "modality": modality, "seed": seed, "steps": steps, "sampler": sampler,
                      "text_guidance": text_guidance, "mask_guidance": mask_guidance, "mask": source,
                      "mask_sha256": optional_sha256(source), "mask_classes": given, "model": str(self.model_path),
                      "model_sha256": self.model_sha256, "seconds": round(time.perf_counter() - start, 3)}
        return GenerationResult(volume, mapped, provenance)
