"""Auxiliary losses trained jointly with the RL loss (``--aux``).

Each returns a dict of named, unscaled terms; the loop multiplies each by its scale and asserts the two key
sets are equal (STYLE.md; as the critics' L_CC terms). ``vae``: seed 002's VAE on the encoder (SPEC §5).
"""

from __future__ import annotations

from multiscene.auxloss.vae import VAE_TERMS, VAEAux, VAEConfig, reconstruct_frames, scales

__all__ = ["VAE_TERMS", "VAEAux", "VAEConfig", "reconstruct_frames", "scales"]
