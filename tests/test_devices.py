"""Device facts and the precision a recipe's ``bf16: auto | true | false`` resolves to."""

import warnings

import pytest
import torch

from volsynth import devices
from volsynth.errors import ConfigError
from volsynth.training.engine import TrainConfig


@pytest.fixture
def cpu_with(monkeypatch):
    """Pretend the CPU has the given flags."""
    def set_flags(*flags: str) -> None:
        monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset(flags))
    return set_flags


def test_native_bf16_follows_the_cpu_flags(cpu_with):
    cpu_with("avx2", "fma")
    assert not devices.native_bf16("cpu")
    cpu_with("avx2", "avx512_bf16")
    assert devices.native_bf16("cpu")
    cpu_with("amx_bf16")
    assert devices.native_bf16(torch.device("cpu"))


def test_auto_is_float32_on_any_cpu_and_forced_bf16_is_bf16(cpu_with):
    cpu_with("avx2")
    assert devices.resolve_precision("auto", "cpu") == torch.float32
    assert devices.resolve_precision(False, "cpu") == torch.float32
    cpu_with("avx512_bf16")
    assert devices.native_bf16("cpu")
    assert devices.resolve_precision("auto", "cpu") == torch.float32  # non-finite losses and no repeatability
    assert devices.resolve_precision(True, "cpu") == torch.bfloat16


def test_forced_bf16_on_an_emulating_cpu_warns_once_with_the_measured_slowdown(cpu_with, monkeypatch):
    monkeypatch.setattr(devices, "bf16_slowdown", lambda device_type="cpu": 80.0)
    cpu_with("avx2")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert devices.resolve_precision(True, "cpu") == torch.bfloat16
    assert len(caught) == 1 and caught[0].category is devices.PrecisionWarning
    assert "emulated" in str(caught[0].message) and "80.0x slower" in str(caught[0].message)
    cpu_with("avx512_bf16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert devices.resolve_precision(True, "cpu") == torch.bfloat16


def test_the_probe_measures_a_ratio():
    assert devices.bf16_slowdown.__wrapped__("cpu") > 0


def test_device_info_names_the_cpu_and_its_flags(cpu_with):
    cpu_with("avx2", "avx512_bf16", "sse4_2")
    info = devices.device_info("cpu")
    assert info.type == "cpu" and info.native_bf16 and info.name
    assert "avx512_bf16" in info.features and "sse4_2" not in info.features
    assert "bf16 native" in info.describe()


def test_train_config_takes_auto_true_false_and_nothing_else():
    assert TrainConfig().bf16 == "auto"
    assert TrainConfig.from_dict({"bf16": True}).bf16 is True
    with pytest.raises(ConfigError, match="train.bf16: expected auto, true or false"):
        TrainConfig.from_dict({"bf16": "fast"})


def test_device_settings_resolve_or_fail_in_one_line():
    from volsynth.devices import select_device

    assert select_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():  # auto falls back to the CPU; an explicit GPU is an error, never a CPU run
        assert select_device("auto") == torch.device("cpu")
        for setting in ("cuda", "cuda:1"):
            with pytest.raises(ConfigError, match="no CUDA GPU"):
                select_device(setting)
    for setting in ("gpu", "cuda:x", ""):
        with pytest.raises(ConfigError, match="expected auto, cpu, cuda or cuda:N"):
            select_device(setting)
    with pytest.raises(ConfigError, match="train.device"):
        TrainConfig(device="tpu")
