"""What a MAISI generation will cost on a GPU, predicted before anything runs (``volsynth generate --dry-run``).

The three networks are built from the model's configs on the "meta" device (no weights, no data) and traced at the
request's latent grid (``volsynth.models.costing``): one denoising step (ControlNet + UNet, flash attention as on a
GPU) and one decode window. The prediction:

- GPU memory: the networks' weights, the tensors held through the run (latents, the mask's bit-planes), and the
  larger of one step's and one window's peak. Allocator overhead, cuDNN workspaces and the CUDA context are not
  in it (they add several hundred MB to a few GB); float32 throughout, as volsynth runs MAISI.
- time: FLOPs over the rates NV-Generate-CT's published A100 timings imply for these networks (``A100_TFLOPS``,
  fitted by ``python benchmarks/maisi_cost.py``, which prints each published row against its prediction). Those
  timings were taken under float16 autocast; volsynth runs float32 (TF32 convolutions on an A100), which can take
  up to twice as long.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from monai.data.utils import dense_patch_slices
from monai.inferers.utils import _get_scan_interval

from volsynth.models.costing import parameter_bytes, trace_cost
from volsynth.models.maisi.networks import build_maisi_network
from volsynth.pipelines.maisi_mask import controlled_step

# Sustained TFLOP/s of the denoiser (ControlNet + UNet) and the decoder that NV-Generate-CT's published A100 80 GB
# timings (docs/performance.md there, rflow-ct rows) imply with these FLOP counts: ``python benchmarks/maisi_cost.py``
A100_TFLOPS = {"denoise": 51.0, "decode": 35.0}
GB = 1e9


@dataclass(frozen=True)
class GenerationCost:
    """A MAISI generation's predicted GPU memory and time."""

    grid: list[int]
    latent: list[int]
    steps: int
    step_flops: float
    step_peak: int
    windows: int
    window: list[int]
    window_flops: float
    window_peak: int
    weights: int
    resident: int

    @property
    def peak_bytes(self) -> int:
        """Weights + resident tensors + the larger of one step's and one decode window's peak."""
        return self.weights + self.resident + max(self.step_peak, self.window_peak)

    def seconds(self, rates: dict[str, float] | None = None) -> dict[str, float]:
        """Predicted seconds of denoising and decoding at ``rates`` (TFLOP/s; default: the A100 fit)."""
        rates = rates or A100_TFLOPS
        return {"denoise": self.steps * self.step_flops / (rates["denoise"] * 1e12),
                "decode": self.windows * self.window_flops / (rates["decode"] * 1e12)}

    def rows(self) -> list[tuple[str, str]]:
        """The prediction as (what, value) rows for a table."""
        seconds = self.seconds()
        return [("grid", "x".join(map(str, self.grid))), ("latent grid", "x".join(map(str, self.latent))),
                ("weights", _gb(self.weights)),
                ("denoising step", f"{self.step_flops / 1e12:.2g} TFLOP, {_gb(self.step_peak)} peak"),
                ("decode window", f"{'x'.join(map(str, self.window))} latent, {self.windows} window(s), "
                                  f"{self.window_flops / 1e12:.2g} TFLOP and {_gb(self.window_peak)} peak each"),
                ("GPU memory (predicted peak)", _gb(self.peak_bytes)),
                ("time on an A100 (predicted)", f"{seconds['denoise']:.2g} s denoising ({self.steps} steps) + "
                                                f"{seconds['decode']:.2g} s decoding")]


def _gb(count: int) -> str:
    return f"{count / GB:.1f} GB" if count >= GB else f"{count / 1e6:.0f} MB"


def meta_networks(configs: dict[str, dict]) -> dict[str, torch.nn.Module]:
    """The model's networks on the meta device, attention as they run on a GPU (flash, where configured)."""
    networks = {}
    for name in ("autoencoder", "unet", "controlnet"):
        with torch.device("meta"):
            network = build_maisi_network(configs[name]).eval()
        if configs[name].get("use_flash_attention"):
            for module in network.modules():
                if hasattr(module, "use_flash_attention"):
                    module.use_flash_attention = True
        networks[name] = network
    return networks


def decode_windows(latent: list[int], window: list[int], overlap: float) -> tuple[list[int], int]:
    """The decode window (clipped to the grid) and how many windows cover the latent grid, as MONAI's sliding
    window inferer places them."""
    window = [min(w, s) for w, s in zip(window, latent, strict=True)]
    if window == list(latent):
        return window, 1
    interval = _get_scan_interval(latent, window, len(latent), [overlap] * len(latent))
    return window, len(dense_patch_slices(latent, window, interval))


def estimate(configs: dict[str, dict], grid: list[int], latent_factor: int, steps: int, masked: bool,
             decode: dict) -> GenerationCost:
    """Predict a generation on ``grid`` (image voxels) with ``steps`` denoising steps, the ControlNet when
    ``masked``, and the sliding-window ``decode`` settings ({"window": [...], "overlap": f})."""
    networks = meta_networks(configs)
    unet, controlnet, autoencoder = networks["unet"], networks["controlnet"], networks["autoencoder"]
    latent = [s // latent_factor for s in grid]
    meta = {"device": "meta"}
    z = torch.empty(1, unet.in_channels, *latent, **meta)
    t = torch.empty(1, **meta)
    extra = {"spacing_tensor": torch.empty(1, 3, **meta)}
    class_labels = torch.zeros(1, dtype=torch.long, **meta) if unet.num_class_embeds is not None else None
    if unet.include_top_region_index_input:
        extra.update(top_region_index_tensor=torch.empty(1, 4, **meta),
                     bottom_region_index_tensor=torch.empty(1, 4, **meta))
    cond = torch.empty(1, 8, *grid, **meta) if masked else None

    denoise = trace_cost(controlled_step, unet, controlnet, z, t, cond, 1.0, class_labels, **extra)
    window, windows = decode_windows(latent, decode["window"], decode["overlap"])
    decoded = trace_cost(autoencoder.decode_stage_2_outputs, torch.empty(1, z.shape[1], *window, **meta))
    weights = sum(parameter_bytes(n) for n in networks.values())
    resident = 2 * z.numel() * 4 + (cond.numel() * 4 if cond is not None else 0)  # latents (and the sampler's
    # copy) and the bit-planes stay on the GPU through the run
    return GenerationCost(list(grid), latent, steps, denoise.flops, denoise.peak_bytes, windows, window,
                          decoded.flops, decoded.peak_bytes, weights, resident)
