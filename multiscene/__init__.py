"""multiscene: multi-scene reinforcement learning in PyTorch.

One agent trained across many levels ("scenes") of a task without being told which level it is in:
recurrent PPO (the RL² baseline), Dynamic Value Estimation and Sparse DVE, on Procgen and MiniGrid.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
