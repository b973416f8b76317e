"""volsynth."""
