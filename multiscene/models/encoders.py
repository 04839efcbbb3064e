"""Per-frame encoders: uint8 observations [N, H, W, C] -> features [N, hidden_size]."""

from __future__ import annotations

import torch
from torch import nn


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


def make_encoder(obs_shape: tuple[int, ...], hidden_size: int) -> nn.Module:
    """IMPALA-CNN for image observations (>= 32 px), the small conv for MiniGrid-sized symbolic grids."""
    if obs_shape[0] >= 32:
        return ImpalaCNN(obs_shape, hidden_size)
    return MiniGridCNN(obs_shape, hidden_size)
