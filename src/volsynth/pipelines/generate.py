"""Text-to-volume generation with a trained latent diffusion model (diffusers-style pipeline)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from volsynth.data.plan import Plan
from volsynth.errors import ConfigError
from volsynth.io.volume import Volume
from volsynth.models.checkpoint import load_checkpoint
from volsynth.models.tiled import decode
from volsynth.sampling import build_scheduler, classifier_free, sample
from volsynth.text import get_text_encoder


@dataclass
class SynthesisResult:
    """A generated volume (HU / MR units, with its affine) and how it was made."""

    image: Volume
    provenance: dict = field(default_factory=dict)


class SynthesisPipeline:
    """``SynthesisPipeline.from_pretrained(model_dir)(prompt=..., seed=...)``."""

    def __init__(self, autoencoder, unet, plan: Plan, scale_factor: float, text_encoder: str, latent_shape: list[int],
                 diffusion: dict, model_path: Path | None = None, model_sha256: str | None = None) -> None:
        self.autoencoder, self.unet = autoencoder.eval().float(), unet.eval().float()
        self.latent_shape = list(latent_shape)
        self.plan, self.scale_factor, self.diffusion = plan, scale_factor, diffusion
        self.text_encoder_id = text_encoder
        self._text_encoder = None
        self.model_path, self.model_sha256 = model_path, model_sha256
        self.device = torch.device("cpu")

    def to(self, device: str | torch.device) -> SynthesisPipeline:
        """Move the networks to a device (noise is still drawn on the CPU, so seeds mean the same)."""
        self.device = torch.device(device)
        self.autoencoder.to(self.device)
        self.unet.to(self.device)
        return self

    @classmethod
    def from_pretrained(cls, path: str | Path) -> SynthesisPipeline:
        """Load a model folder (``autoencoder`` + ``unet`` networks, EMA weights when present)."""
        checkpoint = load_checkpoint(path, use_ema=True)
        meta = checkpoint.meta
        missing = [n for n in ("autoencoder", "unet") if n not in checkpoint.networks]
        if missing:
            raise ConfigError(path, f"model folder lacks network(s) {missing}", "is this a complete model?")
        return cls(checkpoint.networks["autoencoder"], checkpoint.networks["unet"], Plan.from_dict(meta["plan"]),
                   float(meta["scale_factor"]), meta["text_encoder"], meta["latent_shape"], meta.get("diffusion", {}),
                   Path(path),
                   meta["files"].get("model.safetensors"))

    @property
    def text_encoder(self):
        """The text encoder named in the model's metadata (loaded on first use)."""
        if self._text_encoder is None:
            self._text_encoder = get_text_encoder(self.text_encoder_id)
        return self._text_encoder

    def scheduler(self, sampler: str, spatial_numel: int = 32768):
        """A sampling scheduler matching the trained noise schedule; wrong combinations are errors."""
        trained = self.diffusion.get("sampler", "ddpm")
        if (sampler == "rflow") != (trained == "rflow"):
            raise ConfigError(self.model_path, f"model trained with '{trained}' cannot sample with '{sampler}'",
                              "use rflow for flow models, ddpm/ddim otherwise")
        return build_scheduler(sampler, self.diffusion.get("prediction_type", "epsilon"),
                               self.diffusion.get("num_train_timesteps", 1000),
                               self.diffusion.get("schedule", "scaled_linear_beta"), spatial_numel)

    @torch.no_grad()
    def __call__(self, prompt: str = "", seed: int = 0, steps: int = 30, sampler: str = "ddim",
                 text_guidance: float = 3.0, dtype: torch.dtype = torch.float32) -> SynthesisResult:
        """1. encode prompt 2. prepare latents 3. denoise 4. decode 5. invert the plan's normalisation."""
        start = time.perf_counter()
        # 1. encode the prompt (an empty prompt means the unconditional model)
        context = self.text_encoder.encode([prompt])[0].to(self.device) if prompt else None
        # 2. prepare latents from the seed
        generator = torch.Generator().manual_seed(seed)
        z = torch.randn([1, *self.latent_shape], generator=generator).to(self.device)
        # 3. denoise with classifier-free guidance around the network
        scheduler = self.scheduler(sampler, int(z[0, 0].numel()))

        def conditional(x, t):
            return self.unet(x, t, context=context)

        def unconditional(x, t):
            return self.unet(x, t, context=None)

        denoiser = classifier_free(conditional, unconditional, text_guidance if context is not None else 1.0)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            z = sample(denoiser, z, scheduler, steps, generator=generator)
            # 4. decode (tiled above the size threshold)
            image = decode(self.autoencoder, z.float() / self.scale_factor)
        # 5. back to HU / MR units on the plan's grid
        volume = Volume(image[0, 0].float().clamp(-1, 1).cpu().numpy().astype(np.float32), self.plan.default_affine(),
                        modality=self.plan.modality)
        volume = self.plan.denormalize(volume)
        provenance = {"prompt": prompt, "seed": seed, "steps": steps, "sampler": sampler,
                      "text_guidance": text_guidance, "dtype": str(dtype).removeprefix("torch."),
                      "device": self.device.type, "text_encoder": self.text_encoder_id,
                      "model": str(self.model_path), "model_sha256": self.model_sha256,
                      "seconds": round(time.perf_counter() - start, 3)}
        return SynthesisResult(volume, provenance)


@torch.no_grad()
def preview_samples(unet, autoencoder_checkpoint, cache, settings, path: Path, step: int, count: int = 2) -> None:
    """Training preview: decode a few samples for the first reports of the cache."""
    from volsynth.viz import save_montage

    autoencoder = load_checkpoint(autoencoder_checkpoint, use_ema=True).networks["autoencoder"].eval()
    unet.eval()
    scheduler = build_scheduler("ddim" if settings.sampler == "ddpm" else settings.sampler, settings.prediction_type,
                                settings.num_train_timesteps, settings.schedule, int(cache.mean[0, 0].numel()))
    arrays, titles = [], []
    for index in range(min(count, len(cache))):
        generator = torch.Generator().manual_seed(index)
        z = torch.randn([1, *cache.mean.shape[1:]], generator=generator)
        context = cache.tokens[index:index + 1]
        z = sample(lambda x, t, c=context: unet(x, t, context=c), z, scheduler, settings.preview_steps, generator)
        arrays.append(decode(autoencoder, z / cache.scale_factor)[0, 0].numpy())
        titles.append(f"step {step} sample {index}")
    unet.train()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_montage(path, arrays, [None] * len(arrays), titles, window=(-1.0, 1.0))
