"""Noise schedules, samplers as functions, and guidance wrappers."""

from volsynth.sampling.guidance import classifier_free, dual_guidance
from volsynth.sampling.samplers import build_scheduler, sample, training_target

__all__ = ["build_scheduler", "classifier_free", "dual_guidance", "sample", "training_target"]
