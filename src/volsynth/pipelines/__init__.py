"""Pipelines: numbered recipes from prompt and/or mask to volumes; no training code here."""

from volsynth.pipelines.auto import load_pipeline
from volsynth.pipelines.base import GenerationRequest, GenerationResult, Pipeline

__all__ = ["GenerationRequest", "GenerationResult", "Pipeline", "load_pipeline"]
