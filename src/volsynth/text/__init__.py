"""Text encoders behind one interface: ``encode(texts) -> (tokens[B, L, D], attention_mask[B, L])``."""

from volsynth.text.encoders import (
    DEFAULT_TEXT_ENCODER,
    HFTextEncoder,
    TextEncoder,
    TinyTextEncoder,
    get_text_encoder,
)

__all__ = ["DEFAULT_TEXT_ENCODER", "HFTextEncoder", "TextEncoder", "TinyTextEncoder", "get_text_encoder"]
