"""multiscene: multi-scene reinforcement learning in PyTorch.

One agent trained across many levels ("scenes") of a task without being told which level it is in:
the RL² baseline, Dynamic Value Estimation and Sparse DVE, A2MC, IMPALA + VAE and DreamerV2 pre-training, on
Procgen, MiniGrid, Atari, MuJoCo and any Gymnasium env.
"""

from __future__ import annotations

__version__ = "0.2.0"

# TrainConfig is assembled from every part registered in multiscene/registry.py, which imports their modules.
# Building it when the package is first imported means any module can be imported first: a registered module
# imported on its own would otherwise start the assembly while it is itself half-initialized.
from multiscene import config as _config  # noqa: E402,F401

__all__ = ["__version__"]
