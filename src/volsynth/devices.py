"""What the device a command computes on can do: its name, its CPU flags or GPU name, and whether it runs bf16
natively. ``resolve_precision`` turns a recipe's ``bf16: auto | true | false`` into the dtype to compute in.

A CPU without bf16 instructions (no ``avx512_bf16`` / ``amx_bf16``) emulates bf16 autocast through float32
conversions, which makes convolutions many times slower than plain float32: ``auto`` uses bf16 only where the
device runs it natively, and a forced ``true`` on such a device warns with the slowdown a short probe measured.
"""

from __future__ import annotations

import functools
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from volsynth.errors import ConfigError

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # CPU flags (Linux /proc/cpuinfo) of native bf16 arithmetic
PRECISION_SETTINGS = ("auto", True, False)  # the values of a recipe's train.bf16
CPUINFO = Path("/proc/cpuinfo")


class PrecisionWarning(UserWarning):
    """bf16 was asked for on a device that emulates it."""


@dataclass(frozen=True)
class DeviceInfo:
    """A device as a report shows it."""

    type: str  # "cpu" or "cuda"
    name: str  # CPU model or GPU name
    features: str  # the CPU's vector and bf16 flags, or the GPU's compute capability
    native_bf16: bool

    def describe(self) -> str:
        """One line: name, features and bf16 support."""
        return f"{self.type} {self.name} ({self.features}; bf16 {'native' if self.native_bf16 else 'emulated'})"


def _cpuinfo_field(key: str) -> str:
    """The first ``key : value`` of /proc/cpuinfo ("" where there is none, e.g. not on Linux)."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return ""
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() == key:
            return value.strip()
    return ""


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux); empty where they cannot be read."""
    return frozenset(_cpuinfo_field("flags").split())


def cpu_name() -> str:
    """The CPU's model name."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine() or "unknown CPU"


def as_device(device: torch.device | str | None) -> torch.device:
    """A torch.device (None: the CPU)."""
    return torch.device("cpu" if device is None else device)


DEVICE_SETTINGS = ("auto", "cpu", "cuda")  # a recipe's train.device (also "cuda:N")


def check_device_setting(value: object, where: str = "device") -> None:
    """``value`` must be auto, cpu, cuda or cuda:N."""
    text = str(value)
    if not (text in DEVICE_SETTINGS or (text.startswith("cuda:") and text[5:].isdigit())):
        raise ConfigError(None, f"{where}: expected auto, cpu, cuda or cuda:N, got {value!r}")


def select_device(setting: str = "auto", local_rank: int = 0) -> torch.device:
    """The device a training process computes on: ``auto`` is GPU ``local_rank`` (one per torchrun process) when
    CUDA is available, else the CPU; ``cuda`` without a usable GPU is an error, not a silent CPU run."""
    check_device_setting(setting)
    if setting == "cpu" or (setting == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(None, f"device {setting}: this machine has no CUDA GPU that torch can use "
                          f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'})",
                          "choose auto or cpu, or install a CUDA build of torch")
    index = int(setting[5:]) if setting.startswith("cuda:") else local_rank
    if index >= torch.cuda.device_count():
        raise ConfigError(None, f"device cuda:{index}: only {torch.cuda.device_count()} GPU(s) visible")
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def native_bf16(device: torch.device | str | None = None) -> bool:
    """Whether ``device`` computes in bf16 natively (CUDA with bf16 support; a CPU with avx512_bf16 or amx_bf16)."""
    device = as_device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return any(flag in cpu_flags() for flag in BF16_CPU_FLAGS)
    return False


def device_info(device: torch.device | str | None = None) -> DeviceInfo:
    """Name, features and bf16 support of ``device``."""
    device = as_device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        return DeviceInfo("cuda", torch.cuda.get_device_name(index), f"compute capability {major}.{minor}",
                          native_bf16(device))
    flags = cpu_flags()
    shown = [f for f in ("avx2", "avx512f", *BF16_CPU_FLAGS) if f in flags]
    threads = torch.get_num_threads()
    return DeviceInfo("cpu", cpu_name(), f"{' '.join(shown) or 'no AVX flags'}, {threads} thread(s)",
                      native_bf16(device))


@functools.lru_cache(maxsize=4)
def bf16_slowdown(device_type: str = "cpu") -> float:
    """How many times slower a 64-channel 3x3x3 convolution of a 16^3 volume runs under bf16 autocast than in
    float32 on this device (a probe of well under a second)."""
    conv = torch.nn.Conv3d(64, 64, 3, padding=1).to(device_type)
    x = torch.randn(1, 64, 16, 16, 16, generator=torch.Generator().manual_seed(0)).to(device_type)

    def timed(bf16: bool) -> float:
        with torch.no_grad(), torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            conv(x)  # warm-up
            if device_type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(2):
                conv(x)
            if device_type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - start

    return timed(True) / max(timed(False), 1e-9)


def check_precision_setting(value: object, where: str = "bf16") -> None:
    """``value`` must be auto, true or false."""
    if not (isinstance(value, bool) or value == "auto"):
        raise ConfigError(None, f"{where}: expected auto, true or false, got {value!r}")


def warn_if_emulated(device: torch.device | str | None = None) -> None:
    """One PrecisionWarning when ``device`` emulates bf16, with the slowdown the probe measured."""
    device = as_device(device)
    if not native_bf16(device):
        warnings.warn(f"bf16 is emulated on this device ({device_info(device).name}): a probe convolution ran "
                      f"{bf16_slowdown(device.type):.1f}x slower than in float32 (set bf16: auto or false)",
                      PrecisionWarning, stacklevel=3)


def resolve_precision(setting: bool | str, device: torch.device | str | None = None) -> torch.dtype:
    """The dtype to compute in for ``bf16: auto | true | false``: auto is bf16 on a CUDA device that runs it
    natively and float32 elsewhere; true is bf16 (with a PrecisionWarning where it is emulated); false is float32.

    A CPU stays in float32 under auto even with avx512_bf16: on such a CPU, bf16 autocast made the hierarchical
    joint stage and the study's segmentor give non-finite losses within three steps, and two identical runs
    differ (its bf16 kernels do not repeat to the bit)."""
    check_precision_setting(setting)
    if setting == "auto":
        return torch.bfloat16 if as_device(device).type == "cuda" and native_bf16(device) else torch.float32
    if setting:
        warn_if_emulated(device)
        return torch.bfloat16
    return torch.float32


def _status_kib(key: str) -> int | None:
    """A ``key: N kB`` line of /proc/self/status in bytes (None where there is none)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def current_rss() -> int:
    """This process's resident memory now, in bytes (its peak so far where the current value is not readable)."""
    return _status_kib("VmRSS") or peak_rss()


def peak_rss() -> int:
    """This process's peak resident memory since it started or since ``reset_peak_rss``, in bytes."""
    hwm = _status_kib("VmHWM")
    if hwm is not None:
        return hwm
    import resource  # POSIX only

    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage if platform.system() == "Darwin" else usage * 1024


def reset_peak_rss() -> bool:
    """Restart the peak of ``peak_rss`` from the current resident memory (Linux); whether it could."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def available_memory() -> int | None:
    """Memory available to new work on this machine (Linux MemAvailable), in bytes; None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for the device's queued work (a GPU runs kernels asynchronously; timings need this)."""
    device = as_device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def memory_in_use(device: torch.device | str | None = None) -> int:
    """Bytes in use on ``device``: the CUDA allocator's on a GPU, this process's resident memory on the CPU."""
    device = as_device(device)
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else current_rss()


def memory_peak(device: torch.device | str | None = None) -> int:
    """Peak bytes on ``device`` since ``reset_memory_peak`` (CUDA allocator peak, or peak resident memory)."""
    device = as_device(device)
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss()


def reset_memory_peak(device: torch.device | str | None = None) -> None:
    """Restart ``memory_peak`` from the memory in use now."""
    device = as_device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        reset_peak_rss()
