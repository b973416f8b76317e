"""The latent cache: encode a prepared dataset once with a trained autoencoder; store each case's
posterior mean and log-variance (z is sampled from them at every step), the latent scale factor
(1 / std of z), the text embeddings of the reports and, for labelled data, each class's occupancy of the
latent cells and the label maps themselves."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from volsynth.errors import ConfigError, VolsynthError
from volsynth.io.atomic import atomic_output
from volsynth.models.checkpoint import load_checkpoint, sha256_file
from volsynth.parallel import progress_bar
from volsynth.text import get_text_encoder
from volsynth.training.data import PreparedData

CACHE_INFO = "cache.json"


@dataclass
class LatentCache:
    """Posterior statistics, text tokens and bookkeeping of a prepared dataset."""

    path: Path
    mean: torch.Tensor  # [N, C, x, y, z]
    logvar: torch.Tensor
    tokens: torch.Tensor  # [N, L, D]
    token_mask: torch.Tensor  # [N, L]
    info: dict
    occupancy: torch.Tensor | None = None  # [N, K, x, y, z]: each class's share of every latent cell
    known: torch.Tensor | None = None  # [N, K]: whether the case's label map annotates the class
    labels: torch.Tensor | None = None  # [N, X, Y, Z]: the label maps on the image grid (full-resolution masks)

    @property
    def scale_factor(self) -> float:
        """Multiply z by this before diffusion; divide before decoding."""
        return float(self.info["scale_factor"])

    def __len__(self) -> int:
        return self.mean.shape[0]

    def sample(self, indices: list[int], generators: list[torch.Generator]) -> torch.Tensor:
        """Scaled latents z = (mean + std * eps) * scale, eps from each sample's generator."""
        eps = torch.stack([torch.randn(self.mean.shape[1:], generator=g) for g in generators])
        z = self.mean[indices] + torch.exp(0.5 * self.logvar[indices]) * eps
        return z * self.scale_factor


@torch.no_grad()
def build_latent_cache(autoencoder_checkpoint: str | Path, data: PreparedData, text_encoder: str, out: str | Path,
                       progress: bool = True, scale_factor: float | None = None) -> LatentCache:
    """Encode every case and its report; write the cache folder atomically.

    ``scale_factor`` fixes the latent scale instead of measuring it (a reused diffusion model keeps the
    scale it was trained with).
    """
    checkpoint = load_checkpoint(autoencoder_checkpoint, use_ema=True)
    if "autoencoder" not in checkpoint.networks:
        raise ConfigError(autoencoder_checkpoint, "not an autoencoder checkpoint or model folder",
                          f"it holds {', '.join(sorted(checkpoint.networks))}")
    autoencoder = checkpoint.networks["autoencoder"].eval()
    means, logvars = [], []
    with progress_bar(progress) as bar:
        task = bar.add_task("encode latents", total=len(data))
        for index in range(len(data)):
            mu, sigma = autoencoder.encode(data.images[index:index + 1])
            means.append(mu[0])
            logvars.append(torch.log(sigma[0].pow(2) + 1e-12))
            bar.advance(task)
    mean, logvar = torch.stack(means), torch.stack(logvars)
    generator = torch.Generator().manual_seed(0)
    z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=generator)
    scale = 1.0 / float(z.std()) if scale_factor is None else float(scale_factor)
    encoder = get_text_encoder(text_encoder)
    tokens, mask = encoder.encode(data.reports)
    factor = data.images.shape[2] // mean.shape[2]
    masks = {}
    label_names = sorted(data.plan.labels, key=data.plan.labels.get)
    if data.labels is not None:
        ids = [data.plan.labels[n] for n in label_names]
        onehot = torch.stack([(data.labels == i).float() for i in ids], dim=1)
        masks["occupancy"] = torch.nn.functional.avg_pool3d(onehot, factor) if factor > 1 else onehot
        masks["known"] = known_classes(data.facts, label_names)
        masks["labels"] = data.labels.to(torch.uint8 if int(data.labels.max()) < 256 else torch.int32)
    out = Path(out)
    info = {"case_ids": data.case_ids, "scale_factor": scale, "text_encoder": encoder.identifier,
            "text_dim": encoder.dim, "text_length": encoder.max_length,
            "autoencoder": str(Path(autoencoder_checkpoint)),
            "autoencoder_sha256": sha256_file(Path(autoencoder_checkpoint) / "model.safetensors"),
            "prepared": str(data.root), "latent_shape": list(mean.shape[1:]), "factor": factor,
            "label_names": label_names, "label_ids": [data.plan.labels[n] for n in label_names]}
    with atomic_output(out) as tmp:
        tmp.mkdir()
        save_file({"mean": mean.contiguous(), "logvar": logvar.contiguous(),
                   **{k: v.contiguous() for k, v in masks.items()}}, str(tmp / "latents.safetensors"))
        save_file({"tokens": tokens.contiguous(), "mask": mask.contiguous()}, str(tmp / "text.safetensors"))
        (tmp / CACHE_INFO).write_text(json.dumps(info, indent=2) + "\n")
    return load_latent_cache(out)


def load_latent_cache(path: str | Path) -> LatentCache:
    """Read a cache folder written by ``build_latent_cache``."""
    path = Path(path)
    if not (path / CACHE_INFO).is_file():
        raise VolsynthError(path, "not a latent cache (cache.json missing)", "build it with the recipe's latents stage")
    latents = load_file(str(path / "latents.safetensors"))
    text = load_file(str(path / "text.safetensors"))
    info = json.loads((path / CACHE_INFO).read_text())
    return LatentCache(path, latents["mean"], latents["logvar"], text["tokens"], text["mask"], info,
                       latents.get("occupancy"), latents.get("known"), latents.get("labels"))


def known_classes(facts: list[dict], label_names: list[str]) -> torch.Tensor:
    """[N, K] flags: a case's ``facts["annotated"]`` list when it has one (partial labels), else all known."""
    rows = []
    for case_facts in facts:
        annotated = (case_facts or {}).get("annotated")
        rows.append([1.0 if annotated is None or name in annotated else 0.0 for name in label_names])
    return torch.tensor(rows)
