"""Hierarchical generation (MedSyn): text -> low-resolution image + anatomy -> super-resolution ->
high-resolution image and label map on the plan's grid."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from volsynth.data.plan import Plan
from volsynth.errors import ConfigError
from volsynth.io.volume import LabelMap, Volume
from volsynth.models.checkpoint import load_checkpoint
from volsynth.models.stages import upsample
from volsynth.pipelines.base import GenerationResult, Pipeline, meta_file, sampling_recommendation
from volsynth.sampling import classifier_free, sample
from volsynth.sampling.samplers import scheduler_for
from volsynth.text import get_text_encoder


class HierarchicalPipeline(Pipeline):
    """``HierarchicalPipeline.from_pretrained(dir)(prompt=..., seed=...)`` -> image + label map."""

    kind = "hierarchical"
    options = frozenset({"steps", "sampler", "text_guidance", "modality"})

    def __init__(self, joint, superres, plan: Plan, meta: dict, model_path: Path | None = None) -> None:
        self.joint, self.superres = joint.eval().float(), superres.eval().float()
        self.plan, self.meta, self.model_path = plan, meta, model_path
        self.factor = int(meta["factor"])
        self.label_ids = list(meta["label_ids"])
        self._text_encoder = None
        self.recommended = sampling_recommendation(model_path)
        self.device = torch.device("cpu")

    @classmethod
    def from_pretrained(cls, path: str | Path) -> HierarchicalPipeline:
        """Load a hierarchical model folder (``joint`` and ``superres`` networks)."""
        checkpoint = load_checkpoint(path, use_ema=True)
        missing = [n for n in ("joint", "superres") if n not in checkpoint.networks]
        if missing:
            raise ConfigError(path, f"model folder lacks network(s) {missing}")
        meta = checkpoint.meta
        return cls(checkpoint.networks["joint"], checkpoint.networks["superres"], Plan.from_dict(meta["plan"]), meta,
                   Path(path))

    def to(self, device: str | torch.device) -> HierarchicalPipeline:
        """Move the networks to a device."""
        self.device = torch.device(device)
        self.joint.to(self.device)
        self.superres.to(self.device)
        return self

    def scheduler(self, sampler: str, stage: str = "joint"):
        """A sampling scheduler matching the trained schedule of ``stage`` (joint or superres)."""
        settings = self.stage_settings(stage)  # a residual stage's clean estimate is not bounded by [-1, 1]: no clip
        return scheduler_for(settings, sampler, model_path=self.model_path,
                             pixel_space=settings.get("residual_scale") is None)

    def stage_settings(self, stage: str) -> dict:
        """A stage's diffusion settings (models made before they were stored per stage: the joint stage's)."""
        if stage == "superres":
            return self.meta.get("superres_diffusion", self.meta["diffusion"])
        return self.meta["diffusion"]

    def refusal_hint(self, refused: list[str]) -> str:
        """A hierarchical model draws its own anatomy."""
        return "; a hierarchical model generates its own label map from the text" if "mask" in refused else ""

    def prepare_mask(self, *args, **kwargs):
        """Hierarchical models generate their own anatomy: a mask is an error."""
        raise ConfigError(self.model_path, "--mask: not an option of this hierarchical model",
                          "a hierarchical model generates its own label map from the text")

    @torch.no_grad()
    def generate(self, prompt: str = "", seed: int = 0, steps: int = 30, sampler: str = "ddim",
                 text_guidance: float = 3.0, modality: str | None = None) -> GenerationResult:
        """1. encode prompt 2. stage 1 (low resolution, joint) 3. upsample 4. stage 2 5. split image / labels."""
        self.plan_for(modality)
        start = time.perf_counter()
        # 1. encode the prompt
        if self._text_encoder is None:
            self._text_encoder = get_text_encoder(self.meta["text_encoder"], source=meta_file(self.model_path))
        context = self._text_encoder.encode([prompt])[0].to(self.device) if prompt else None
        generator = torch.Generator().manual_seed(seed)
        channels = 2 + len(self.label_ids)
        high = list(self.plan.size)
        low = [s // self.factor for s in high]

        def guided(network, cond):
            def conditional(x, t):
                return network(x, t, context=context, cond=cond)

            def unconditional(x, t):
                return network(x, t, context=None, cond=cond)

            return classifier_free(conditional, unconditional, text_guidance if context is not None else 1.0)

        # 2. stage 1: the low-resolution image and anatomy together
        x = torch.randn([1, channels, *low], generator=generator).to(self.device)
        x = sample(guided(self.joint, None), x, self.scheduler(sampler), steps, generator=generator)
        # 3. + 4. stage 2: super-resolution conditioned on the upsampled stage-1 channels
        cond = upsample(x.clamp(-1, 1), self.factor)
        y = torch.randn([1, channels, *high], generator=generator).to(self.device)
        y = sample(guided(self.superres, cond), y, self.scheduler(sampler, "superres"), steps, generator=generator)
        residual_scale = self.stage_settings("superres").get("residual_scale")
        if residual_scale is not None:  # stage 2 made the residual over its condition
            y = cond + residual_scale * y
        # 5. image channel back to HU; label channels -> label map (argmax, background first)
        affine = self.plan.default_affine()
        image = Volume(y[0, 0].clamp(-1, 1).cpu().numpy().astype(np.float32), affine, modality=self.plan.modality)
        index = y[0, 1:].argmax(0).cpu().numpy()
        ids = np.array([0, *self.label_ids])
        labels = LabelMap(ids[index].astype(np.uint8), affine, labels=dict(self.plan.labels))
        provenance = {"prompt": prompt, "seed": seed, "steps": steps, "sampler": sampler,
                      "text_guidance": text_guidance, "low_resolution": low, "high_resolution": high,
                      "model": str(self.model_path), "model_sha256": self.meta["files"].get("model.safetensors"),
                      "seconds": round(time.perf_counter() - start, 3)}
        return GenerationResult(self.plan.denormalize(image), labels, provenance)
