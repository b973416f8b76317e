"""Noise schedules, samplers as functions, and guidance wrappers."""

from volsynth.sampling.guidance import classifier_free
from volsynth.sampling.samplers import build_scheduler, sample, training_target

__all__ = ["build_scheduler", "classifier_free", "sample", "training_target"]
