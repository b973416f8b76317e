import pytest
import torch

from tests.training.helpers import diffusion_stage, train, trained_autoencoder
from volsynth.errors import ConfigError
from volsynth.training.controlnet import ControlNetSettings, ControlNetStage
from volsynth.training.denoising import hide_classes
from volsynth.training.engine import sample_generators
from volsynth.training.latents import load_latent_cache


@pytest.fixture(scope="module")
def parts(prepared_tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("cn")
    autoencoder = trained_autoencoder(prepared_tiny, root / "ae")
    stage = diffusion_stage(prepared_tiny, autoencoder, root / "latents")
    diffusion = train(stage, root / "diffusion", steps=2)
    return load_latent_cache(root / "latents"), diffusion


def test_cache_holds_pooled_masks(parts):
    cache, _ = parts
    assert cache.occupancy.shape == (4, 2, 8, 8, 8)  # two classes (liver, tumour) on the 8^3 latent grid
    assert torch.all(cache.known == 1)
    assert 0 < float(cache.occupancy[:, 0].mean()) < 1 and float(cache.occupancy[:].max()) <= 1


def test_hiding_rates():
    known = torch.ones(4000, 3)
    generators = sample_generators(0, 0, list(range(4000)))
    hidden = hide_classes(known, generators, hide_class=0.3, hide_all=0.1)
    kept = float(hidden.mean())
    assert abs(kept - 0.9 * 0.7) < 0.03  # each class kept with p = (1 - hide_all) * (1 - hide_class)
    all_hidden = float((hidden.sum(1) == 0).float().mean())
    assert abs(all_hidden - (0.1 + 0.9 * 0.3**3)) < 0.03
    assert torch.all(hide_classes(torch.zeros(10, 3), generators[:10], 0.0, 0.0) == 0)  # unknown stays unknown


def test_controlnet_loss_decreases_and_unet_stays_frozen(parts, tmp_path):
    cache, diffusion = parts
    stage = ControlNetStage(cache, diffusion, ControlNetSettings(hide_class=0.0, hide_all=0.0, condition_dropout=0.0))
    with torch.no_grad():  # a barely trained UNet has a near-zero output layer that ignores any residual
        for param in stage.unet.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    unet_before = {k: v.clone() for k, v in stage.unet.state_dict().items()}
    losses = stage.losses
    fixed = sample_generators(0, 0, [0, 1])
    stage.losses = lambda indices, generators, step: losses([0, 1], fixed, step)
    with torch.no_grad():
        before = float(losses([0, 1], fixed, 0)["controlnet"])
    train(stage, tmp_path, steps=40, lr=5e-3, checkpoint_every=40, ema_decay=None)
    with torch.no_grad():
        after = float(losses([0, 1], fixed, 0)["controlnet"])
    assert after < 0.97 * before, (before, after)  # residuals only nudge a frozen network: a small, real drop
    assert all(torch.equal(unet_before[k], v) for k, v in stage.unet.state_dict().items())


def test_controlnet_needs_masks(parts):
    cache, diffusion = parts
    cache.occupancy, saved = None, cache.occupancy
    try:
        with pytest.raises(ConfigError, match="no masks"):
            ControlNetStage(cache, diffusion, ControlNetSettings())
    finally:
        cache.occupancy = saved
