import pytest
import torch

from tests.training.helpers import autoencoder_stage, diffusion_stage, train, trained_autoencoder
from volsynth.errors import ConfigError
from volsynth.pipelines.generate import SynthesisPipeline
from volsynth.training.engine import sample_generators
from volsynth.training.losses import PerceptualLoss25D, discriminator_loss, generator_adversarial_loss, kl_loss
from volsynth.training.recipe import assemble_model


class TinyFeatures(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x))


@pytest.fixture
def feature_file(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "features.pt"
    torch.jit.script(TinyFeatures()).save(str(path))
    return path


def test_perceptual_loss_from_a_local_torchscript_file(feature_file):
    loss = PerceptualLoss25D(feature_file, slices_per_axis=3)
    x = torch.randn(2, 1, 16, 16, 16)
    assert float(loss(x, x)) == pytest.approx(0.0, abs=1e-6)
    assert float(loss(x, x + 0.5 * torch.randn_like(x))) > 0.01
    assert all(not p.requires_grad for p in loss.parameters())


def test_perceptual_term_in_the_autoencoder_stage(prepared_tiny, feature_file, tmp_path):
    stage = autoencoder_stage(prepared_tiny, adv_weight=0.0, perceptual=str(feature_file))
    losses = stage.losses([0, 1], sample_generators(0, 0, [0, 1]), 0)
    assert float(losses["perceptual"]) > 0
    train(stage, tmp_path, steps=2)


def test_perceptual_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        PerceptualLoss25D(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"nope")
    with pytest.raises(ConfigError, match="not a TorchScript"):
        PerceptualLoss25D(tmp_path / "bad.pt")


def test_adversarial_and_kl_values():
    assert float(kl_loss(torch.zeros(2, 4, 2, 2, 2), torch.ones(2, 4, 2, 2, 2))) == pytest.approx(0.0, abs=1e-6)
    real, fake = torch.full((3,), 2.0), torch.full((3,), -2.0)
    assert float(discriminator_loss(real, fake, "hinge")) == 0.0  # both beyond the margin
    assert float(discriminator_loss(real, fake, "least_squares")) == pytest.approx(0.5 * (1 + 4))
    assert float(generator_adversarial_loss(fake, "least_squares")) == pytest.approx(9.0)
    with pytest.raises(ConfigError):
        generator_adversarial_loss(fake, "wasserstein")


@pytest.mark.parametrize("settings, sampler", [({"prediction_type": "v_prediction"}, "ddim"),
                                               ({"sampler": "rflow", "prediction_type": "flow"}, "rflow")])
def test_other_parameterisations_train_and_sample(prepared_tiny, tmp_path, settings, sampler):
    autoencoder = trained_autoencoder(prepared_tiny, tmp_path / "ae")
    stage = diffusion_stage(prepared_tiny, autoencoder, tmp_path / "latents", **settings)
    diffusion = train(stage, tmp_path / "diffusion", steps=2)
    model = assemble_model(autoencoder, diffusion, tmp_path / "model", {"name": "t"})
    pipe = SynthesisPipeline.from_pretrained(model)
    result = pipe(prompt="liver", seed=0, steps=3, sampler=sampler)
    assert result.image.shape == (16, 16, 16)
    wrong = "ddim" if sampler == "rflow" else "rflow"
    with pytest.raises(ConfigError, match="cannot sample"):
        pipe(prompt="liver", seed=0, steps=3, sampler=wrong)
