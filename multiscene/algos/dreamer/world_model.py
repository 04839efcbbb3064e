"""DreamerV2's world model: encoder, RSSM, image decoder, reward and discount heads, KL balancing.

Three observation paths:
- images ``[64, 64, C]`` uint8 (Mario: C = 1 grayscale; Procgen: C = 3): a 4-layer conv encoder (kernels 4,
  stride 2, depth d, 2d, 4d, 8d) and a transposed-conv decoder (kernels 5, 5, 6, 6) as in DreamerV2's
  ``nets.py`` ConvEncoder/ConvDecoder; pixels are scaled to [-0.5, 0.5];
- symbol grids (MiniGrid's 7x7x3 uint8 codes of object, colour and state, each < ``symbol_classes``): every
  code one-hot encoded for the MLP encoder, and the decoder predicts those one-hot vectors (ours). The codes
  are categories, not magnitudes. Fed as raw integers (the first version), the world model learned the
  MiniGrid-Empty-5x5 views slowly or not at all: trained on 3000 random steps, its image loss stayed at the
  mean view's (0.5 x summed variance, 44.4) for 1200 train steps with the posterior collapsed onto the prior
  (KL 0.02 nats), and did the same with the KL term off; one-hot, the same run reached 0.11 of the mean view's
  loss (0.65 of 5.75) in 1000 steps. Measured in docs/dreamer.md ("Learning");
- anything else (vectors, other arrays): an MLP encoder and decoder on the flattened values, fed as they are.

The loss (``world_model_loss``) returns named terms averaged over [T, B]; the total is their weighted sum with
the ``--dreamer.*-scale`` weights (DreamerV2 ``agent.py`` WorldModel.loss). Image and reward terms are the
negative log-likelihoods of unit-variance Gaussians without the constant (0.5 * squared error, summed over
pixels); the discount term is the Bernoulli NLL of the continuation flag.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from multiscene.algos.dreamer import DreamerConfig
from multiscene.algos.dreamer.rssm import RSSM, RSSMState, categorical_kl


def mlp(in_size: int, out_size: int, units: int, layers: int) -> nn.Sequential:
    """``layers`` hidden Linear+ELU layers of ``units``, then a Linear to ``out_size`` (DreamerV2 heads)."""
    parts: list[nn.Module] = []
    size = in_size
    for _ in range(layers):
        parts += [nn.Linear(size, units), nn.ELU()]
        size = units
    parts.append(nn.Linear(size, out_size))
    return nn.Sequential(*parts)


def is_image_obs(obs_shape: tuple[int, ...]) -> bool:
    """The conv path takes 64x64 frames with 1 or 3 channels (DreamerV2's image size)."""
    return len(obs_shape) == 3 and obs_shape[:2] == (64, 64) and obs_shape[2] in (1, 3)


class ConvEncoder(nn.Module):
    """uint8 [N, 64, 64, C] -> [N, 8d * 2 * 2] (4 convs, kernel 4, stride 2, ELU)."""

    def __init__(self, channels: int, depth: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        size = channels
        for i in range(4):
            layers += [nn.Conv2d(size, depth * 2**i, kernel_size=4, stride=2), nn.ELU()]
            size = depth * 2**i
        self.net = nn.Sequential(*layers, nn.Flatten())
        self.out_size = depth * 8 * 2 * 2

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.float().permute(0, 3, 1, 2) / 255.0 - 0.5
        return self.net(x)


class ConvDecoder(nn.Module):
    """features [N, F] -> mean frame [N, 64, 64, C] in the encoder's [-0.5, 0.5] scale (kernels 5, 5, 6, 6)."""

    def __init__(self, feature_size: int, channels: int, depth: int) -> None:
        super().__init__()
        self.depth = depth
        self.fc = nn.Linear(feature_size, 32 * depth)
        self.net = nn.Sequential(
            nn.ConvTranspose2d(32 * depth, 4 * depth, 5, stride=2), nn.ELU(),  # 1 -> 5
            nn.ConvTranspose2d(4 * depth, 2 * depth, 5, stride=2), nn.ELU(),  # 5 -> 13
            nn.ConvTranspose2d(2 * depth, depth, 6, stride=2), nn.ELU(),  # 13 -> 30
            nn.ConvTranspose2d(depth, channels, 6, stride=2),  # 30 -> 64
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.fc(features)[:, :, None, None]
        return self.net(x).permute(0, 2, 3, 1)


MINIGRID_SYMBOL_CLASSES = 11
"""Codes per cell channel of MiniGrid's symbolic view: 11 object types (``minigrid.core.constants.OBJECT_TO_IDX``,
unseen..agent), more than its 6 colours and 3 door states, so one count serves all three channels."""


def symbol_classes_for(obs_shape: tuple[int, ...], obs_dtype: object) -> int | None:
    """The ``symbol_classes`` of an env's observations: MiniGrid's for a small uint8 grid ``(H, W, 3)`` (at most
    32 x 32 cells, and not a 64x64 frame, which takes the conv path), else None (values fed as they are)."""
    if np.dtype(obs_dtype) != np.uint8 or is_image_obs(obs_shape):  # type: ignore[call-overload]
        return None
    if len(obs_shape) == 3 and obs_shape[2] == 3 and max(obs_shape[:2]) <= 32:
        return MINIGRID_SYMBOL_CLASSES
    return None


def one_hot_symbols(obs: torch.Tensor, classes: int) -> torch.Tensor:
    """uint8 codes [..., *shape] -> float one-hot [..., *shape, classes]; a code >= ``classes`` is an error."""
    codes = obs.long()
    if codes.numel() and int(codes.max()) >= classes:
        raise ValueError(f"observation code {int(codes.max())} is outside the {classes} symbol classes")
    return F.one_hot(codes, classes).float()


class VectorEncoder(nn.Module):
    """uint8/float [N, *shape] -> [N, units] by an MLP on the flattened values, or on their one-hot codes
    where ``symbol_classes`` is given (symbol grids, see the module docstring)."""

    def __init__(
        self, obs_shape: tuple[int, ...], units: int, layers: int, symbol_classes: int | None = None
    ) -> None:
        super().__init__()
        size = symbol_classes or 1
        for s in obs_shape:
            size *= s
        self.symbol_classes = symbol_classes
        self.net = nn.Sequential(mlp(size, units, units, max(layers - 1, 0)), nn.ELU())
        self.out_size = units

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.float() if self.symbol_classes is None else one_hot_symbols(obs, self.symbol_classes)
        return self.net(x.flatten(1))


class VectorDecoder(nn.Module):
    """features [N, F] -> [N, *shape] mean values, or [N, *shape, classes] means of the one-hot codes."""

    def __init__(
        self, feature_size: int, obs_shape: tuple[int, ...], units: int, layers: int,
        symbol_classes: int | None = None,
    ) -> None:
        super().__init__()
        self.out_shape = obs_shape if symbol_classes is None else (*obs_shape, symbol_classes)
        size = 1
        for s in self.out_shape:
            size *= s
        self.net = mlp(feature_size, size, units, layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).reshape(-1, *self.out_shape)


class WorldModelOutput(NamedTuple):
    """What a world-model train step leaves for the behavior step."""

    total: torch.Tensor
    """Scalar weighted loss."""
    terms: dict[str, torch.Tensor]
    """Unweighted scalar terms: kl, image, reward, discount."""
    metrics: dict[str, float]
    """Diagnostics: prior/posterior entropies, raw (unclipped) KL."""
    posterior: RSSMState
    """[T, B, ...] posterior states (imagination starts from them)."""
    image_nll: torch.Tensor
    """[T, B] detached per-step image loss (per-level image-loss curves, seed 003 Fig. 4)."""


class WorldModel(nn.Module):
    """Encoder -> RSSM -> heads. ``action_size``: number of discrete actions or the continuous dimension;
    ``symbol_classes``: observations are a grid of integer codes below it (MiniGrid), one-hot encoded."""

    def __init__(
        self, obs_shape: tuple[int, ...], action_size: int, cfg: DreamerConfig, symbol_classes: int | None = None
    ) -> None:
        super().__init__()
        w = cfg.widths
        self.obs_shape = obs_shape
        self.image = is_image_obs(obs_shape)
        self.symbol_classes = None if self.image else symbol_classes
        if self.image:
            self.encoder: nn.Module = ConvEncoder(obs_shape[2], w.cnn_depth)
            embed = self.encoder.out_size
        else:
            self.encoder = VectorEncoder(obs_shape, w.mlp_units, w.mlp_layers, self.symbol_classes)
            embed = self.encoder.out_size
        self.rssm = RSSM(embed, action_size, w.deter, w.hidden, w.stoch, w.classes)
        feat = self.rssm.feature_size
        if self.image:
            self.decoder: nn.Module = ConvDecoder(feat, obs_shape[2], w.cnn_depth)
        else:
            self.decoder = VectorDecoder(feat, obs_shape, w.mlp_units, w.mlp_layers, self.symbol_classes)
        self.reward_head = mlp(feat, 1, w.mlp_units, w.mlp_layers)
        self.discount_head = mlp(feat, 1, w.mlp_units, w.mlp_layers)

    def obs_target(self, obs: torch.Tensor) -> torch.Tensor:
        """The decoder's target for ``obs`` [N, *shape]: in the encoder's input scale, or one-hot codes
        [N, *shape, classes] for symbol grids."""
        if self.image:
            return obs.float() / 255.0 - 0.5
        if self.symbol_classes is not None:
            return one_hot_symbols(obs, self.symbol_classes)
        return obs.float()

    def embed(self, obs: torch.Tensor) -> torch.Tensor:
        """[T, B, *obs] -> [T, B, E]."""
        T, B = obs.shape[:2]
        return self.encoder(obs.reshape(T * B, *obs.shape[2:])).reshape(T, B, -1)

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        """[..., F] -> [..., *obs_shape] mean reconstruction in the target scale ([..., *obs_shape, classes]
        for symbol grids)."""
        lead = features.shape[:-1]
        out = self.decoder(features.reshape(-1, features.shape[-1]))
        return out.reshape(*lead, *out.shape[1:])

    def continuation_logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.discount_head(features).squeeze(-1)

    def predicted_reward(self, features: torch.Tensor) -> torch.Tensor:
        return self.reward_head(features).squeeze(-1)

    def loss(
        self, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor, discount: torch.Tensor,
        first: torch.Tensor, cfg: DreamerConfig, generator: torch.Generator | None = None,
        valid: torch.Tensor | None = None,
    ) -> WorldModelOutput:
        """Batch [T, B, ...] from the replay: ``obs`` uint8, ``action`` [T, B, A] (a_{t-1}), ``reward`` [T, B]
        (transformed), ``discount`` [T, B] (0 at terminal and absorbing steps), ``first`` [T, B] bool;
        ``valid`` [T, B] bool (None: all) selects the steps every term averages over."""
        post, prior = self.rssm.observe(self.embed(obs), action, first, generator=generator)
        feat = RSSM.features(post)
        recon = self.decode(feat)
        dims = tuple(range(2, recon.dim()))
        image_nll = 0.5 * (recon - self.obs_target(obs)).pow(2).sum(dim=dims)
        reward_nll = 0.5 * (self.predicted_reward(feat) - reward).pow(2)
        discount_nll = F.binary_cross_entropy_with_logits(self.continuation_logits(feat), discount, reduction="none")
        weight = torch.ones_like(reward) if valid is None else valid.to(reward.dtype)
        weight = weight / weight.sum().clamp(min=1.0)
        kl, kl_metrics = kl_balance_loss(post.logits, prior.logits, cfg.kl_balance, cfg.kl_free, weight)
        terms = {
            "kl": kl,
            "image": (image_nll * weight).sum(),
            "reward": (reward_nll * weight).sum(),
            "discount": (discount_nll * weight).sum(),
        }
        scales = {"kl": cfg.kl_scale, "image": cfg.image_scale, "reward": cfg.reward_scale,
                  "discount": cfg.discount_scale}
        assert set(terms) == set(scales), (sorted(terms), sorted(scales))  # STYLE: named terms, one scale each
        total = sum(scales[k] * v for k, v in terms.items())
        assert isinstance(total, torch.Tensor)
        with torch.no_grad():
            kl_metrics["prior_entropy"] = float(_entropy(prior.logits).mean())
            kl_metrics["post_entropy"] = float(_entropy(post.logits).mean())
        return WorldModelOutput(total, terms, kl_metrics, post, image_nll.detach())


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(dim=(-2, -1))


def kl_balance_loss(
    post_logits: torch.Tensor, prior_logits: torch.Tensor, balance: float, free: float,
    weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """DreamerV2 KL balancing (§2, Algorithm 2) with free nats averaged over the batch (``free_avg``).

        loss = balance * max(mean KL(sg(post) || prior), free) + (1 - balance) * max(mean KL(post || sg(prior)), free)

    The first side trains the prior towards the posterior, the second regularizes the posterior; both have
    the value KL(post || prior), only the gradients differ. Logits are [..., S, K]; means run over [...], or
    are weighted sums with ``weight`` [...] (summing to 1) where some steps do not count.
    """
    lhs_all = categorical_kl(post_logits.detach(), prior_logits)
    rhs_all = categorical_kl(post_logits, prior_logits.detach())
    if weight is None:
        lhs, rhs = lhs_all.mean(), rhs_all.mean()
    else:
        lhs, rhs = (lhs_all * weight).sum(), (rhs_all * weight).sum()
    free_t = torch.tensor(free, dtype=lhs.dtype, device=lhs.device)
    loss = balance * torch.maximum(lhs, free_t) + (1.0 - balance) * torch.maximum(rhs, free_t)
    return loss, {"kl_value": float(lhs.detach())}
