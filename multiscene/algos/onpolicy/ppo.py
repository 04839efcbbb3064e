"""PPO losses as pure functions returning ``(total, metrics)`` (PureJaxRL style; SPEC §2)."""

from __future__ import annotations

import torch
from torch.distributions import Categorical


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return x.mean()
    m = mask.to(x.dtype)
    while m.dim() < x.dim():
        m = m.unsqueeze(-1)
    m = m.expand_as(x)
    return (x * m).sum() / m.sum().clamp_min(1.0)


def normalize_advantages(adv: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    mean = masked_mean(adv, mask)
    var = masked_mean((adv - mean) ** 2, mask)
    return (adv - mean) / (var.sqrt() + 1e-8)


def ppo_loss(
    logits: torch.Tensor,
    actions: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    *,
    clip_coef: float,
    clip_vloss: bool,
    ent_coef: float,
    vf_coef: float,
    norm_adv: bool,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped-surrogate PPO loss.

    logits [T, B, A]; actions, old_logprobs, advantages [T, B] (advantages already combined over heads);
    values, old_values, returns [T, B, H]. The value loss is summed over heads (SPEC §3.5) and averaged over
    valid steps. Returns (total loss, metrics) with metrics as detached scalar tensors.
    """
    dist = Categorical(logits=logits)
    logprobs = dist.log_prob(actions)
    entropy = dist.entropy()
    log_ratio = logprobs - old_logprobs
    ratio = log_ratio.exp()
    if norm_adv:
        advantages = normalize_advantages(advantages, mask)
    pg_loss = masked_mean(torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip_coef, 1 + clip_coef)), mask)
    if clip_vloss:
        clipped = old_values + (values - old_values).clamp(-clip_coef, clip_coef)
        v_err = torch.max((values - returns) ** 2, (clipped - returns) ** 2)
    else:
        v_err = (values - returns) ** 2
    v_loss = 0.5 * masked_mean(v_err.sum(dim=-1), mask)
    entropy_loss = masked_mean(entropy, mask)
    total = pg_loss - ent_coef * entropy_loss + vf_coef * v_loss
    with torch.no_grad():
        approx_kl = masked_mean((ratio - 1) - log_ratio, mask)
        clipfrac = masked_mean(((ratio - 1.0).abs() > clip_coef).float(), mask)
    metrics = {
        "losses/policy_loss": pg_loss.detach(),
        "losses/value_loss": v_loss.detach(),
        "losses/entropy": entropy_loss.detach(),
        "losses/approx_kl": approx_kl,
        "losses/clipfrac": clipfrac,
    }
    return total, metrics


def explained_variance(pred: torch.Tensor, target: torch.Tensor) -> float:
    """1 - Var[target - pred] / Var[target]; nan when the target has no variance."""
    var = target.var()
    if var.item() == 0:
        return float("nan")
    return float(1.0 - (target - pred).var() / var)
