"""Pipelines: numbered recipes from prompt and/or mask to volumes; no training code here."""

from volsynth.pipelines.generate import SynthesisPipeline, SynthesisResult

__all__ = ["SynthesisPipeline", "SynthesisResult"]
