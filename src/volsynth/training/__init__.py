"""One training engine and the per-stage losses (autoencoder, diffusion)."""
