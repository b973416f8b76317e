import warnings

import pytest
import torch

from volsynth.errors import ConfigError
from volsynth.text import TinyTextEncoder, get_text_encoder
from volsynth.text.encoders import TruncationWarning


def test_tiny_encoder_shapes_and_determinism():
    encoder = get_text_encoder("tiny:24")
    tokens, mask = encoder.encode(["Two hypodense lesions, the largest 24 mm.", "No focal lesion."])
    assert tokens.shape == (2, encoder.max_length, 24) and mask.shape == (2, encoder.max_length)
    assert mask[0].sum() == 7 and mask[1].sum() == 3
    assert torch.all(tokens[1, 3:] == 0)  # padding
    again, _ = TinyTextEncoder(dim=24).encode(["Two hypodense lesions, the largest 24 mm.", "No focal lesion."])
    assert torch.equal(tokens, again)
    other, _ = encoder.encode(["Two hyperdense lesions, the largest 24 mm."])
    assert not torch.equal(other[0], tokens[0])


def test_truncation_warns():
    encoder = TinyTextEncoder(dim=8, max_length=4)
    with pytest.warns(TruncationWarning):
        tokens, mask = encoder.encode(["one two three four five six"])
    assert mask.sum() == 4


def test_default_encoder_loads_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    encoder = get_text_encoder("minilm", max_length=32)
    assert encoder.identifier == "minilm@32" and encoder.dim == 384  # rebuilds the same encoder
    assert get_text_encoder("minilm").identifier == "minilm"  # the default length keeps the plain name
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # short prompts must not warn
        tokens, mask = encoder.encode(["two hypodense lesions in the right liver lobe", "no focal lesion"])
    assert tokens.shape == (2, 32, 384) and tokens.dtype == torch.float32
    assert mask[0].sum() > mask[1].sum() > 0
    # similar reports are closer than unrelated text (mean of real tokens)
    pooled = [(tokens[i] * mask[i, :, None]).sum(0) / mask[i].sum() for i in range(2)]
    far, _ = encoder.encode(["the weather is sunny today"])
    far_pooled = (far[0] * _[0, :, None]).sum(0) / _[0].sum()
    cos = torch.nn.functional.cosine_similarity
    assert cos(pooled[0], pooled[1], dim=0) > cos(pooled[0], far_pooled, dim=0)
    with pytest.warns(TruncationWarning):
        encoder.encode(["lesion " * 100])


def test_bad_encoder_specs(tmp_path):
    with pytest.raises(ConfigError, match="unknown text encoder"):
        get_text_encoder("no-such-encoder")
    (tmp_path / "model").mkdir()
    with pytest.raises(ConfigError, match="config.json"):
        get_text_encoder(str(tmp_path / "model"))


def test_length_suffix_sets_tokens_kept_and_round_trips():
    encoder = get_text_encoder("tiny:8@96")
    assert encoder.max_length == 96 and encoder.identifier == "tiny:8@96"
    again = get_text_encoder(encoder.identifier)
    tokens, mask = encoder.encode(["word " * 80])
    assert tokens.shape == (1, 96, 8) and mask.sum() == 80  # not truncated at 64
    assert torch.equal(tokens, again.encode(["word " * 80])[0])
    assert get_text_encoder("tiny:8@64").identifier == "tiny:8"
    for bad in ("tiny:8@", "tiny:8@x", "minilm@0"):
        with pytest.raises(ConfigError, match="bad text encoder length"):
            get_text_encoder(bad)
