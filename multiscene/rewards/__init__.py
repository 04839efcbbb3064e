"""Reward transforms that give a critic head something other than the env reward to learn (A2MC's VWR)."""

from __future__ import annotations

from multiscene.rewards.vwr import RunningVWR, VWRConfig, validate_vwr, variability_weighted_reward

__all__ = ["RunningVWR", "VWRConfig", "validate_vwr", "variability_weighted_reward"]
