"""The VAE auxiliary loss on the encoder (seed 002 §3 and Fig. 2; SPEC §5).

The agent's per-frame encoder output (IMPALA-CNN -> FC 256, the "features") also feeds a Linear layer to
``2 * latent_dim`` numbers, the mean and log-variance of a Gaussian latent ``z`` (reparameterized,
``z = mu + exp(logvar / 2) * eps``, seed 002 eq. 2). A decoder maps ``z`` back to the frame::

    z [N, L] -> FC -> 16x16x16 -> ReLU -> ConvT 32 (3x3, stride 2) -> ReLU -> ConvT 16 (3x3, stride 2) -> ReLU
      -> ConvT 3 (3x3, stride 1) -> sigmoid -> [N, 64, 64, 3]

(the channel widths 32 and 16 and the strides are seed 002's Fig. 2; the last 3-channel layer is the output
layer of the TensorFlow CVAE tutorial the seed says it followed, its footnote 2). The loss is -ELBO (seed 002
eq. 5) with the prior p(z) = N(0, I)::

    vae_recon = E_frames[ sum_pixels BCE(decoder logits, frame / 255) ]       (Bernoulli likelihood per pixel)
    vae_kl    = E_frames[ 0.5 * sum_l (mu_l^2 + exp(logvar_l) - 1 - logvar_l) ]

Both are means over the valid frames and sums over pixels / latent dims, so ``vae_recon + vae_kl`` is -ELBO
in nats per frame (the quantity of seed 002 Fig. 5). The loop multiplies the two terms by ``scales(cfg)``
(``coef`` and ``coef * beta``) and asserts the key sets are equal, as for L_CC (STYLE.md).

What reads what (seed 002 §3, checked): the RL side is unchanged. The IMPALA network's FC 256 output goes,
with the previous reward and action, into the LSTM; the VAE's ``FC latent_dim * 2`` branches off the encoder.
So the policy and value heads read the encoder features, not z: the VAE shapes the encoder only through its
gradient. That is also the simplest choice (no change to the agent).

Choices that are ours: the Bernoulli likelihood on continuous [0, 1] targets (the seed treats its decoder
output as Bernoulli, following Kingma & Welling's appendix C.1 and the TF tutorial's sigmoid cross-entropy);
reconstructing RGB 64x64x3 as the issue asks, where the seed's text may feed the VAE a grayscale frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from multiscene.config import ConfigError

if TYPE_CHECKING:  # config.py may import VAEConfig from here for its --vae.* group: no import cycle
    from multiscene.config import TrainConfig

__all__ = [
    "FRAME_SHAPE",
    "VAE_FRAMES_FILE",
    "VAE_TERMS",
    "VAEAux",
    "VAEConfig",
    "check_vae_config",
    "check_vae_observations",
    "reconstruct_frames",
    "scales",
    "write_reconstructions",
]

FRAME_SHAPE: tuple[int, int, int] = (64, 64, 3)
"""The only observation shape the decoder produces (Procgen frames, seed 002 §2.4)."""
VAE_TERMS: tuple[str, str] = ("vae_recon", "vae_kl")
"""Names of the two unscaled terms returned by ``VAEAux.losses``; ``scales(cfg)`` has the same keys."""


@dataclass(frozen=True)
class VAEConfig:
    """The VAE auxiliary loss (``--aux vae``; ``--vae.*``; seed 002, SPEC §5)."""

    latent_dim: int = 64
    """Size of the latent z. Default 64: seed 002 Table A-1, "Dim of latent space"."""
    beta: float = 1.0
    """Weight of the KL term relative to reconstruction. Default 1.0: seed 002 optimizes the plain ELBO
    (eq. 5, no beta); other values give a beta-VAE."""
    coef: float = 1.0
    """Weight of -ELBO in the total loss. Default 1.0: seed 002 §3 adds the VAE loss and the IMPALA loss into
    one objective without a weight (Table A-1 lists none)."""

    def validate(self, cfg: TrainConfig) -> None:
        check_vae_config(self)


def term_scales(cfg: VAEConfig) -> dict[str, float]:
    """The loop's scale per term of ``VAEAux.losses``: ``{"vae_recon": coef, "vae_kl": coef * beta}``."""
    return {"vae_recon": cfg.coef, "vae_kl": cfg.coef * cfg.beta}


scales = term_scales  # the name the IMPALA loop and the tests use


def check_vae_config(cfg: VAEConfig) -> None:
    """ConfigError naming the flag for out-of-range values."""
    if cfg.latent_dim <= 0:
        raise ConfigError(f"--vae.latent-dim must be positive, got {cfg.latent_dim}.")
    if cfg.beta < 0 or cfg.coef < 0:
        raise ConfigError(f"--vae.beta and --vae.coef must be >= 0, got beta={cfg.beta}, coef={cfg.coef}.")


def check_vae_observations(obs_shape: tuple[int, ...]) -> None:
    """ConfigError naming ``--aux`` unless the env gives 64x64x3 frames (call before creating a run)."""
    if tuple(obs_shape) != FRAME_SHAPE:
        raise ConfigError(
            f"--aux vae needs 64x64x3 image observations (Procgen, e.g. --env coinrun): its decoder "
            f"reconstructs 64x64 RGB frames, but the env gives observations of shape {tuple(obs_shape)}. "
            "Use --aux none for this env."
        )


class VAEAux(nn.Module):
    """Latent head on the encoder features plus the frame decoder; see the module docstring."""

    term_names: tuple[str, str] = VAE_TERMS
    config_group = ("vae", VAEConfig)

    @classmethod
    def from_config(cls, cfg: TrainConfig, obs_shape: tuple[int, ...], feature_dim: int) -> VAEAux:
        """``--aux vae`` for any algorithm: built by the agent on its encoder's features."""
        return cls(feature_dim, obs_shape, cfg.vae)  # type: ignore[attr-defined]

    def scales(self, cfg: TrainConfig) -> dict[str, float]:  # type: ignore[no-redef]
        """The loop's scale per term, the keys of ``losses`` (the module's ``scales`` of ``cfg.vae``)."""
        return term_scales(cfg.vae)  # type: ignore[attr-defined]

    def __init__(self, feature_dim: int, obs_shape: tuple[int, ...], cfg: VAEConfig) -> None:
        super().__init__()
        check_vae_config(cfg)
        check_vae_observations(obs_shape)
        self.latent_dim = cfg.latent_dim
        self.to_latent = nn.Linear(feature_dim, 2 * cfg.latent_dim)
        self.decoder_fc = nn.Linear(cfg.latent_dim, 16 * 16 * 16)
        self.deconv = nn.Sequential(
            nn.ReLU(),
            nn.ConvTranspose2d(16, 32, kernel_size=3, stride=2, padding=1, output_padding=1),  # 16 -> 32 px
            nn.ReLU(),
            nn.ConvTranspose2d(32, 16, kernel_size=3, stride=2, padding=1, output_padding=1),  # 32 -> 64 px
            nn.ReLU(),
            nn.ConvTranspose2d(16, 3, kernel_size=3, stride=1, padding=1),  # logits of the 3 channels
        )

    def encode(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features [N, D] -> (mu, logvar), each [N, latent_dim]."""
        mu, logvar = self.to_latent(features).chunk(2, dim=-1)
        return mu, logvar

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """z [N, latent_dim] -> Bernoulli logits [N, 64, 64, 3] (channels last, like the observations)."""
        x = self.decoder_fc(z).reshape(-1, 16, 16, 16)
        return self.deconv(x).permute(0, 2, 3, 1)

    def losses(
        self,
        obs: torch.Tensor,
        features: torch.Tensor,
        mask: torch.Tensor | None = None,
        eps: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Unscaled -ELBO terms over the valid frames.

        obs: [T, B, 64, 64, 3] uint8 frames; features: [T, B, D] encoder output for them (gradients flow back
        into the encoder); mask: [T, B] valid steps (None: all); eps: [T, B, latent_dim] standard-normal noise
        of the reparameterization (None: drawn here). Returns {"vae_recon": [], "vae_kl": []} (scalars).
        """
        T, B = features.shape[:2]
        assert obs.shape == (T, B, *FRAME_SHAPE), (tuple(obs.shape), (T, B, *FRAME_SHAPE))
        mu, logvar = self.encode(features.reshape(T * B, -1))
        if eps is None:
            eps = torch.randn_like(mu)
        else:
            eps = eps.reshape(T * B, self.latent_dim).to(mu)
        z = mu + torch.exp(0.5 * logvar) * eps
        logits = self.decode_logits(z)
        target = obs.reshape(T * B, *FRAME_SHAPE).to(logits.dtype) / 255.0
        recon = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).sum(-1)  # [N]
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)  # [N]
        if mask is None:
            weight = torch.ones(T * B, dtype=recon.dtype, device=recon.device)
        else:
            assert mask.shape == (T, B), (tuple(mask.shape), (T, B))
            weight = mask.reshape(-1).to(recon)
        count = weight.sum().clamp(min=1.0)
        return {"vae_recon": (recon * weight).sum() / count, "vae_kl": (kl * weight).sum() / count}

    @torch.no_grad()
    def reconstruct(self, features: torch.Tensor) -> torch.Tensor:
        """features [N, D] -> reconstructed frames [N, 64, 64, 3] uint8, decoded from z = mu (no noise)."""
        mu, _ = self.encode(features)
        return (torch.sigmoid(self.decode_logits(mu)) * 255.0).round().to(torch.uint8)


def reconstruct_frames(encoder: nn.Module, vae: VAEAux, obs: torch.Tensor) -> torch.Tensor:
    """obs [N, 64, 64, 3] uint8 -> reconstructions [N, 64, 64, 3] uint8 (the report's frame grid, Fig. 3)."""
    with torch.no_grad():
        return vae.reconstruct(encoder(obs))


VAE_FRAMES_FILE = "vae_frames.npz"
"""``eval/vae_frames.npz``: ``<split>_frames`` and ``<split>_recon`` [N, 64, 64, 3] uint8 for split in train,
test (held-out levels): the report's grid of frames next to their reconstructions (seed 002 Fig. 3)."""


def write_reconstructions(
    encoder: nn.Module, vae: VAEAux, cfg: TrainConfig, device: torch.device, run_dir: Path, frames: int = 8
) -> Path:
    """Frames from training and held-out levels, and their reconstructions, to ``eval/vae_frames.npz``.

    The frames come from ``frames`` envs of each split after a few uniformly random steps (ours: a cheap way
    to show more than the start screen; any policy would do, the VAE does not depend on it).
    """
    import numpy as np

    from multiscene.envs import make_env
    from multiscene.trainer import env_spec

    arrays: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(cfg.seed)
    for split in ("train", "test"):
        envs = make_env(env_spec(cfg, split, frames, seed_offset=103))
        try:
            step = envs.reset()
            for _ in range(int(rng.integers(5, 30))):
                step = envs.step(rng.integers(0, envs.num_actions, envs.num_envs).astype(np.int64))
        finally:
            envs.close()
        obs = torch.as_tensor(step.obs)
        was_training = encoder.training
        encoder.eval()
        recon = reconstruct_frames(encoder, vae, obs.to(device)).cpu()
        encoder.train(was_training)
        arrays[f"{split}_frames"] = obs.numpy()
        arrays[f"{split}_recon"] = recon.numpy()
    path = run_dir / "eval" / VAE_FRAMES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path
