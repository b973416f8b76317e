"""MAISI (NV-Generate-CT) generation from a model folder written by ``volsynth import maisi``.

The recipe follows NV-Generate-CT's image-from-mask inference: the mask in MAISI's label ids (body label added when
missing) as 8 bit-planes into the ControlNet; the voxel spacing (x100) and, as configured, the CT modality code and
the body regions into the UNet; the published noise scheduler; the autoencoder decoding the latents by sliding
windows (and its own split convolutions), so memory stays bounded; [0, 1] mapped to [-1000, 1000] HU and voxels
outside the mask set to -1000 HU. Without a mask the UNet alone generates on the model's default grid.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from monai.inferers import SlidingWindowInferer

from volsynth.data.plan import Plan
from volsynth.errors import ConfigError
from volsynth.io.resample import resample_to
from volsynth.io.volume import LabelMap, Volume
from volsynth.models.checkpoint import load_checkpoint, optional_sha256
from volsynth.models.maisi.networks import build_maisi_network, build_maisi_scheduler
from volsynth.pipelines.base import GenerationRequest, GenerationResult, Pipeline, sampling_recommendation
from volsynth.pipelines.maisi_cost import GenerationCost, decode_windows
from volsynth.pipelines.maisi_cost import estimate as estimate_cost
from volsynth.pipelines.maisi_mask import (
    bit_planes,
    body_regions,
    check_grid,
    controlled_step,
    prepare_maisi_mask,
    read_body_ct,
)
from volsynth.pipelines.masks import load_mask, map_mask
from volsynth.sampling import sample

SAMPLER_OF = {"RFlowScheduler": "rflow", "DDPMScheduler": "ddpm"}
LARGE_LATENT, LARGE_OVERLAP = 64, 0.4  # decode overlap above a 64-voxel latent axis
MIN_SPLIT = 4  # latent voxels per split of the autoencoder's split convolutions


class MaisiPipeline(Pipeline):
    """``MaisiPipeline.from_pretrained(dir)(mask=..., mask_labels=LabelPreset("totalsegmentator"), seed=...)``."""

    kind = "maisi"
    options = frozenset({"mask", "mask_labels", "modality", "steps", "sampler", "controlnet_scale", "body_ct"})

    def __init__(self, autoencoder, unet, controlnet, plan: Plan, scale_factor: float, scheduler: dict,
                 settings: dict, configs: dict[str, dict], model_path: Path | None = None,
                 model_sha256: str | None = None) -> None:
        self.autoencoder, self.unet, self.controlnet = autoencoder.eval(), unet.eval(), controlnet.eval()
        self.plan, self.scale_factor, self.scheduler_config, self.settings = plan, scale_factor, scheduler, settings
        self.configs = configs  # each network's constructor config (the dry run builds them on the meta device)
        self.model_path, self.model_sha256 = model_path, model_sha256
        # image voxels per latent voxel (the autoencoder's downsampling), and what a grid must be a multiple of
        # (the UNet's downsampling of the latents on top)
        self.latent_factor = 2 ** (len(configs["autoencoder"]["num_channels"]) - 1)
        self.grid_factor = self.latent_factor * 2 ** (len(configs["unet"]["num_channels"]) - 1)
        self.recommended = sampling_recommendation(model_path)
        self.device = torch.device("cpu")

    @classmethod
    def from_pretrained(cls, path: str | Path) -> MaisiPipeline:
        """Load a model folder written by ``volsynth import maisi`` (checksums verified)."""
        checkpoint = load_checkpoint(path, builder=build_maisi_network)
        meta, networks = checkpoint.meta, checkpoint.networks
        return cls(networks["autoencoder"], networks["unet"], networks["controlnet"], Plan.from_dict(meta["plan"]),
                   float(meta["scale_factor"]), meta["scheduler"], meta["maisi"], checkpoint.config["networks"],
                   Path(path), meta["files"].get("model.safetensors"))

    def to(self, device: str | torch.device) -> MaisiPipeline:
        """Move the networks to a device (noise is still drawn on the CPU, so seeds mean the same)."""
        self.device = torch.device(device)
        for network in (self.autoencoder, self.unet, self.controlnet):
            network.to(self.device)
        return self

    @property
    def trained_sampler(self) -> str:
        """The sampler of the published noise scheduler (rflow or ddpm)."""
        return SAMPLER_OF[self.scheduler_config["class"]]

    def scheduler(self, sampler: str):
        """The published noise scheduler; another sampler is refused."""
        if sampler != self.trained_sampler:
            raise ConfigError(self.model_path, f"this MAISI model samples with '{self.trained_sampler}', not "
                              f"'{sampler}'", f"leave --sampler out or give {self.trained_sampler}")
        return build_maisi_scheduler(self.scheduler_config)

    def prepare_mask(self, mask: LabelMap | str | Path, mask_labels=None, known=None, modality: str | None = None,
                     body_ct: Volume | str | Path | None = None):
        """Mask -> (mapped mask with body on its own grid, generation grid affine and size, mask on that grid,
        source path, how the body label was made); every check before anything is generated."""
        self.plan_for(modality)
        label, source = load_mask(mask)
        mapped, _ = map_mask(label, self.plan.labels, mask_labels, source)
        ct = None if body_ct is None else read_body_ct(body_ct, mapped)
        mapped, affine, size, on_grid, body = prepare_maisi_mask(mapped, self.grid_factor, self.model_path, source,
                                                                 ct)
        self.check_split_decode(size)
        return mapped, affine, size, on_grid, source, body

    def check_split_decode(self, size: list[int]) -> None:
        """Refuse a grid too narrow for the autoencoder's split convolutions (each split of the latent axis they
        split needs at least ``MIN_SPLIT`` voxels)."""
        config = self.configs["autoencoder"]
        splits, axis = int(config.get("num_splits", 1)), int(config.get("dim_split", 0))
        latent = size[axis] // self.latent_factor
        if splits > 1 and latent // splits < MIN_SPLIT:
            raise ConfigError(self.model_path, f"grid {size} is too narrow along {'RAS'[axis]} for this autoencoder's "
                              f"decode ({splits} splits of {latent} latent voxels; each needs {MIN_SPLIT})",
                              f"give a mask at least {splits * MIN_SPLIT * self.latent_factor} voxels along "
                              f"{'RAS'[axis]}")

    def check(self, request: GenerationRequest) -> None:
        """The options a MAISI model takes; a body CT only with a mask."""
        super().check(request)
        if request.body_ct is not None and request.mask is None:
            raise ConfigError(self.model_path, "--body-ct goes with --mask", "give the mask the CT belongs to")

    def grid(self, mask=None, mask_labels=None, modality: str | None = None, body_ct=None) -> list[int]:
        """The grid (voxels) a request generates on: the mask's, made ready for MAISI, or the default one."""
        if mask is None:
            check_grid(list(self.plan.size), self.plan.spacing, self.grid_factor, self.model_path)
            self.check_split_decode(list(self.plan.size))
            return list(self.plan.size)
        return self.prepare_mask(mask, mask_labels, modality=modality, body_ct=body_ct)[2]

    def decode_settings(self, latent: list[int]) -> dict:
        """The sliding-window decode: the model's window; its overlap above a 64-voxel latent axis (256 image
        voxels) is 0.4, as in every NV-Generate-CT inference config for grids over 256^3 (fewer windows)."""
        decode = dict(self.settings["decode"])
        if max(latent) > LARGE_LATENT:
            decode["overlap"] = min(decode["overlap"], LARGE_OVERLAP)
        return decode

    def estimate(self, request: GenerationRequest) -> GenerationCost:
        """The predicted GPU memory and time of a request (``volsynth generate --dry-run``), nothing generated."""
        self.check(request)
        settings = self.resolve(request)
        self.scheduler(settings["sampler"])
        size = self.grid(request.mask, request.mask_labels, request.modality, request.body_ct)
        latent = [s // self.latent_factor for s in size]
        return estimate_cost(self.configs, size, self.latent_factor, settings["steps"], request.mask is not None,
                             self.decode_settings(latent))

    @torch.no_grad()
    def generate(self, prompt: str = "", mask: LabelMap | str | Path | None = None, seed: int = 0, steps: int = 30,
                 sampler: str = "rflow", controlnet_scale: float = 1.0, mask_labels=None,
                 modality: str | None = None, body_ct: Volume | str | Path | None = None) -> GenerationResult:
        """1. check 2. prepare mask and grid 3. conditioning 4. noise 5. denoise 6. decode 7. to HU and geometry."""
        start = time.perf_counter()
        # 1. MAISI takes no text
        if prompt:
            raise ConfigError(self.model_path, "MAISI models take no text prompt", "give --mask (or nothing)")
        scheduler = self.scheduler(sampler)
        # 2. the mask in MAISI's ids, with body, on the generation grid (the model's default grid without a mask)
        mapped = None
        info: dict = {}
        if mask is not None:
            mapped, affine, size, on_grid, source, body = self.prepare_mask(mask, mask_labels, modality=modality,
                                                                            body_ct=body_ct)
            labels = torch.from_numpy(on_grid.array.astype(np.int64))
            info = {"mask": source, "mask_sha256": optional_sha256(source), "body_label": body,
                    "controlnet_scale": controlnet_scale}
            if body_ct is not None:
                info["body_ct"] = str(body_ct) if isinstance(body_ct, (str, Path)) else "given"
        else:
            affine, size = self.plan.default_affine(), self.grid(body_ct=body_ct)
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        # 3. conditioning: spacing x100, modality code, body regions, the mask's bit-planes
        extra: dict = {"spacing_tensor": torch.from_numpy(spacing[None] * 100.0).float().to(self.device)}
        class_labels = None
        if self.unet.num_class_embeds is not None:
            class_labels = torch.tensor([int(self.settings["modality"])], device=self.device)
        if self.unet.include_top_region_index_input:
            top, bottom = body_regions(set(mapped.present()) if mapped is not None else None)
            extra["top_region_index_tensor"] = torch.tensor([top], device=self.device) * 100.0
            extra["bottom_region_index_tensor"] = torch.tensor([bottom], device=self.device) * 100.0
        cond = bit_planes(labels).to(self.device) if mapped is not None else None
        # 4. noise from the seed (drawn on the CPU)
        generator = torch.Generator().manual_seed(seed)
        latent = [self.unet.in_channels, *[s // self.latent_factor for s in size]]
        z = torch.randn([1, *latent], generator=generator).to(self.device)

        # 5. denoise: the ControlNet's residuals into the UNet
        def denoiser(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return controlled_step(self.unet, self.controlnet, x, t.float(), cond, controlnet_scale, class_labels,
                                   **extra)

        z = sample(denoiser, z, scheduler, steps, generator=generator)
        # 6. decode by sliding windows over the latent grid
        image = self.decode(z / self.scale_factor)
        # 7. [0, 1] -> HU; outside the mask -1000 HU; onto the mask's own grid
        lo, hi = self.settings["hu_range"]
        array = image[0, 0].clamp(0, 1).cpu().numpy().astype(np.float32) * (hi - lo) + lo
        if mapped is not None:
            array[on_grid.array == 0] = lo
        volume = Volume(array, affine, modality="CT")
        if mapped is not None:
            volume = resample_to(volume, mapped.affine, mapped.shape, cval=float(lo))
        record = {"prompt": prompt, "seed": seed, "steps": steps, "sampler": sampler, "grid_size": size,
                  "grid_spacing": [round(float(s), 4) for s in spacing], "device": self.device.type,
                  "model": str(self.model_path), "model_sha256": self.model_sha256, **info,
                  "seconds": round(time.perf_counter() - start, 3)}
        return GenerationResult(volume, mapped, record)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """The autoencoder's decode; by overlapping windows (Gaussian-blended) when the latent grid is larger than
        one window, with the windows' outputs gathered on the CPU."""
        decode = self.decode_settings(list(latents.shape[2:]))
        window, windows = decode_windows(list(latents.shape[2:]), decode["window"], decode["overlap"])
        if windows == 1:
            return self.autoencoder.decode_stage_2_outputs(latents).float().cpu()
        inferer = SlidingWindowInferer(roi_size=window, sw_batch_size=1, overlap=decode["overlap"],
                                       mode="gaussian", sw_device=self.device, device=torch.device("cpu"))
        return inferer(latents, lambda x: self.autoencoder.decode_stage_2_outputs(x).float())
