"""Text-to-volume generation with a trained latent diffusion model (diffusers-style pipeline)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from volsynth.data.plan import Plan
from volsynth.devices import warn_if_emulated
from volsynth.errors import ConfigError
from volsynth.io.resample import resample_to
from volsynth.io.volume import LabelMap, Volume
from volsynth.models.checkpoint import load_checkpoint, optional_sha256
from volsynth.models.controlnet import mask_features
from volsynth.models.tiled import decode
from volsynth.pipelines.base import GenerationResult, Pipeline, meta_file, sampling_recommendation
from volsynth.pipelines.masks import class_flags, place_mask
from volsynth.pipelines.refine import run_refiner
from volsynth.sampling import dual_guidance, sample
from volsynth.sampling.samplers import scheduler_for
from volsynth.text import get_text_encoder


class SynthesisPipeline(Pipeline):
    """Latent diffusion from text and/or a mask: ``SynthesisPipeline.from_pretrained(dir)(prompt=..., seed=...)``."""

    kind = "latent"

    def __init__(self, autoencoder, unet, plan: Plan, scale_factor: float, text_encoder: str, latent_shape: list[int],
                 diffusion: dict, controlnet=None, model_path: Path | None = None,
                 model_sha256: str | None = None, refiner=None, refiner_settings: dict | None = None) -> None:
        self.autoencoder, self.unet = autoencoder.eval().float(), unet.eval().float()
        self.controlnet = controlnet.eval().float() if controlnet is not None else None
        self.refiner = refiner.eval().float() if refiner is not None else None
        self.refiner_settings = dict(refiner_settings or {})
        self.latent_shape = list(latent_shape)
        self.plan, self.scale_factor, self.diffusion = plan, scale_factor, diffusion
        self.text_encoder_id = text_encoder
        self._text_encoder = None
        self.model_path, self.model_sha256 = model_path, model_sha256
        self.recommended = sampling_recommendation(model_path)
        self.device = torch.device("cpu")

    def to(self, device: str | torch.device) -> SynthesisPipeline:
        """Move the networks to a device (noise is still drawn on the CPU, so seeds mean the same)."""
        self.device = torch.device(device)
        for network in (self.autoencoder, self.unet, self.controlnet, self.refiner):
            if network is not None:
                network.to(self.device)
        return self

    @classmethod
    def from_pretrained(cls, path: str | Path) -> SynthesisPipeline:
        """Load a model folder (``autoencoder`` + ``unet`` [+ ``controlnet``] [+ ``refiner``], EMA weights when
        present)."""
        checkpoint = load_checkpoint(path, use_ema=True)
        meta, networks = checkpoint.meta, checkpoint.networks
        missing = [n for n in ("autoencoder", "unet") if n not in networks]
        if missing:
            raise ConfigError(path, f"model folder lacks network(s) {missing}", "is this a complete model?")
        return cls(networks["autoencoder"], networks["unet"], Plan.from_dict(meta["plan"]), float(meta["scale_factor"]),
                   meta["text_encoder"], meta["latent_shape"], meta.get("diffusion", {}), networks.get("controlnet"),
                   Path(path), meta["files"].get("model.safetensors"), networks.get("refiner"), meta.get("refiner"))

    @property
    def text_encoder(self):
        """The text encoder named in the model's metadata (loaded on first use)."""
        if self._text_encoder is None:
            self._text_encoder = get_text_encoder(self.text_encoder_id, source=meta_file(self.model_path))
        return self._text_encoder

    @property
    def options(self) -> frozenset[str]:
        """Text, sampler and modality always; the mask's options with mask guidance; the ControlNet scale with a
        ControlNet; the refiner's with a refiner."""
        options = {"steps", "sampler", "text_guidance", "modality", "dtype"}
        if self.mask_guided:
            options |= {"mask", "mask_labels", "known", "mask_guidance"}
        if self.controlnet is not None:
            options.add("controlnet_scale")
        if self.refiner is not None:
            options |= {"refine", "refiner_guidance", "refiner_steps"}
        return frozenset(options)

    def refusal_hint(self, refused: list[str]) -> str:
        """Why a latent model takes no mask, when that is what was refused."""
        if "mask" in refused:
            return "; this model has no mask guidance (no ControlNet, no mask input): give text only"
        return ""

    @property
    def mask_concat(self) -> bool:
        """Whether the UNet takes the pooled mask concatenated to its input (latent segmentation guidance)."""
        return bool(getattr(self.unet, "cond_channels", 0))

    @property
    def mask_guided(self) -> bool:
        """Whether the model takes a mask at all (a ControlNet, a mask-concat UNet or both)."""
        return self.controlnet is not None or self.mask_concat

    def scheduler(self, sampler: str, spatial_numel: int = 32768):
        """A sampling scheduler matching the trained noise schedule; wrong combinations are errors."""
        return scheduler_for(self.diffusion, sampler, spatial_numel, self.model_path)

    def prepare_mask(self, mask: LabelMap | str | Path, mask_labels: dict | None = None,
                     known: list[str] | None = None, modality: str | None = None):
        """Mask -> (mapped LabelMap on its own grid, plan-grid affine, ControlNet features, known names, source)."""
        mapped, grid, on_grid, known, source = self._place_mask(mask, mask_labels, known, modality)
        return mapped, grid, self._mask_features(on_grid, known, self.mask_pooling), known, source

    def _place_mask(self, mask, mask_labels, known, modality=None):
        self.plan_for(modality)
        if not self.mask_guided:
            raise ConfigError(self.model_path, "this model has no mask guidance (no ControlNet, no mask input)",
                              "train a recipe with a controlnet stage or diffusion.mask_concat, or give text only")
        return place_mask(mask, self.plan, mask_labels, known)

    def _mask_features(self, on_grid: LabelMap, known: list[str], pooling: int) -> torch.Tensor:
        _, ids, flags = class_flags(self.plan, known)
        labels = torch.from_numpy(on_grid.array.astype(np.int64))[None]
        return mask_features(labels, flags, ids, pooling)

    @property
    def mask_pooling(self) -> int:
        """Average pooling from the image grid to the grid of the mask features (the latent grid, or finer
        when the ControlNet embedding downsamples the mask itself)."""
        factor = self.plan.size[0] // self.latent_shape[1]
        return self.controlnet.mask_pooling(factor) if self.controlnet is not None else factor

    @torch.no_grad()
    def generate(self, prompt: str = "", mask: LabelMap | str | Path | None = None, seed: int = 0, steps: int = 30,
                 sampler: str = "ddim", text_guidance: float = 3.0, mask_guidance: float = 1.0,
                 controlnet_scale: float = 1.0, mask_labels: dict | None = None,
                 known: list[str] | None = None, dtype: torch.dtype | None = None,
                 modality: str | None = None, latents: torch.Tensor | None = None,
                 mask_condition: torch.Tensor | None = None, refine: bool = True,
                 refiner_guidance: float = 1.0, refiner_steps: int | None = None) -> GenerationResult:
        """1. encode prompt 2. prepare mask 3. prepare latents 4. denoise 5. decode 6. back to HU and geometry.

        ``latents`` replaces the seeded starting noise and ``mask_condition`` the mask's ControlNet input
        (both used by latent interpolation). ``refine=False`` skips the model's refiner, when it has one;
        ``refiner_guidance`` is the refiner's classifier-free scale on the mask (1: none; no mask: unused);
        ``refiner_steps`` its sampling steps (default: the model's; fewer cost less, see docs/benchmarks.md).
        """
        start = time.perf_counter()
        if refiner_steps is not None and refiner_steps < 1:  # checked before any sampling work
            raise ConfigError(self.model_path, f"refiner steps must be >= 1, got {refiner_steps}")
        dtype = torch.float32 if dtype is None else dtype
        if dtype == torch.bfloat16:
            warn_if_emulated(self.device)
        self.plan_for(modality)
        # 1. encode the prompt (an empty prompt means the unconditional model)
        context = self.text_encoder.encode([prompt])[0].to(self.device) if prompt else None
        null_context = self.unet.null(1)
        # 2. prepare the mask: ids mapped to the model's classes, resampled onto the model's grid, embedded once
        #    (all zeros, every class "not given", is the trained "no mask" input)
        mapped = grid = None
        mask_info: dict = {}
        null_features = self._null_features()
        features = null_features
        refiner_features = None  # the refiner's mask input at full resolution (None: the "no mask" input)
        if mask is not None:
            mapped, grid, on_grid, given, source = self._place_mask(mask, mask_labels, known)
            own = self._mask_features(on_grid, given, self.mask_pooling)
            features = (own if mask_condition is None else mask_condition).to(self.device)
            if self.refiner is not None and refine and mask_condition is None:
                # the refiner reads the mask at full resolution; a given condition (an interpolation's blended
                # middle frames) has no full-resolution mask, so those volumes are refined without one
                refiner_features = (own if self.mask_pooling == 1 else self._mask_features(on_grid, given, 1))
                refiner_features = refiner_features.to(self.device)
            mask_info = {"mask": source, "mask_sha256": optional_sha256(source), "mask_classes": given,
                         "mask_guidance": mask_guidance,
                         **({"controlnet_scale": controlnet_scale} if self.controlnet is not None else {})}
        if self.controlnet is not None:
            null_embedding = self.controlnet.embed(null_features)
            embedding = self.controlnet.embed(features) if mask is not None else null_embedding
        # 3. prepare latents from the seed
        generator = torch.Generator().manual_seed(seed)
        z = self.initial_noise(seed) if latents is None else latents.clone()
        z = z.to(self.device)

        # 4. denoise: one prediction function, guidance wrapped around it
        def predict(x, t, text_on: bool, mask_on: bool):
            ctx = context if text_on and context is not None else null_context.to(x)
            cond = (features if mask_on else null_features) if self.mask_concat else None
            if self.controlnet is None:
                return self.unet(x, t, context=ctx, cond=cond)
            down, mid = self.controlnet(x, t, embedding if mask_on else null_embedding, context=ctx,
                                        scale=controlnet_scale)
            return self.unet(x, t, context=ctx, cond=cond, down_block_additional_residuals=down,
                             mid_block_additional_residual=mid)

        denoiser = dual_guidance(predict, context is not None, mask is not None, text_guidance, mask_guidance)
        scheduler = self.scheduler(sampler, int(z[0, 0].numel()))
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            z = sample(denoiser, z, scheduler, steps, generator=generator)
            # 5. decode (tiled above the size threshold)
            image = decode(self.autoencoder, z.float() / self.scale_factor)
            # 5b. refine at full resolution from the decoded volume and the mask (when the model has a refiner)
            refine_info = {"refined": bool(refine)} if self.refiner is not None else {}
            if self.refiner is not None and refine:
                guidance = 1.0  # refining without a mask: nothing to guide by
                if refiner_features is None:
                    refiner_features = self._null_features(1)
                else:
                    guidance = refine_info["refiner_guidance"] = refiner_guidance
                refine_info["refiner_steps"] = int(refiner_steps or self.refiner_settings["steps"])
                image = run_refiner(self.refiner, image.float().clamp(-1, 1), refiner_features, self.refiner_settings,
                                    seed, self.model_path, steps=refine_info["refiner_steps"], guidance=guidance)
        # 6. back to HU / MR units; onto the mask's grid when a mask was given
        volume = Volume(image[0, 0].float().clamp(-1, 1).cpu().numpy().astype(np.float32),
                        grid if grid is not None else self.plan.default_affine(), modality=self.plan.modality)
        volume = self.plan.denormalize(volume)
        if mapped is not None:
            volume = resample_to(volume, mapped.affine, mapped.shape, cval=float(self.plan.normalization[0].window[0]))
        provenance = {"prompt": prompt, "seed": seed, "steps": steps, "sampler": sampler,
                      "text_guidance": text_guidance, "dtype": str(dtype).removeprefix("torch."),
                      "device": self.device.type, "text_encoder": self.text_encoder_id,
                      "model": str(self.model_path), "model_sha256": self.model_sha256, **mask_info,
                      **refine_info,
                      "seconds": round(time.perf_counter() - start, 3)}
        return GenerationResult(volume, mapped, provenance)

    def initial_noise(self, seed: int) -> torch.Tensor:
        """The starting latent noise of a seed (drawn on the CPU)."""
        return torch.randn([1, *self.latent_shape], generator=torch.Generator().manual_seed(seed))

    def _null_features(self, pooling: int | None = None) -> torch.Tensor:
        classes = len(self.plan.labels)
        pooling = self.mask_pooling if pooling is None else pooling
        grid = [s // pooling for s in self.plan.size]
        return torch.zeros([1, 2 * classes, *grid], device=self.device)
