"""volsynth: synthesise 3D CT and MR volumes with their label maps, guided by text and masks.

``from volsynth import load_pipeline, GenerationRequest`` gives the Python API; those names are imported on
first use, so that ``import volsynth`` (and the command line's start) stays light.
"""

__version__ = "0.1.0"
__all__ = ["GenerationRequest", "GenerationResult", "load_pipeline"]


def __getattr__(name: str):
    """The pipeline API, imported when first asked for (PEP 562)."""
    if name in __all__:
        import volsynth.pipelines as pipelines

        return getattr(pipelines, name)
    raise AttributeError(f"module 'volsynth' has no attribute {name!r}")
