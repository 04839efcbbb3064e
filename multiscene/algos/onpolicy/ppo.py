"""PPO (Schulman et al. 2017): the clipped-surrogate loss as a pure function returning ``(total, metrics)``
(PureJaxRL style), and the update: epochs x minibatches of whole environment sequences (SPEC §2)."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch
from torch.distributions import Distribution

from multiscene.algos.onpolicy.base import (
    Advantages,
    DeviceRollout,
    OnPolicyAlgorithm,
    Snapshot,
    UpdateResult,
    add_aux_terms,
    as_single_steps,
    backward_and_clip,
    critic_diagnostics,
)

if TYPE_CHECKING:
    from multiscene.algos.onpolicy.rollout import Rollout
    from multiscene.config import TrainConfig
    from multiscene.models.agent import Agent
    from multiscene.models.distributions import DiagGaussian


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return x.mean()
    m = mask.to(x.dtype)
    while m.dim() < x.dim():
        m = m.unsqueeze(-1)
    m = m.expand_as(x)
    return (x * m).sum() / m.sum().clamp_min(1.0)


def normalize_advantages(adv: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(adv - mean) / (std + 1e-8); under torchrun the mean and std are the global minibatch's, the union of
    every rank's share (issue 15), and in one process exactly the local ones."""
    from multiscene.scale import distributed

    if distributed.is_distributed():
        mean, var = distributed.global_moments(adv, mask)
    else:
        mean = masked_mean(adv, mask)
        var = masked_mean((adv - mean) ** 2, mask)
    return (adv - mean) / (var.sqrt() + 1e-8)


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip_coef: float | None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """0.5 * squared error summed over heads [T, B, H] (SPEC §3.5), averaged over valid steps; clipped around
    ``old_values`` when ``clip_coef`` is given (PPO's value clipping)."""
    if clip_coef is not None:
        clipped = old_values + (values - old_values).clamp(-clip_coef, clip_coef)
        v_err = torch.max((values - returns) ** 2, (clipped - returns) ** 2)
    else:
        v_err = (values - returns) ** 2
    return 0.5 * masked_mean(v_err.sum(dim=-1), mask)


def ppo_loss(
    dist: Distribution | DiagGaussian,
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
    policy_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped-surrogate PPO loss.

    dist: the policy's action distribution over [T, B]; actions [T, B] (or [T, B, A]); old_logprobs,
    advantages [T, B] (advantages already combined over heads); values, old_values, returns [T, B, H]. The
    value loss is summed over heads (SPEC §3.5) and averaged over valid steps. ``policy_mask`` [T, B] leaves
    steps out of the policy and entropy terms only (hot-wired steps, seed 004 §5; the value loss keeps them).
    Returns (total loss, metrics) with metrics as detached scalar tensors.
    """
    pmask = mask if policy_mask is None else (policy_mask if mask is None else policy_mask & mask)
    logprobs = dist.log_prob(actions)
    with contextlib.nullcontext() if ent_coef else torch.no_grad():  # no graph for a term weighted 0
        entropy = dist.entropy()
    log_ratio = logprobs - old_logprobs
    ratio = log_ratio.exp()
    if norm_adv:
        advantages = normalize_advantages(advantages, pmask)
    pg_loss = masked_mean(torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip_coef, 1 + clip_coef)), pmask)
    v_loss = value_loss(values, old_values, returns, clip_coef if clip_vloss else None, mask)
    entropy_loss = masked_mean(entropy, pmask)
    total = pg_loss - ent_coef * entropy_loss + vf_coef * v_loss
    with torch.no_grad():
        approx_kl = masked_mean((ratio - 1) - log_ratio, pmask)
        clipfrac = masked_mean(((ratio - 1.0).abs() > clip_coef).float(), pmask)
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


class PPO(OnPolicyAlgorithm):
    """``--algo ppo``: Adam, GAE(gamma, lambda), clipped surrogate; options are the flat CleanRL flags."""

    name = "ppo"

    def update(
        self,
        agent: Agent,
        optimizer: torch.optim.Optimizer,
        rollout: Rollout,
        adv: Advantages,
        aux_scales: dict[str, float],
        cfg: TrainConfig,
        device: torch.device,
    ) -> UpdateResult:
        """Epochs x minibatches of whole env sequences. A non-finite loss or gradient anywhere restores the
        parameters and optimizer from before the update and reports the update as skipped (issue #6).

        Under torchrun each rank holds its share of every minibatch: the ranks agree on skipping, average
        their gradients before clipping, and agree on the early stop of ``--target-kl`` (issue 15)."""
        from multiscene.scale import distributed
        if cfg.minibatch_by == "step":
            rollout, adv = as_single_steps(rollout, adv)
        B = rollout.first.shape[1]
        snapshot = Snapshot(agent, optimizer)
        sums: dict[str, float] = {}
        count = 0
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if cfg.bf16 else contextlib.nullcontext()
        stop_early = False
        inputs = DeviceRollout.of(rollout, device)
        for _epoch in range(cfg.update_epochs):
            perm = torch.randperm(B)
            for mb in perm.chunk(cfg.num_minibatches):
                with autocast:
                    out = inputs.forward(agent, mb)
                loss, metrics = ppo_loss(
                    agent.distribution(out.logits.float()), rollout.actions[:, mb].to(device),
                    rollout.logprobs[:, mb].to(device), adv.policy[:, mb].to(device), out.values.float(),
                    rollout.values[:, mb].to(device), adv.returns[:, mb].to(device),
                    clip_coef=cfg.clip_coef, clip_vloss=cfg.clip_vloss, ent_coef=cfg.ent_coef, vf_coef=cfg.vf_coef,
                    norm_adv=cfg.norm_adv,
                    policy_mask=None if rollout.policy_mask is None else rollout.policy_mask[:, mb].to(device),
                )
                first = inputs.first[:, mb]
                loss, critic_out = add_aux_terms(loss, metrics, agent, out, inputs.obs[:, mb], first, aux_scales)
                bad, grad_norm = backward_and_clip(agent, optimizer, loss, metrics, cfg)
                if bad is not None:
                    snapshot.restore()
                    return UpdateResult({}, skipped=True, bad_term=bad)
                optimizer.step()
                metrics["losses/grad_norm"] = grad_norm.detach()  # type: ignore[union-attr]
                metrics.update(critic_diagnostics(agent, critic_out, first))
                # One host transfer for every metric (each float(v) is one): the same float32 values.
                for k, v in zip(metrics, torch.stack([v.reshape(()) for v in metrics.values()]).tolist()):
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
                if cfg.target_kl is not None and distributed.agree(float(metrics["losses/approx_kl"]) > cfg.target_kl):
                    stop_early = True
                    break
            if stop_early:
                break
        return UpdateResult({k: v / count for k, v in sums.items()}, skipped=False, bad_term=None)
