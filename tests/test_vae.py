"""The VAE auxiliary loss: -ELBO against hand computations, masking, gradients into the encoder, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from multiscene.auxloss.vae import VAE_TERMS, VAEAux, VAEConfig, reconstruct_frames, scales
from multiscene.config import ConfigError
from multiscene.models.encoders import ImpalaCNN

T, B, D, L = 2, 3, 5, 4


def fixed_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    obs = torch.randint(0, 256, (T, B, 64, 64, 3), generator=gen, dtype=torch.uint8)
    features = torch.rand(T, B, D, generator=gen, dtype=torch.float64)
    eps = torch.randn(T, B, L, generator=gen, dtype=torch.float64)
    return obs, features, eps


def make_vae(weight_seed: int = 1) -> VAEAux:
    torch.manual_seed(weight_seed)
    return VAEAux(D, (64, 64, 3), VAEConfig(latent_dim=L)).double()


def softplus(x: np.ndarray) -> np.ndarray:
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0.0)


def test_elbo_by_hand_with_a_constant_decoder() -> None:
    """Decoder weights zeroed, last bias b_c per channel: every logit is b_c, so by hand

    recon per frame = sum_pixels [softplus(b_c) - x * b_c]  (BCE with logits),
    kl per frame    = 0.5 * sum_l (mu^2 + exp(logvar) - 1 - logvar) with (mu, logvar) = W f + c.
    """
    vae = make_vae()
    obs, features, eps = fixed_batch()
    bias = np.array([0.3, -1.2, 2.0])
    w = np.linspace(-0.5, 0.5, 2 * L * D).reshape(2 * L, D)
    c = np.linspace(-0.2, 0.3, 2 * L)
    with torch.no_grad():
        for p in vae.parameters():
            p.zero_()
        vae.to_latent.weight.copy_(torch.as_tensor(w))
        vae.to_latent.bias.copy_(torch.as_tensor(c))
        vae.deconv[-1].bias.copy_(torch.as_tensor(bias))
    terms = vae.losses(obs, features, eps=eps)
    assert set(terms) == set(VAE_TERMS)

    x = obs.numpy().astype(np.float64) / 255.0  # [T, B, 64, 64, 3]
    recon = (softplus(bias) - x * bias).reshape(T * B, -1).sum(-1)
    latent = features.numpy().reshape(T * B, D) @ w.T + c
    mu, logvar = latent[:, :L], latent[:, L:]
    kl = 0.5 * (mu**2 + np.exp(logvar) - 1.0 - logvar).sum(-1)
    np.testing.assert_allclose(float(terms["vae_recon"].detach()), recon.mean(), rtol=1e-10)
    np.testing.assert_allclose(float(terms["vae_kl"].detach()), kl.mean(), rtol=1e-10)


@torch.no_grad()
def test_reparameterized_sample_reaches_the_decoder() -> None:
    """With a live decoder, recon equals the Bernoulli NLL of the frame under decode(mu + sigma * eps)."""
    vae = make_vae()
    obs, features, eps = fixed_batch(seed=2)
    terms = vae.losses(obs, features, eps=eps)
    with torch.no_grad():
        mu, logvar = vae.encode(features.reshape(T * B, D))
        z = mu + torch.exp(0.5 * logvar) * eps.reshape(T * B, L)
        p = torch.sigmoid(vae.decode_logits(z)).numpy()
    x = obs.numpy().reshape(T * B, 64, 64, 3).astype(np.float64) / 255.0
    nll = -(x * np.log(p) + (1 - x) * np.log1p(-p)).reshape(T * B, -1).sum(-1)
    np.testing.assert_allclose(float(terms["vae_recon"]), nll.mean(), rtol=1e-8)
    # Other noise gives another sample, hence another reconstruction loss (the noise is used).
    other = vae.losses(obs, features, eps=eps + 1.0)
    assert abs(float(other["vae_recon"]) - float(terms["vae_recon"])) > 1e-6
    torch.testing.assert_close(other["vae_kl"], terms["vae_kl"])  # KL does not depend on the sample


@torch.no_grad()
def test_mask_leaves_frames_out() -> None:
    vae = make_vae()
    obs, features, eps = fixed_batch(seed=3)
    mask = torch.zeros(T, B, dtype=torch.bool)
    mask[0, 1] = mask[1, 2] = True
    masked = vae.losses(obs, features, mask, eps=eps)
    kept = [(0, 1), (1, 2)]
    parts = [vae.losses(obs[t : t + 1, b : b + 1], features[t : t + 1, b : b + 1], eps=eps[t : t + 1, b : b + 1])
             for t, b in kept]
    for name in VAE_TERMS:
        expected = sum(float(p[name]) for p in parts) / len(parts)
        np.testing.assert_allclose(float(masked[name]), expected, rtol=1e-10)


def test_gradients_reach_the_encoder() -> None:
    torch.manual_seed(0)
    encoder = ImpalaCNN((64, 64, 3), hidden_size=16)
    vae = VAEAux(16, (64, 64, 3), VAEConfig(latent_dim=8))
    obs = torch.randint(0, 256, (2, 2, 64, 64, 3), dtype=torch.uint8)
    features = encoder(obs.reshape(4, 64, 64, 3)).reshape(2, 2, 16)
    terms = vae.losses(obs, features)
    weights = scales(VAEConfig(latent_dim=8, beta=0.5, coef=2.0))
    assert weights == {"vae_recon": 2.0, "vae_kl": 1.0}
    assert set(weights) == set(terms)
    sum(weights[k] * v for k, v in terms.items()).backward()
    grads = [p.grad for p in encoder.parameters()]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0.0
    assert float(encoder.stages[0].conv.weight.grad.abs().sum()) > 0.0  # the first conv, not only the FC


def test_reconstruct_shapes_and_range() -> None:
    torch.manual_seed(0)
    encoder = ImpalaCNN((64, 64, 3), hidden_size=16)
    vae = VAEAux(16, (64, 64, 3), VAEConfig(latent_dim=8))
    obs = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8)
    frames = reconstruct_frames(encoder, vae, obs)
    assert frames.shape == (3, 64, 64, 3) and frames.dtype == torch.uint8
    # Deterministic (decoded from mu): the same frames twice.
    torch.testing.assert_close(frames, reconstruct_frames(encoder, vae, obs))


def test_non_image_observations_name_the_flag() -> None:
    with pytest.raises(ConfigError, match="--aux"):
        VAEAux(32, (7, 7, 3), VAEConfig())
    with pytest.raises(ConfigError, match="--vae.latent-dim"):
        VAEAux(32, (64, 64, 3), VAEConfig(latent_dim=0))


def test_reconstruction_grid_from_train_and_held_out_levels(tmp_path) -> None:
    from conftest import tiny_config

    from multiscene.auxloss.vae import VAE_FRAMES_FILE, write_reconstructions

    cfg = tiny_config(str(tmp_path), env="coinrun", critic="scalar", hidden_size=16)
    torch.manual_seed(0)
    encoder = ImpalaCNN((64, 64, 3), hidden_size=16)
    vae = VAEAux(16, (64, 64, 3), VAEConfig(latent_dim=8))
    path = write_reconstructions(encoder, vae, cfg, torch.device("cpu"), tmp_path, frames=2)
    assert path == tmp_path / "eval" / VAE_FRAMES_FILE
    data = np.load(path)
    for split in ("train", "test"):
        assert data[f"{split}_frames"].shape == data[f"{split}_recon"].shape == (2, 64, 64, 3)
        assert data[f"{split}_recon"].dtype == np.uint8
        np.testing.assert_array_equal(
            data[f"{split}_recon"], reconstruct_frames(encoder, vae, torch.as_tensor(data[f"{split}_frames"])).numpy()
        )
    assert not np.array_equal(data["train_frames"], data["test_frames"])  # different levels


def test_scaled_sum_weights_each_term_and_asserts_the_names() -> None:
    from multiscene.auxloss import scaled_sum

    metrics: dict[str, torch.Tensor] = {}
    terms = {"vae_recon": torch.tensor(3.0), "vae_kl": torch.tensor(5.0)}
    total = scaled_sum(terms, {"vae_recon": 2.0, "vae_kl": 0.5}, metrics, "VAE")
    assert float(total) == 2.0 * 3.0 + 0.5 * 5.0
    assert float(metrics["losses/vae_kl"]) == 5.0
    with pytest.raises(AssertionError, match="VAE terms"):
        scaled_sum(terms, {"vae_recon": 1.0}, {}, "VAE")
    assert float(scaled_sum({}, {}, {}, "critic aux")) == 0.0
