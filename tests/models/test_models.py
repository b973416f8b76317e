import pytest
import torch

from volsynth.errors import ConfigError
from volsynth.models import build_network, network_config
from volsynth.models.tiled import decode
from volsynth.sampling import build_scheduler, classifier_free, training_target
from volsynth.sampling.guidance import dual_guidance


def tiny_unet(cond_channels: int = 0):
    torch.manual_seed(0)
    unet = {"spatial_dims": 3, **network_config("unet", "tiny")}
    return build_network({"class": "ConditionedUNet", "latent_channels": 4, "context_dim": 8, "context_length": 5,
                          "cond_channels": cond_channels, "unet": unet})


def test_registry_errors():
    with pytest.raises(ConfigError, match="unknown unet size"):
        network_config("unet", "huge")
    with pytest.raises(ConfigError, match="unknown network class"):
        build_network({"class": "Nope"})
    with pytest.raises(ConfigError, match="cannot build"):
        build_network({"class": "AutoencoderKL", "spatial_dims": 3, "channels": [8, 8], "norm_num_groups": 3})


def test_null_context_is_learned_and_used_for_dropped_samples():
    unet = tiny_unet()
    with torch.no_grad():  # MONAI zero-initialises attention outputs: perturb so that context matters
        for param in unet.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    x, t = torch.randn(2, 4, 8, 8, 8), torch.tensor([10, 20])
    context = torch.randn(2, 5, 8)
    with torch.no_grad():
        unconditional = unet(x, t, context=None)
        dropped = unet(x, t, context=context, drop_context=torch.tensor([True, False]))
        conditional = unet(x, t, context=context)
    assert torch.allclose(dropped[0], unconditional[0], atol=1e-5)
    assert torch.allclose(dropped[1], conditional[1], atol=1e-5)
    assert not torch.allclose(conditional[0], unconditional[0], atol=1e-4)
    assert any(n == "null_context" for n, _ in unet.named_parameters())


def test_condition_channels_are_required():
    unet = tiny_unet(cond_channels=2)
    x, t = torch.randn(1, 4, 8, 8, 8), torch.tensor([5])
    assert unet(x, t, cond=torch.zeros(1, 2, 8, 8, 8)).shape == x.shape
    with pytest.raises(ValueError, match="2 condition channels"):
        unet(x, t)


def test_classifier_free_guidance_combines_predictions():
    def cond(x, t):
        return x + 1

    def uncond(x, t):
        return x

    x = torch.zeros(1)
    assert classifier_free(cond, uncond, 1.0) is cond
    assert torch.equal(classifier_free(cond, uncond, 3.0)(x, None), torch.tensor([3.0]))
    assert torch.equal(classifier_free(cond, uncond, 0.0)(x, None), torch.tensor([0.0]))


def test_dual_guidance_combines_text_and_mask_terms():
    calls = []

    def predict(x, t, text_on, mask_on):  # e(-,-)=1, e(t,-)=3, e(t,m)=10, e(-,m)=6
        calls.append((text_on, mask_on))
        return x + {(False, False): 1.0, (True, False): 3.0, (True, True): 10.0, (False, True): 6.0}[(text_on, mask_on)]

    x = torch.zeros(1)
    assert float(dual_guidance(predict, True, True, 1.0, 1.0)(x, None)) == 10.0 and calls == [(True, True)]
    # 1 + 2 * (3 - 1) + 3 * (10 - 3)
    assert float(dual_guidance(predict, True, True, 2.0, 3.0)(x, None)) == 26.0
    # no text: 1 + 3 * (6 - 1); no mask: 1 + 2 * (3 - 1)
    assert float(dual_guidance(predict, False, True, 2.0, 3.0)(x, None)) == 16.0
    assert float(dual_guidance(predict, True, False, 2.0, 3.0)(x, None)) == 5.0


def test_scheduler_and_target_checks():
    with pytest.raises(ConfigError, match="unknown sampler"):
        build_scheduler("euler")
    with pytest.raises(ConfigError, match="rectified flow needs"):
        build_scheduler("rflow", "epsilon")
    with pytest.raises(ConfigError, match="needs the rflow"):
        build_scheduler("ddim", "flow")
    x0, noise, t = torch.randn(2, 1, 4, 4, 4), torch.randn(2, 1, 4, 4, 4), torch.tensor([3, 900])
    assert torch.equal(training_target(build_scheduler("ddpm"), "epsilon", x0, noise, t), noise)
    assert torch.equal(training_target(build_scheduler("rflow", "flow"), "flow", x0, noise, t), x0 - noise)


@pytest.mark.parametrize("slab_elements", [1, 3000, 2**25])  # 2-plane slabs, a few slabs, one slab
def test_streamed_decode_matches_full_decode(slab_elements, monkeypatch):
    from volsynth.models import tiled

    monkeypatch.setattr(tiled, "SLAB_ELEMENTS", slab_elements)
    torch.manual_seed(0)
    # channels change between levels, so the residual shortcut convolutions are exercised too
    config = network_config("autoencoder", "tiny", channels=[8, 16], norm_num_groups=4)
    autoencoder = build_network({"class": "AutoencoderKL", "spatial_dims": 3, "in_channels": 1, "out_channels": 1,
                                 **config}).eval()
    with torch.no_grad():  # non-trivial norm affines
        for module in autoencoder.modules():
            if isinstance(module, torch.nn.GroupNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    z = torch.randn(2, 4, 11, 9, 6)
    original = z.clone()
    full = decode(autoencoder, z, tiled=False)
    streamed = decode(autoencoder, z, tiled=True)
    assert streamed.shape == full.shape == (2, 1, 22, 18, 12)
    assert float((streamed - full).abs().max()) < 1e-4 * float(full.std())
    assert torch.equal(z, original)  # the input is left as it was


def test_network_configs_reads_names_and_refuses_a_corrupt_config(tmp_path):
    from volsynth.models.checkpoint import CheckpointError, network_configs

    assert network_configs(tmp_path) == {}  # no config.yaml
    (tmp_path / "config.yaml").write_text("networks:\n  autoencoder: {class: AutoencoderKL}\nsettings: {}\n")
    assert list(network_configs(tmp_path)) == ["autoencoder"]
    (tmp_path / "config.yaml").write_text("networks: [unclosed\n")
    with pytest.raises(CheckpointError, match="config.yaml.*unreadable checkpoint config"):
        network_configs(tmp_path)


def test_mask_features_pool_class_by_class_as_the_stacked_one_hot_would():
    import torch.nn.functional as F

    from volsynth.models.controlnet import combine_features, mask_features

    labels = torch.randint(0, 5, (2, 16, 16, 16), generator=torch.Generator().manual_seed(0))
    known = torch.tensor([[1, 0, 1, 1], [1, 1, 0, 1]])
    for factor in (1, 2, 4):
        onehot = torch.stack([(labels == i).float() for i in (1, 2, 3, 4)], dim=1)
        pooled = F.avg_pool3d(onehot, factor) if factor > 1 else onehot
        assert torch.equal(mask_features(labels, known, [1, 2, 3, 4], factor), combine_features(pooled, known))
