"""Activation checkpointing: recompute a network's large blocks in the backward pass instead of keeping their
activations, trading about one extra forward for memory (a recipe's ``train: {activation_checkpointing: true}``).

The blocks are the UNets' and ControlNets' down, middle and up blocks and the autoencoder's encoder and decoder.
Each keeps its parameters and state-dict keys (its class is swapped for a subclass whose ``forward`` runs under
``torch.utils.checkpoint``), so checkpoints are the same files with it on or off; in evaluation mode, or without
gradients, a block runs as before.
"""

from __future__ import annotations

import torch
from monai.networks.nets import AutoencoderKL
from torch import nn
from torch.utils.checkpoint import checkpoint

BLOCK_LISTS = ("down_blocks", "up_blocks")  # MONAI DiffusionModelUNet / ControlNet
SINGLE_BLOCKS = ("middle_block",)
_classes: dict[type, type] = {}


def _checkpointed(base: type) -> type:
    """A subclass of ``base`` whose forward recomputes its activations in the backward pass while training."""
    if base not in _classes:
        def forward(self, *args, **kwargs):
            if self.training and torch.is_grad_enabled():
                return checkpoint(base.forward, self, *args, use_reentrant=False, **kwargs)
            return base.forward(self, *args, **kwargs)

        _classes[base] = type(f"Checkpointed{base.__name__}", (base,), {"forward": forward})
    return _classes[base]


def _blocks(module: nn.Module) -> list[nn.Module]:
    """The large blocks a MONAI UNet or ControlNet holds directly (none for other modules)."""
    found = [b for name in BLOCK_LISTS if isinstance(getattr(module, name, None), nn.ModuleList)
             for b in getattr(module, name)]
    return found + [getattr(module, n) for n in SINGLE_BLOCKS if isinstance(getattr(module, n, None), nn.Module)]


def enable_activation_checkpointing(network: nn.Module) -> int:
    """Turn activation checkpointing on for every large block inside ``network``; returns how many blocks it
    turned on (0 when called again: it is idempotent)."""
    count = 0
    for module in list(network.modules()):
        if isinstance(module, AutoencoderKL):  # MONAI's own switch: encoder and decoder each checkpointed
            count += 0 if module.use_checkpoint else 2
            module.use_checkpoint = True
            continue
        for block in _blocks(module):
            if type(block) not in _classes.values():
                block.__class__ = _checkpointed(type(block))
                count += 1
    return count
