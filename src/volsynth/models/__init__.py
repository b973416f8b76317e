"""Networks (thin wrappers over MONAI), their size registry and the checkpoint format."""

from volsynth.models.conditioned import ConditionedUNet
from volsynth.models.registry import SIZES, build_network, network_config

__all__ = ["SIZES", "ConditionedUNet", "build_network", "network_config"]
