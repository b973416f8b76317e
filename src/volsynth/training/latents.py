"""The latent cache: encode a prepared dataset once with a trained autoencoder; store each case's
posterior mean and log-variance (z is sampled from them at every step), the latent scale factor
(1 / std of z over a sample of cases), the text embeddings of the reports and, for labelled data, each class's
occupancy of the latent cells and the label maps themselves.

Layout: ``cache.json``, ``text.safetensors`` (tokens and mask of every report), ``known.npy`` and one folder per
case, ``cases/00000/{mean,logvar,occupancy,labels}.npy``, memory-mapped on load, so that training reads only the
cases of its batch. Large volumes are encoded by windows (``volsynth.models.windowed``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from volsynth.errors import ConfigError, VolsynthError
from volsynth.io.atomic import atomic_output
from volsynth.models.checkpoint import load_checkpoint, sha256_file
from volsynth.models.windowed import ENCODE_WINDOW, encode_posterior
from volsynth.parallel import progress_bar
from volsynth.text import get_text_encoder
from volsynth.training.data import CaseStack, PreparedData

CACHE_INFO = "cache.json"
CACHE_FORMAT = 2  # 1 (no "format" key): every case in one latents.safetensors
SCALE_SAMPLE_CASES = 32  # the scale factor is measured on at most this many cases, spread over the dataset


@dataclass
class LatentCache:
    """Posterior statistics, text tokens and bookkeeping of a prepared dataset."""

    path: Path
    mean: CaseStack  # [N, C, x, y, z], read per case
    logvar: CaseStack
    tokens: torch.Tensor  # [N, L, D]
    token_mask: torch.Tensor  # [N, L]
    info: dict
    occupancy: CaseStack | None = None  # [N, K, x, y, z]: each class's share of every latent cell
    known: torch.Tensor | None = None  # [N, K]: whether the case's label map annotates the class
    labels: CaseStack | None = None  # [N, X, Y, Z]: the label maps on the image grid (full-resolution masks)

    @property
    def scale_factor(self) -> float:
        """Multiply z by this before diffusion; divide before decoding."""
        return float(self.info["scale_factor"])

    def __len__(self) -> int:
        return len(self.mean)

    def sample(self, indices: list[int], generators: list[torch.Generator]) -> torch.Tensor:
        """Scaled latents z = (mean + std * eps) * scale, eps from each sample's generator."""
        eps = torch.stack([torch.randn(self.mean.shape[1:], generator=g) for g in generators])
        z = self.mean[indices] + torch.exp(0.5 * self.logvar[indices]) * eps
        return z * self.scale_factor


def case_folder(root: Path, index: int) -> Path:
    """Where case ``index`` of a cache keeps its arrays."""
    return root / "cases" / f"{index:05d}"


def measure_scale(mean: CaseStack, logvar: CaseStack) -> float:
    """1 / std of z sampled (generator seeded 0) from up to ``SCALE_SAMPLE_CASES`` cases spread over the cache."""
    count = min(len(mean), SCALE_SAMPLE_CASES)
    indices = sorted({int(i) for i in np.linspace(0, len(mean) - 1, count).round()})
    generator = torch.Generator().manual_seed(0)
    z = torch.stack([mean[i] + torch.exp(0.5 * logvar[i]) * torch.randn(mean.shape[1:], generator=generator)
                     for i in indices])
    return 1.0 / float(z.std())


@torch.no_grad()
def build_latent_cache(autoencoder_checkpoint: str | Path, data: PreparedData, text_encoder: str, out: str | Path,
                       progress: bool = True, scale_factor: float | None = None) -> LatentCache:
    """Encode every case and its report, one case at a time; write the cache folder atomically.

    ``scale_factor`` fixes the latent scale instead of measuring it (a reused diffusion model keeps the
    scale it was trained with). Volumes above the windowed-encode threshold are encoded by windows of the
    autoencoder's training patch (``autoencoder.patch``), or of ``ENCODE_WINDOW`` voxels when it was trained whole.
    """
    checkpoint = load_checkpoint(autoencoder_checkpoint, use_ema=True)
    if "autoencoder" not in checkpoint.networks:
        raise ConfigError(autoencoder_checkpoint, "not an autoencoder checkpoint or model folder",
                          f"it holds {', '.join(sorted(checkpoint.networks))}")
    autoencoder = checkpoint.networks["autoencoder"].eval()
    window = checkpoint.meta.get("patch") or ENCODE_WINDOW
    label_names = sorted(data.plan.labels, key=data.plan.labels.get)
    ids = [data.plan.labels[n] for n in label_names]
    label_dtype = torch.uint8 if max(data.plan.labels.values(), default=0) < 256 else torch.int32
    out = Path(out)
    with atomic_output(out) as tmp:
        tmp.mkdir()
        with progress_bar(progress) as bar:
            task = bar.add_task("encode latents", total=len(data))
            for index in range(len(data)):
                mean, logvar = encode_posterior(autoencoder, data.images[index:index + 1], window=window)
                factor = data.images.shape[2] // mean.shape[2]
                arrays = {"mean": mean[0], "logvar": logvar[0]}
                if data.labels is not None:
                    labels = data.labels[index]
                    onehot = torch.stack([(labels == i).float() for i in ids])[None]
                    arrays["occupancy"] = (torch.nn.functional.avg_pool3d(onehot, factor) if factor > 1 else onehot)[0]
                    arrays["labels"] = labels.to(label_dtype)
                folder = case_folder(tmp, index)
                folder.mkdir(parents=True)
                for name, array in arrays.items():
                    np.save(folder / f"{name}.npy", array.contiguous().numpy())
                bar.advance(task)
        if data.labels is not None:
            np.save(tmp / "known.npy", known_classes(data.facts, label_names).numpy())
        files = [case_folder(tmp, i) for i in range(len(data))]
        means = CaseStack([f / "mean.npy" for f in files])
        scale = measure_scale(means, CaseStack([f / "logvar.npy" for f in files])) if scale_factor is None \
            else float(scale_factor)
        encoder = get_text_encoder(text_encoder)
        tokens, mask = encoder.encode(data.reports)
        info = {"format": CACHE_FORMAT, "case_ids": data.case_ids, "scale_factor": scale,
                "text_encoder": encoder.identifier, "text_dim": encoder.dim, "text_length": encoder.max_length,
                "autoencoder": str(Path(autoencoder_checkpoint)),
                "autoencoder_sha256": sha256_file(Path(autoencoder_checkpoint) / "model.safetensors"),
                "prepared": str(data.root), "latent_shape": list(means.shape[1:]), "factor": factor,
                "label_names": label_names, "label_ids": ids}
        save_file({"tokens": tokens.contiguous(), "mask": mask.contiguous()}, str(tmp / "text.safetensors"))
        (tmp / CACHE_INFO).write_text(json.dumps(info, indent=2) + "\n")
    return load_latent_cache(out)


def load_latent_cache(path: str | Path) -> LatentCache:
    """Open a cache folder written by ``build_latent_cache``: text and flags in memory, case arrays mapped."""
    path = Path(path)
    if not (path / CACHE_INFO).is_file():
        raise VolsynthError(path, "not a latent cache (cache.json missing)", "build it with the recipe's latents stage")
    info = json.loads((path / CACHE_INFO).read_text())
    if info.get("format") != CACHE_FORMAT:
        raise ConfigError(path, "latent cache in an older format (all cases in one file)",
                          "delete this folder: the recipe or train command rebuilds it")
    text = load_file(str(path / "text.safetensors"))
    files = [case_folder(path, i) for i in range(len(info["case_ids"]))]

    def stack(name: str) -> CaseStack | None:
        return CaseStack([f / f"{name}.npy" for f in files]) if (files[0] / f"{name}.npy").is_file() else None

    known = torch.from_numpy(np.load(path / "known.npy")) if (path / "known.npy").is_file() else None
    return LatentCache(path, stack("mean"), stack("logvar"), text["tokens"], text["mask"], info,
                       stack("occupancy"), known, stack("labels"))


def known_classes(facts: list[dict], label_names: list[str]) -> torch.Tensor:
    """[N, K] flags: a case's ``facts["annotated"]`` list when it has one (partial labels), else all known."""
    rows = []
    for case_facts in facts:
        annotated = (case_facts or {}).get("annotated")
        rows.append([1.0 if annotated is None or name in annotated else 0.0 for name in label_names])
    return torch.tensor(rows)
