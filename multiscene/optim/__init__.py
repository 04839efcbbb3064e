"""Optimizers that torch.optim lacks: K-FAC for ACKTR (issue 10, item 4)."""

from __future__ import annotations

from multiscene.optim.kfac import KFAC, is_coverable

__all__ = ["KFAC", "is_coverable"]
