"""Auxiliary losses trained jointly with the RL loss (``--aux``).

Each returns a dict of named, unscaled terms; the loop multiplies each by its scale and asserts the two key
sets are equal (STYLE.md; DreamerV3 does exactly this; the critics' L_CC terms follow the same rule).
``vae``: seed 002's VAE on the encoder (SPEC §5).
"""

from __future__ import annotations

import torch

from multiscene.auxloss.vae import (
    VAE_TERMS,
    VAEAux,
    VAEConfig,
    reconstruct_frames,
    scales,
    write_reconstructions,
)

__all__ = [
    "VAE_TERMS",
    "VAEAux",
    "VAEConfig",
    "reconstruct_frames",
    "scaled_sum",
    "scales",
    "write_reconstructions",
]


def scaled_sum(
    terms: dict[str, torch.Tensor], term_scales: dict[str, float], metrics: dict[str, torch.Tensor], what: str
) -> torch.Tensor:
    """sum_name term_scales[name] * terms[name], after asserting both have the same names; each unscaled term
    is also recorded as ``metrics["losses/<name>"]`` (detached). ``what`` names the source in the assert.

    Returns a scalar tensor (0 when there are no terms).
    """
    assert set(terms) == set(term_scales), f"{what} terms {sorted(terms)} != scales {sorted(term_scales)}"
    total = torch.zeros(())
    for name, term in terms.items():
        total = total.to(term.device) + term_scales[name] * term
        metrics[f"losses/{name}"] = term.detach()
    return total
