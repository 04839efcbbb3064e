"""Moved to multiscene/algos/onpolicy/ppo.py."""

from multiscene.algos.onpolicy.ppo import *  # noqa: F401,F403
from multiscene.algos.onpolicy.ppo import explained_variance, masked_mean, normalize_advantages, ppo_loss  # noqa: F401
