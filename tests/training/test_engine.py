import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.training.helpers import autoencoder_stage, diffusion_stage, train, trained_autoencoder
from volsynth.cli import main
from volsynth.training.engine import TrainingError, sample_generators
from volsynth.training.latents import load_latent_cache


@pytest.fixture(scope="module")
def autoencoder(prepared_tiny, tmp_path_factory) -> Path:
    return trained_autoencoder(prepared_tiny, tmp_path_factory.mktemp("ae"))


@pytest.fixture(scope="module")
def cache_dir(prepared_tiny, autoencoder, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cache") / "latents"
    diffusion_stage(prepared_tiny, autoencoder, folder)
    return folder


def _fixed_loss(stage, key: str) -> float:
    generators = sample_generators(0, 0, [0, 1])
    with torch.no_grad():
        return float(stage.losses([0, 1], generators, step=10_000)[key])


@pytest.mark.parametrize("which", ["autoencoder", "diffusion"])
def test_loss_decreases_on_a_fixed_batch(which, prepared_tiny, autoencoder, cache_dir, tmp_path):
    if which == "autoencoder":
        stage, key = autoencoder_stage(prepared_tiny, adv_weight=0.0), "recon"
    else:
        stage, key = diffusion_stage(prepared_tiny, autoencoder, cache_dir, loss="l2"), "diffusion"
    before = _fixed_loss(stage, key)
    # a truly fixed batch: the same two items with the same noise and timesteps at every step
    losses = stage.losses
    stage.losses = lambda indices, generators, step: losses([0, 1], sample_generators(0, 0, [0, 1]), 10_000)
    train(stage, tmp_path / which, steps=20, lr=3e-3, checkpoint_every=20, ema_decay=None)
    after = _fixed_loss(stage, key)
    assert after < 0.8 * before, (before, after)


def test_adversarial_and_kl_terms_are_logged(prepared_tiny, tmp_path):
    train(autoencoder_stage(prepared_tiny), tmp_path, steps=3)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3]
    assert all({"recon", "kl", "adv", "discriminator", "generator"} <= set(line) for line in lines)
    assert lines[0]["discriminator"] > 0  # the warm-up starts at step 0 here


def test_the_discriminator_is_neither_run_nor_trained_before_adv_start(prepared_tiny, tmp_path):
    stage = autoencoder_stage(prepared_tiny, adv_start=2)
    calls = []
    stage.networks["discriminator"].register_forward_pre_hook(lambda m, args: calls.append(1))
    initial = {k: v.clone() for k, v in stage.networks["discriminator"].state_dict().items()}
    train(stage, tmp_path, steps=2, checkpoint_every=1)  # steps 0 and 1: before the start
    assert calls == []
    assert all(torch.equal(v, initial[k]) for k, v in stage.networks["discriminator"].state_dict().items())
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all("discriminator" not in line and "adv" not in line for line in lines)
    train(stage, tmp_path, steps=3, checkpoint_every=1)  # resumed: step 2 runs and trains it
    assert len(calls) == 3  # the fake logits, the real logits, the detached fake logits
    assert any(not torch.equal(v, initial[k]) for k, v in stage.networks["discriminator"].state_dict().items())
    assert "discriminator" in json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])


def test_tensorboard_events_hold_the_logged_scalars(prepared_tiny, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(autoencoder_stage(prepared_tiny), tmp_path, steps=3, tensorboard=True)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    recon = events.Scalars("autoencoder/recon")
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [e.step for e in recon] == [1, 2, 3]
    assert [e.value for e in recon] == pytest.approx([line["recon"] for line in lines], rel=1e-6)


def test_tensorboard_without_the_package_is_a_clear_error(prepared_tiny, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    with pytest.raises(TrainingError, match="tensorboard package"):
        train(autoencoder_stage(prepared_tiny), tmp_path, steps=1, tensorboard=True)


def _stage(which: str, prepared: Path, autoencoder: Path, cache_dir: Path):
    """A fresh tiny autoencoder or diffusion stage (each run of a comparison builds its own)."""
    if which == "autoencoder":
        return autoencoder_stage(prepared)
    return diffusion_stage(prepared, autoencoder, cache_dir)


@pytest.mark.parametrize("which", ["autoencoder", "diffusion"])
def test_exact_resume(which, prepared_tiny, autoencoder, cache_dir, tmp_path):
    def stage():
        return _stage(which, prepared_tiny, autoencoder, cache_dir)

    straight = train(stage(), tmp_path / "straight", steps=6, checkpoint_every=3)
    train(stage(), tmp_path / "resumed", steps=3, checkpoint_every=3)
    resumed = train(stage(), tmp_path / "resumed", steps=6, checkpoint_every=3)
    assert (tmp_path / "resumed" / "checkpoints" / "checkpoint-0000006").is_dir()
    a = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    b = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    strip = [{k: v for k, v in json.loads(x).items() if k != "it_per_s"} for x in a]
    assert strip == [{k: v for k, v in json.loads(x).items() if k != "it_per_s"} for x in b]
    for name in ("model.safetensors", "ema.safetensors"):
        wa, wb = load_file(str(straight / name)), load_file(str(resumed / name))
        assert wa.keys() == wb.keys()
        assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_gradient_accumulation_matches_full_batch(prepared_tiny, autoencoder, cache_dir, tmp_path):
    one = train(diffusion_stage(prepared_tiny, autoencoder, cache_dir), tmp_path / "one", steps=2, batch_size=4)
    two = train(diffusion_stage(prepared_tiny, autoencoder, cache_dir), tmp_path / "two", steps=2, batch_size=4,
                grad_accum=2)
    wa, wb = load_file(str(one / "model.safetensors")), load_file(str(two / "model.safetensors"))
    # Adam divides by sqrt(v): float-level gradient differences move a weight by a small fraction of lr (2e-3)
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-4


@pytest.mark.parametrize("which", ["autoencoder", "diffusion"])
def test_activation_checkpointing_trains_the_same_weights(which, prepared_tiny, autoencoder, cache_dir, tmp_path):
    def stage():
        return _stage(which, prepared_tiny, autoencoder, cache_dir)

    plain = train(stage(), tmp_path / "plain", steps=2)
    recomputed = train(stage(), tmp_path / "recomputed", steps=2, activation_checkpointing=True)
    wa, wb = load_file(str(plain / "model.safetensors")), load_file(str(recomputed / "model.safetensors"))
    assert wa.keys() == wb.keys()  # the same checkpoint format
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-5


def test_activation_checkpointing_wraps_the_blocks_and_keeps_gradients():
    from volsynth.models import build_network, network_config
    from volsynth.models.checkpointing import enable_activation_checkpointing

    torch.manual_seed(0)
    config = {"class": "ConditionedUNet", "latent_channels": 2, "context_dim": 8, "context_length": 1,
              "unet": {"spatial_dims": 3, **network_config("unet", "tiny")}}
    plain, recomputed = build_network(config), build_network(config)
    recomputed.load_state_dict(plain.state_dict())
    assert enable_activation_checkpointing(recomputed) >= 3 and enable_activation_checkpointing(recomputed) == 0
    x, t = torch.randn(1, 2, 8, 8, 8), torch.tensor([10])
    grads = []
    for network in (plain, recomputed):
        network(x, t).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in network.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in grads[0])


def test_nan_guard_stops_with_clear_error(prepared_tiny, tmp_path):
    stage = autoencoder_stage(prepared_tiny, adv_weight=0.0)
    stage.losses = lambda indices, generators, step: {"generator": torch.tensor(float("nan"), requires_grad=True)}
    with pytest.raises(TrainingError, match="5 non-finite losses in a row"):
        train(stage, tmp_path, steps=3)
    assert not (tmp_path / "checkpoints").exists()


def test_latent_cache_round_trip(prepared_tiny, cache_dir):
    cache = load_latent_cache(cache_dir)
    assert cache.mean.shape == (4, 4, 8, 8, 8) and cache.logvar.shape == cache.mean.shape
    assert cache.tokens.shape[0] == 4 and cache.tokens.shape[2] == 16
    assert cache.info["case_ids"] == ["case000", "case001", "case002", "case003"]
    z = cache.sample([0, 1, 2, 3], sample_generators(0, 0, [0, 1, 2, 3]))
    assert 0.6 < float(z.std()) < 1.6  # scaled to about unit variance
    again = cache.sample([0, 1, 2, 3], sample_generators(0, 0, [0, 1, 2, 3]))
    assert torch.equal(z, again)


def test_corrupted_checkpoint_exit_2(prepared_tiny, autoencoder, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(autoencoder, broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    code = main(["train", "diffusion", "--data", str(prepared_tiny), "--autoencoder", str(broken),
                 "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert "model.safetensors" in err and "sha256 mismatch" in err
    (broken / "meta.json").unlink()
    assert main(["train", "diffusion", "--data", str(prepared_tiny), "--autoencoder", str(broken),
                 "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert "meta.json is missing" in capsys.readouterr().err


DDP_SCRIPT = """
import sys
from pathlib import Path
sys.path.insert(0, {root!r})
from tests.training.helpers import diffusion_stage, train
stage = diffusion_stage(Path({prepared!r}), Path({autoencoder!r}), Path({cache!r}))
train(stage, Path(sys.argv[1]), steps=3, batch_size=4, checkpoint_every=3)
"""


def test_ddp_gloo_two_processes_match_single(prepared_tiny, autoencoder, cache_dir, tmp_path):
    root = str(Path(__file__).resolve().parents[2])
    script = tmp_path / "worker.py"
    script.write_text(DDP_SCRIPT.format(root=root, prepared=str(prepared_tiny), autoencoder=str(autoencoder),
                                        cache=str(cache_dir)))
    single = train(diffusion_stage(prepared_tiny, autoencoder, cache_dir), tmp_path / "single", steps=3,
                   batch_size=4, checkpoint_every=3)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", "29531", str(script), str(tmp_path / "ddp")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = tmp_path / "ddp" / "checkpoints" / "checkpoint-0000003"
    wa, wb = load_file(str(single / "model.safetensors")), load_file(str(ddp / "model.safetensors"))
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-4
    la = [json.loads(x)["diffusion"] for x in (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["diffusion"] for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    # rank 0 logs its own half of the batch; the weights above are the real check
    assert len(la) == len(lb) == 3


def test_ema_warm_up_forgets_the_initial_weights():
    from volsynth.training.engine import EMA

    network = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.constant_(network.weight, 0.0)
    ema, plain = EMA(network, 0.999), EMA(network, 0.999)
    with torch.no_grad():
        network.weight.fill_(1.0)
    for step in range(100):
        ema.update(network, step)
        plain.update(network)
    # with the warm-up the first update already keeps only 1/10 of the initial weight
    assert float(ema.state["weight"]) > 0.99
    assert float(plain.state["weight"]) == pytest.approx(1 - 0.999**100, rel=1e-4)  # ~0.095: mostly initial
