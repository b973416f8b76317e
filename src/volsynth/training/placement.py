"""Where a stage computes. Its networks, and any frozen module it uses, live on one device; each batch is made on
the CPU from the per-sample seeded generators (so a run draws the same samples and noise on any device) and moved
to that device just before the networks see it, as a data loader hands pinned batches to a GPU."""

from __future__ import annotations

import torch
from torch import nn


class DevicePlacement:
    """Mixin for training stages: ``device`` (the CPU until the engine moves the stage), ``to`` and ``put``."""

    device: torch.device = torch.device("cpu")
    networks: dict[str, nn.Module]
    helper_modules: tuple[str, ...] = ()  # attributes holding modules the losses use besides the trained networks

    def to(self, device: torch.device | str) -> None:
        """Move the trained networks and the helper modules (a frozen UNet, a loss network) to ``device``."""
        self.device = torch.device(device)
        helpers = [getattr(self, name) for name in self.helper_modules]
        for module in [*self.networks.values(), *helpers]:
            if module is not None:
                module.to(self.device)

    def put(self, *tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        """The tensors on the stage's device (``None`` stays ``None``)."""
        non_blocking = self.device.type == "cuda"
        return tuple(None if t is None else t.to(self.device, non_blocking=non_blocking) for t in tensors)
