"""Per-frame encoders: observations [N, *obs_shape] -> features [N, output_dim].

Images are uint8 [N, H, W, C] (scaled inside the encoder, so rollouts store uint8 only); vectors are float32
[N, D]. ``make_encoder`` picks one by the observation's shape and dtype; multiscene/registry.py's ``ENCODERS`` names them (for an
``--encoder NAME`` override).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from multiscene.config import ConfigError


def _orthogonal(layer: nn.Module, gain: float = math.sqrt(2)) -> nn.Module:
    """Orthogonal weights with ``gain``, zero bias: CleanRL's ``layer_init`` for its Atari and MuJoCo agents
    (ppo_atari.py, ppo_continuous_action.py), following openai-baselines."""
    nn.init.orthogonal_(layer.weight, gain)  # type: ignore[arg-type]
    nn.init.zeros_(layer.bias)  # type: ignore[arg-type]
    return layer


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1(torch.relu(self.conv0(torch.relu(x))))


class ConvSequence(nn.Module):
    """IMPALA stage: conv 3x3 -> maxpool 3/2 -> 2 residual blocks (Espeholt et al. 2018)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.res0 = ResidualBlock(out_channels)
        self.res1 = ResidualBlock(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res1(self.res0(self.pool(self.conv(x))))


class ImpalaCNN(nn.Module):
    """IMPALA-CNN for Procgen (SPEC §2): stages of 16, 32, 32 channels, flatten -> ReLU -> Linear -> ReLU.

    Input uint8 [N, 64, 64, 3], scaled to [0, 1] here so rollouts store uint8 only.
    """

    def __init__(self, obs_shape: tuple[int, ...], hidden_size: int = 256, channels: tuple[int, ...] = (16, 32, 32)):
        super().__init__()
        h, w, c = obs_shape
        stages = []
        for out_channels in channels:
            stages.append(ConvSequence(c, out_channels))
            c = out_channels
            h, w = (h + 1) // 2, (w + 1) // 2
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(c * h * w, hidden_size)
        self.output_dim = hidden_size

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.permute(0, 3, 1, 2).to(self.fc.weight.dtype).div_(255.0)
        x = self.stages(x)
        return torch.relu(self.fc(torch.relu(torch.flatten(x, 1))))


class MiniGridCNN(nn.Module):
    """Small conv encoder for MiniGrid's symbolic 7x7x3 view (object, colour, state indices).

    The indices are small integers (< 11), so they are scaled by 1/10 rather than 1/255.
    """

    def __init__(self, obs_shape: tuple[int, ...], hidden_size: int = 256):
        super().__init__()
        h, w, c = obs_shape
        self.convs = nn.Sequential(
            nn.Conv2d(c, 16, kernel_size=2),
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=2),
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=2),
            nn.ReLU(),
        )
        self.fc = nn.Linear(64 * (h - 3) * (w - 3), hidden_size)
        self.output_dim = hidden_size

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.permute(0, 3, 1, 2).to(self.fc.weight.dtype).mul_(0.1)
        return torch.relu(self.fc(torch.flatten(self.convs(x), 1)))


class NatureCNN(nn.Module):
    """The DQN encoder (Mnih et al. 2015, Methods): conv 32 8x8/4 -> conv 64 4x4/2 -> conv 64 3x3/1 -> Linear,
    ReLU after each; Nature's Linear has 512 units (pass ``hidden_size=512`` for the paper's network).

    Input uint8 [N, 84, 84, C] (C stacked grayscale frames), scaled by 1/255 here. Output [N, hidden_size].
    """

    def __init__(self, obs_shape: tuple[int, ...], hidden_size: int = 512) -> None:
        super().__init__()
        h, w, c = obs_shape
        self.convs = nn.Sequential(
            _orthogonal(nn.Conv2d(c, 32, kernel_size=8, stride=4)),
            nn.ReLU(),
            _orthogonal(nn.Conv2d(32, 64, kernel_size=4, stride=2)),
            nn.ReLU(),
            _orthogonal(nn.Conv2d(64, 64, kernel_size=3, stride=1)),
            nn.ReLU(),
        )
        for kernel, stride in ((8, 4), (4, 2), (3, 1)):
            h, w = (h - kernel) // stride + 1, (w - kernel) // stride + 1
        if h < 1 or w < 1:
            raise ValueError(f"NatureCNN needs images of at least 36x36 pixels, got {obs_shape}")
        self.fc = _orthogonal(nn.Linear(64 * h * w, hidden_size))
        self.output_dim = hidden_size

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.permute(0, 3, 1, 2).to(self.fc.weight.dtype).div_(255.0)
        return torch.relu(self.fc(torch.flatten(self.convs(x), 1)))


class MLPEncoder(nn.Module):
    """``num_layers`` x ``width`` tanh layers for float vector observations [N, D] -> [N, width].

    The default 2 x 64 tanh is CleanRL ppo_continuous_action's actor/critic torso (after openai-baselines'
    ``mlp``); there the actor and critic each have their own, here the heads share one. No normalization here:
    the agent normalizes observations before the encoder.
    """

    def __init__(self, obs_shape: tuple[int, ...], width: int = 64, num_layers: int = 2) -> None:
        super().__init__()
        if len(obs_shape) != 1:
            raise ValueError(f"MLPEncoder takes vector observations [D], got shape {obs_shape}")
        if width <= 0 or num_layers <= 0:
            raise ValueError(f"MLPEncoder needs width > 0 and num_layers > 0, got {width}, {num_layers}")
        layers: list[nn.Module] = []
        size = obs_shape[0]
        for _ in range(num_layers):
            layers += [_orthogonal(nn.Linear(size, width)), nn.Tanh()]
            size = width
        self.layers = nn.Sequential(*layers)
        self.output_dim = width

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        # ``self.layers`` run one by one, the tanh as a function: what Sequential does, three module calls fewer
        # per forward (the acting forward of one MuJoCo env is mostly such fixed costs).
        modules = self.layers._modules.values()
        x = obs.to(next(iter(modules)).weight.dtype)  # type: ignore[union-attr]
        for module in modules:
            x = torch.tanh(x) if isinstance(module, nn.Tanh) else module(x)
        return x


_ATARI_SIZE = 84
_MIN_IMPALA_SIZE = 32
_MIN_GRID_SIZE = 4  # MiniGridCNN's three 2x2 convs shrink each side by 3


def encoder_name(obs_shape: tuple[int, ...], obs_dtype: type[np.generic] | np.dtype = np.uint8) -> str:
    """The registered encoder name ``make_encoder`` picks: 1-D -> ``mlp``; uint8 84x84xC -> ``nature`` (Atari);
    uint8 images of >= 32 px a side -> ``impala`` (Procgen's 64x64x3); uint8 grids of 4..31 cells a side ->
    ``minigrid`` (MiniGrid's 7x7x3). ConfigError naming ``--env`` for anything else."""
    dtype = np.dtype(obs_dtype)
    if len(obs_shape) == 1 and obs_shape[0] > 0:
        return "mlp"
    if len(obs_shape) == 3 and dtype == np.uint8:
        h, w, _ = obs_shape
        if h == w == _ATARI_SIZE:
            return "nature"
        if h >= _MIN_IMPALA_SIZE and w >= _MIN_IMPALA_SIZE:
            return "impala"
        if _MIN_GRID_SIZE <= h < _MIN_IMPALA_SIZE and _MIN_GRID_SIZE <= w < _MIN_IMPALA_SIZE:
            return "minigrid"
    raise ConfigError(
        f"--env: no encoder takes observations of shape {tuple(obs_shape)} and dtype {dtype}. Supported: "
        "float vectors [D] (mlp), uint8 images HxWxC of 84x84 (nature), >= 32 px a side (impala), or 4..31 "
        "cells a side (minigrid)."
    )


_IMAGE_ENCODERS = ("impala", "nature", "minigrid")


def make_encoder(
    obs_shape: tuple[int, ...], hidden_size: int, obs_dtype: type[np.generic] | np.dtype = np.uint8,
    name: str = "auto",
) -> nn.Module:
    """The encoder registered as ``name`` (``--encoder``; multiscene/registry.py), or with ``auto`` the one
    ``encoder_name`` picks for these observations, with output width ``hidden_size``. An encoder that cannot
    read these observations (an image encoder on vectors, the MLP on images) is a ConfigError naming both
    flags."""
    from multiscene import registry

    auto = encoder_name(obs_shape, obs_dtype)
    if name == "auto":
        name = auto
    image_obs = len(obs_shape) == 3 and np.dtype(obs_dtype) == np.uint8
    if (name in _IMAGE_ENCODERS) != image_obs:
        raise ConfigError(
            f"--encoder {name} cannot read the observations of --env (shape {tuple(obs_shape)}, dtype "
            f"{np.dtype(obs_dtype)}): {'image' if name in _IMAGE_ENCODERS else 'vector'} encoder, "
            f"{'image' if image_obs else 'vector'} observations. Allowed here: auto, {auto}"
            f"{', ' + ', '.join(n for n in _IMAGE_ENCODERS if n != auto) if image_obs else ''}."
        )
    return registry.load("encoder", name)(tuple(obs_shape), hidden_size)
