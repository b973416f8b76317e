"""What a network call costs, found without running it: floating-point operations and the peak of live tensor
memory, traced on PyTorch's "meta" device (shapes and dtypes only, no data, so a 512^3 grid traces in a second
on any machine).

``trace_cost(fn, *args)`` runs ``fn`` under no_grad with a dispatch mode that adds each new tensor storage's bytes
when an operation makes it and takes them off when it is freed, keeping the peak; FLOPs come from PyTorch's own
``FlopCounterMode``. Scaled dot-product attention is counted as a fused (flash / memory-efficient) kernel runs it on a
GPU: its output is the only memory it holds, its FLOPs are ``4 * batch * heads * queries * keys * head_dim``.

What this leaves out, and a GPU adds: the CUDA caching allocator's rounding and fragmentation, cuDNN workspaces and
the CUDA context (several hundred MB). Tensors that exist before the call (weights, inputs) are not in the peak.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812 (PyTorch's own spelling)
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

ATTENTION_ARGS = ("query", "key", "value")


@dataclass(frozen=True)
class Cost:
    """One call's floating-point operations and the peak bytes of the tensors it made."""

    flops: float
    peak_bytes: int


class _LiveMemory(TorchDispatchMode):
    """Bytes of the tensor storages made under this mode and still alive; their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.now = self.peak = 0

    def _free(self, key: int) -> None:
        self.now -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage()._cdata for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                key = storage._cdata
                if key not in self.live and key not in inputs:  # a view or an in-place result adds nothing
                    self.live[key] = storage.nbytes()
                    self.now += storage.nbytes()
                    weakref.finalize(storage, self._free, key)
        self.peak = max(self.peak, self.now)
        return out


class _FusedAttention(TorchFunctionMode):
    """Scaled dot-product attention as a fused GPU kernel costs it (output memory only); its FLOPs counted here."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0.0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            q, k, _ = (list(args) + [kwargs.get(name) for name in ATTENTION_ARGS[len(args):]])[:3]
            self.flops += 4.0 * q.shape[:-2].numel() * q.shape[-2] * k.shape[-2] * q.shape[-1]
            return torch.empty_like(q)
        return func(*args, **kwargs)


def trace_cost(fn, *args, **kwargs) -> Cost:
    """The FLOPs and peak live-tensor bytes of ``fn(*args, **kwargs)`` (meta tensors in, nothing computed)."""
    memory, attention, flops = _LiveMemory(), _FusedAttention(), FlopCounterMode(display=False)
    with torch.no_grad(), attention, flops, memory:
        fn(*args, **kwargs)
    return Cost(flops=float(flops.get_total_flops()) + attention.flops, peak_bytes=memory.peak)


def parameter_bytes(network: torch.nn.Module) -> int:
    """Bytes of a network's parameters and buffers."""
    tensors = [*network.parameters(), *network.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)
