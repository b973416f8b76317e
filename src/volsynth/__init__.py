"""volsynth: synthesise 3D CT and MR volumes with their label maps, guided by text and masks."""

__version__ = "0.1.0"
