"""MAISI (NVIDIA's NV-Generate-CT): the published network configs, MONAI's networks built from them, strict import
of the published weights into a volsynth model folder."""
