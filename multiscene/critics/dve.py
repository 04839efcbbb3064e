"""Dynamic Value Estimation (DVE) and Sparse DVE: the clustered critic and the confusion-contribution loss.

DVE (seed 001; Singh & Zheng 2020, arXiv 2005.12254; SPEC §3.2) predicts ``N_b`` cluster means ``V_i(s_t)`` and
assignment weights ``alpha_i(s_t, tau_{t-})`` (a softmax over ``N_b`` logits read from the core output) and
estimates the value as their mixture (seed 000, eq. 1)::

    V(s_t, M) ~= sum_i alpha_i(s_t, tau_{t-}) * V_i(s_t)

Two quantities describe the weights (seed 000, eq. 2; SPEC §3.3)::

    confusion      delta_t = 1 / (N_b * sum_i alpha_{t,i}^2)          in [1/N_b, 1]; 1 = uniform, 1/N_b = one-hot
    contribution   rho_i(tau) = (1/T) * sum_t delta_t * alpha_{t,i}   over one trajectory tau

Sparse DVE (seed 000, eq. 3; SPEC §3.4) adds the confusion-contribution loss to the minimized loss::

    L_CC = k1 * E_t[log delta_t] + k2 * E_tau[log sum_i rho_i(tau)^2]

The first term pushes alpha towards one-hot, the second keeps every cluster in use: for one trajectory,
uniform weights give ``sum rho^2 = 1/N_b``, collapse onto one cluster ``1/N_b^2`` and one-hot weights shared
equally by the clusters ``1/N_b^3``.

Choices that are ours (the seeds leave them open):

- Masked steps (``mask`` false) are left out of both expectations, and their alpha is replaced by the uniform
  weights before anything is computed, so NaN or Inf there cannot leak into values or gradients.
- A trajectory with no valid step has ``rho = 0`` (from ``contribution``) and is left out of
  ``E_tau``; if no trajectory or no step is valid at all, the term is ``0``.
- A trajectory is one column ``b`` of the ``[T, B]`` minibatch (default) or, with ``trajectory="episode"``, that
  column cut at every ``first`` (episode start), so one column may hold several trajectories.
- All critic Linear layers get orthogonal weights with gain 1.0 and zero bias (as CleanRL's value head); the
  seeds do not describe the initialization of the attention layer.
- ``contribution="normalized"`` (issue 14, lead 2) replaces rho_i by the normalized score
  ``p_i = rho_i / sum_j rho_j`` (seed 000 speaks of normalized contribution scores in "What are clusters made
  of") in the contribution term, ``log sum_i p_i^2``. Its value no longer carries delta: collapse onto one cluster
  gives ``log 1 = 0``, its maximum, and any use shared equally by the clusters (one-hot or uniform) gives
  ``-log N_b``, its minimum. In the paper's form, collapse (``-2 log N_b``) beats state-blind uniform weights
  (``-log N_b``), so from a state-blind start both terms push towards collapse (SPEC §3.4).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from multiscene.config import DVEConfig
from multiscene.critics.base import Critic, CriticOutput

if TYPE_CHECKING:
    from multiscene.config import TrainConfig

__all__ = [
    "CONTRIBUTIONS",
    "DVECritic",
    "SparseDVECritic",
    "attention_grad_norms",
    "attention_param_groups",
    "cc_grad_cap",
    "cc_loss",
    "cc_terms",
    "cluster_spread",
    "confusion",
    "confusion_histogram",
    "contribution",
]

CC_TERMS: tuple[str, str] = ("cc_confusion", "cc_contribution")
"""Names of the two unscaled L_CC terms; ``multiscene.critics.schedule`` gives a scale for each."""
Contribution = Literal["paper", "normalized"]
CONTRIBUTIONS: tuple[str, ...] = ("paper", "normalized")
"""Forms of the contribution term: seed 000's ``log sum_i rho_i^2`` or ``log sum_i (rho_i / sum_j rho_j)^2``."""


def confusion(alpha: torch.Tensor) -> torch.Tensor:
    """Confusion delta = 1 / (N_b * sum_i alpha_i^2) (seed 000, eq. 2).

    alpha [..., N_b] (non-negative, summing to 1 over the last dim) -> delta [...] in [1/N_b, 1].
    """
    num_clusters = alpha.shape[-1]
    return 1.0 / (num_clusters * alpha.pow(2).sum(dim=-1))


def _valid_mask(alpha: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """[T, B] boolean mask of valid steps; all true when ``mask`` is None."""
    if mask is None:
        return torch.ones(alpha.shape[:-1], dtype=torch.bool, device=alpha.device)
    assert mask.shape == alpha.shape[:-1], (
        f"mask {tuple(mask.shape)} must be alpha's [T, B] {tuple(alpha.shape[:-1])}"
    )
    return mask.to(device=alpha.device) != 0


def _sanitize(alpha: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Replace alpha at invalid steps by uniform weights (ours): masked garbage cannot produce NaN.

    ``torch.where`` selects rather than multiplies, so no gradient (not even a NaN one) flows to masked steps.
    """
    uniform = torch.full_like(alpha, 1.0 / alpha.shape[-1])
    return torch.where(valid.unsqueeze(-1), alpha, uniform)


def _mean_log_confusion(alpha: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """E_t[log delta_t] over the valid steps; 0 when none is valid. alpha [T, B, N_b], valid [T, B] -> []."""
    log_delta = torch.log(confusion(alpha))
    weight = valid.to(alpha.dtype)
    return (log_delta * weight).sum() / weight.sum().clamp(min=1.0)


def _segment_contribution(
    alpha: torch.Tensor, valid: torch.Tensor, segment: torch.Tensor, num_segments: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """rho per trajectory segment, vectorized with index_add (no loop over T).

    ``index_add`` has a deterministic CUDA implementation under ``torch.use_deterministic_algorithms``, unlike
    ``scatter_add_`` on more than one dimension.

    alpha [T, B, N_b] (sanitized), valid [T, B], segment [T, B] int64 ids in [0, num_segments)
    -> (rho [num_segments, N_b], number of valid steps per segment [num_segments]).
    """
    num_clusters = alpha.shape[-1]
    weight = valid.to(alpha.dtype)
    # [T, B, N_b]: delta_t * alpha_{t,i}, 0 at masked steps.
    weighted = (confusion(alpha) * weight).unsqueeze(-1) * alpha
    flat_segment = segment.reshape(-1)
    totals = alpha.new_zeros(num_segments, num_clusters).index_add(
        0, flat_segment, weighted.reshape(-1, num_clusters)
    )
    counts = alpha.new_zeros(num_segments).index_add(0, flat_segment, weight.reshape(-1))
    return totals / counts.clamp(min=1.0).unsqueeze(-1), counts


def contribution(alpha: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Contribution rho_i per column: the mean over valid t of delta_t * alpha_{t,i} (seed 000, eq. 2).

    alpha [T, B, N_b], mask [T, B] of valid steps (None: all valid) -> rho [B, N_b]. Each column ``b`` is one
    trajectory. A column with no valid step gets rho = 0 (ours: not NaN; ``cc_terms`` leaves it out).
    """
    assert alpha.dim() == 3, f"alpha must be [T, B, N_b], got {tuple(alpha.shape)}"
    valid = _valid_mask(alpha, mask)
    alpha = _sanitize(alpha, valid)
    weight = valid.to(alpha.dtype)
    weighted = (confusion(alpha) * weight).unsqueeze(-1) * alpha
    return weighted.sum(dim=0) / weight.sum(dim=0).clamp(min=1.0).unsqueeze(-1)


def _episode_segments(first: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Trajectory ids for ``trajectory="episode"``: each column cut at every episode start.

    first [T, B] (true where an episode starts) -> (ids [T, B] int64, number of ids). Column b owns the ids
    b * (T + 1) ... b * (T + 1) + T; the steps before the column's first ``first`` form their own trajectory.
    """
    num_steps, num_columns = first.shape
    within_column = torch.cumsum((first != 0).to(torch.int64), dim=0)  # [T, B] in [0, T]
    offset = torch.arange(num_columns, device=first.device, dtype=torch.int64) * (num_steps + 1)
    return within_column + offset, num_columns * (num_steps + 1)


def cc_terms(
    alpha: torch.Tensor,
    mask: torch.Tensor | None = None,
    first: torch.Tensor | None = None,
    trajectory: Literal["column", "episode"] = "column",
    contribution: Contribution = "paper",
) -> dict[str, torch.Tensor]:
    """The two unscaled terms of L_CC (seed 000, eq. 3; SPEC §3.4), as scalar tensors that carry gradients.

    alpha [T, B, N_b]; mask [T, B] of valid steps (None: all valid); first [T, B] episode starts, needed only for
    ``trajectory="episode"``. Returns ``{"cc_confusion": E_t[log delta_t], "cc_contribution":
    E_tau[log sum_i rho_i(tau)^2]}``. With ``trajectory="column"`` each column is one trajectory; with
    ``"episode"`` each column is cut at ``first`` into several (``first`` at masked steps still cuts). A
    trajectory without valid steps is left out of E_tau. ``contribution="normalized"`` uses
    ``E_tau[log sum_i (rho_i / sum_j rho_j)^2]`` instead (issue 14; see the module docstring).
    """
    assert alpha.dim() == 3, f"alpha must be [T, B, N_b], got {tuple(alpha.shape)}"
    valid = _valid_mask(alpha, mask)
    alpha = _sanitize(alpha, valid)

    if trajectory == "column":
        num_steps, num_columns = valid.shape
        segment = torch.arange(num_columns, device=alpha.device, dtype=torch.int64).expand(
            num_steps, num_columns
        )
        num_segments = num_columns
    elif trajectory == "episode":
        if first is None:
            raise ValueError('cc_terms(trajectory="episode") needs `first` [T, B] (episode starts).')
        assert first.shape == valid.shape, f"first {tuple(first.shape)} must be [T, B] {tuple(valid.shape)}"
        segment, num_segments = _episode_segments(first.to(alpha.device))
    else:
        raise ValueError(f'trajectory must be "column" or "episode", got {trajectory!r}')
    if contribution not in CONTRIBUTIONS:
        raise ValueError(f'contribution must be "paper" or "normalized", got {contribution!r}')

    rho, counts = _segment_contribution(alpha, valid, segment, num_segments)
    has_steps = counts > 0
    if contribution == "normalized":
        # sum_j rho_j = mean_t delta_t >= 1/N_b for a trajectory with valid steps; the clamp guards empty ones.
        rho = rho / rho.sum(dim=-1, keepdim=True).clamp(min=torch.finfo(alpha.dtype).tiny)
    # Sum rho^2 >= (sum rho)^2 / N_b = (mean delta)^2 / N_b >= 1 / N_b^3 > 0 for a trajectory with valid steps;
    # the clamp only guards the empty ones, which the weights then drop.
    log_sum_sq = torch.log(rho.pow(2).sum(dim=-1).clamp(min=torch.finfo(alpha.dtype).tiny))
    trajectory_weight = has_steps.to(alpha.dtype)
    mean_log_sum_sq = (log_sum_sq * trajectory_weight).sum() / trajectory_weight.sum().clamp(min=1.0)
    return {"cc_confusion": _mean_log_confusion(alpha, valid), "cc_contribution": mean_log_sum_sq}


def cc_loss(
    alpha: torch.Tensor,
    k1: float,
    k2: float,
    mask: torch.Tensor | None = None,
    *,
    contribution: Contribution = "paper",
) -> torch.Tensor:
    """L_CC = k1 * E_t[log delta_t] + k2 * E_tau[log sum_i rho_i^2] (seed 000, eq. 3), one trajectory per column.

    alpha [T, B, N_b], mask [T, B] of valid steps (None: all valid) -> scalar tensor, to be minimized.
    ``contribution="normalized"``: rho_i / sum_j rho_j in place of rho_i (issue 14, lead 2).
    """
    terms = cc_terms(alpha, mask, contribution=contribution)
    return k1 * terms["cc_confusion"] + k2 * terms["cc_contribution"]


def cluster_spread(cluster_values: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """How far apart the cluster means are: the variance across clusters of V_i(s_t), averaged over valid steps.

    cluster_values [T, B, N_b], mask [T, B] (None: all valid) -> scalar tensor (0 when no step is valid). The
    value loss sends the attention layer the gradient dV/dalpha_i = V_i, which differs between clusters only as
    much as the V_i do (issue 14, lead 1): while this is small, L_CC dominates the attention layer's gradient.
    Population variance (divide by N_b), in the units of the value squared.
    """
    assert cluster_values.dim() == 3, f"cluster_values must be [T, B, N_b], got {tuple(cluster_values.shape)}"
    valid = _valid_mask(cluster_values, mask)
    weight = valid.to(cluster_values.dtype)
    per_step = cluster_values.var(dim=-1, unbiased=False)
    per_step = torch.where(valid, per_step, torch.zeros_like(per_step))  # masked garbage (NaN) stays out
    return (per_step * weight).sum() / weight.sum().clamp(min=1.0)


def attention_grad_norms(attention: nn.Module, losses: dict[str, torch.Tensor]) -> dict[str, float]:
    """L2 norm of each loss's gradient on the parameters of ``attention`` (the layer that makes alpha).

    losses: name -> scalar tensor whose graph reaches ``attention``; the graph is kept (``retain_graph``), so the
    caller can still call ``backward`` on their sum. A loss that does not reach the layer has norm 0. Issue 14,
    lead 1: compare the value loss's gradient with each L_CC term's, because Adam's per-parameter normalization
    makes the size of the total gradient, and with it k1 and k2, matter little once L_CC dominates it.
    """
    params = [p for p in attention.parameters() if p.requires_grad]
    norms: dict[str, float] = {}
    for name, loss in losses.items():
        if not loss.requires_grad:
            norms[name] = 0.0
            continue
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        squares = [g.detach().float().pow(2).sum() for g in grads if g is not None]
        norms[name] = float(torch.stack(squares).sum().sqrt()) if squares else 0.0
    return norms


def attention_param_groups(model: nn.Module, critic: nn.Module, lr: float, attention_lr_scale: float) -> list[dict]:
    """Optimizer parameter groups: the DVE attention layer at ``lr * attention_lr_scale``, the rest at ``lr``.

    ``critic`` must be a ``DVECritic`` inside ``model``; for other critics (no ``attention`` attribute) or a scale
    of 1 this is one group with every parameter. Issue 14, lead 1: a separate learning rate for the layer that
    L_CC acts on.

    Each group carries ``lr_scale`` (1 or ``attention_lr_scale``): a loop that anneals the learning rate sets
    ``group["lr"] = lr_now * group["lr_scale"]``.
    """
    attention = getattr(critic, "attention", None)
    if attention is None or attention_lr_scale == 1.0:
        return [{"params": list(model.parameters()), "lr": lr, "lr_scale": 1.0}]
    attention_ids = {id(p) for p in attention.parameters()}
    rest = [p for p in model.parameters() if id(p) not in attention_ids]
    return [
        {"params": rest, "lr": lr, "lr_scale": 1.0},
        {"params": list(attention.parameters()), "lr": lr * attention_lr_scale, "lr_scale": attention_lr_scale},
    ]


def cc_grad_cap(value_norm: float, cc_norm: float, ratio: float) -> float:
    """Factor in [0, 1] that scales L_CC so its gradient norm on the attention layer is at most ``ratio`` times
    the value loss's (``--dve.cc-grad-ratio``; issue 14, lead 1). ``cc_norm``: the norm of L_CC's gradient as
    it would enter the loss; ``ratio <= 0`` (off) or ``cc_norm == 0`` give 1."""
    if ratio <= 0 or cc_norm <= 0:
        return 1.0
    return min(1.0, ratio * value_norm / cc_norm)


@torch.no_grad()
def confusion_histogram(alpha: torch.Tensor, mask: torch.Tensor | None = None, bins: int = 10) -> list[int]:
    """Counts of delta over the valid steps in ``bins`` equal bins spanning [1/N_b, 1] (SPEC §3.3).

    alpha [..., N_b], mask [...] of valid steps (None: all valid) -> ``bins`` counts, lowest delta (most
    one-hot) first. Values outside the range by rounding go to the end bins. With N_b = 1 delta is always 1 and
    every step is counted in the last bin.
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    delta = confusion(alpha.float())
    if mask is not None:
        assert mask.shape == delta.shape, f"mask {tuple(mask.shape)} must be alpha's {tuple(delta.shape)}"
        delta = delta[mask.to(delta.device) != 0]
    delta = delta.reshape(-1)
    low = 1.0 / alpha.shape[-1]
    if low >= 1.0:
        index = torch.full_like(delta, bins - 1, dtype=torch.int64)
    else:
        index = torch.floor((delta - low) / (1.0 - low) * bins).to(torch.int64).clamp(0, bins - 1)
    return [int(count) for count in torch.bincount(index, minlength=bins).tolist()]


def _orthogonal_linear(in_features: int, out_features: int, gain: float) -> nn.Linear:
    """A Linear layer initialized as CleanRL's ``layer_init``: orthogonal weights, zero bias."""
    layer = nn.Linear(in_features, out_features)
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.constant_(layer.bias, 0.0)
    return layer


class DVECritic(Critic):
    """DVE critic (SPEC §3.2), and with ``sparse=True`` the Sparse DVE critic that adds L_CC (SPEC §3.4).

    One value head, ``"value"``: V = sum_i alpha_i * V_i. ``forward`` returns extras ``attention_logits``,
    ``alpha`` and ``cluster_values``, each [T, B, N_b]. The value loss stays the trainer's usual (clipped) MSE
    on V; DVE adds no loss of its own, Sparse DVE adds the two unscaled L_CC terms of ``aux_losses``.
    """

    head_names: tuple[str, ...] = ("value",)
    config_group = ("dve", DVEConfig)
    sparse_default = False

    @classmethod
    def from_config(cls, cfg: TrainConfig, core_dim: int, encoder_dim: int) -> DVECritic:
        return cls(core_dim, encoder_dim, cfg.dve, sparse=cls.sparse_default)  # type: ignore[attr-defined]

    def __init__(self, core_dim: int, encoder_dim: int, cfg: DVEConfig, sparse: bool) -> None:
        super().__init__()
        if cfg.num_clusters < 1:
            raise ValueError(f"DVECritic needs num_clusters >= 1, got {cfg.num_clusters}")
        self.cfg = cfg
        self.sparse = sparse
        self.num_clusters = cfg.num_clusters
        self.cluster_input = cfg.cluster_input
        # alpha reads the trajectory so far (core output); V_i reads the core output by default, as the seeds
        # derive both from the joint latent, or the per-frame encoder output (SPEC §3.2).
        self.attention = _orthogonal_linear(core_dim, cfg.num_clusters, gain=1.0)
        cluster_dim = core_dim if cfg.cluster_input == "core" else encoder_dim
        self.cluster_means = _orthogonal_linear(cluster_dim, cfg.num_clusters, gain=1.0)

    def forward(self, core_out: torch.Tensor, encoder_out: torch.Tensor) -> CriticOutput:
        """core_out [T, B, D_core], encoder_out [T, B, D_enc] -> values [T, B, 1] and extras [T, B, N_b]."""
        assert core_out.dim() == 3, f"core_out must be [T, B, D_core], got {tuple(core_out.shape)}"
        logits = self.attention(core_out if self.cfg.attention_trunk_grad else core_out.detach())
        alpha = torch.softmax(logits, dim=-1)
        if self.cluster_input == "core":
            cluster_values = self.cluster_means(core_out)
        else:
            assert encoder_out.shape[:2] == core_out.shape[:2], (
                f"encoder_out {tuple(encoder_out.shape)} and core_out {tuple(core_out.shape)} must share [T, B]"
            )
            cluster_values = self.cluster_means(encoder_out)
        value = (alpha * cluster_values).sum(dim=-1, keepdim=True)  # seed 000, eq. 1
        return CriticOutput(
            values=value,
            extras={"attention_logits": logits, "alpha": alpha, "cluster_values": cluster_values},
        )

    def aux_losses(
        self, out: CriticOutput, mask: torch.Tensor, first: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Sparse DVE: the unscaled L_CC terms ``cc_confusion`` and ``cc_contribution``; plain DVE: none.

        out from ``forward``; mask [T, B] of valid steps; first [T, B] episode starts, required when
        ``cfg.trajectory == "episode"`` (an extra keyword beyond ``Critic.aux_losses``). The trainer multiplies
        each term by the scale of ``CCSchedule.scales`` and adds it to the minimized loss.
        """
        if not self.sparse:
            return {}
        if self.cfg.trajectory == "episode" and first is None:
            raise ValueError("DVECritic.aux_losses needs `first` with --dve.trajectory episode.")
        return cc_terms(
            out.extras["alpha"], mask, first=first, trajectory=self.cfg.trajectory,
            contribution=self.cfg.contribution,
        )

    @torch.no_grad()
    def diagnostics(
        self, out: CriticOutput, mask: torch.Tensor, first: torch.Tensor | None = None
    ) -> dict[str, float]:
        """Floats to log every update (SPEC §3.3; issue 3), over the valid steps of ``mask`` [T, B].

        ``confusion_mean``; ``contribution/i`` (rho_i averaged over the columns with valid steps);
        ``argmax_share/i`` (share of valid steps whose largest alpha is cluster i); ``cluster_value/i`` (mean
        V_i); ``cluster_spread`` (variance of V_i across clusters, mean over steps; issue 14); ``cc_confusion``
        and ``cc_contribution`` (the unscaled L_CC terms in the configured form, logged for plain DVE too).
        The L_CC terms use ``cfg.trajectory`` when ``first`` is given, one trajectory per column otherwise.
        The histogram of delta is not a float: see ``confusion_histogram``.
        """
        alpha = out.extras["alpha"].float()
        valid = _valid_mask(alpha, mask)
        alpha = _sanitize(alpha, valid)
        weight = valid.to(alpha.dtype)
        num_valid = weight.sum().clamp(min=1.0)

        metrics: dict[str, float] = {}
        metrics["confusion_mean"] = float((confusion(alpha) * weight).sum() / num_valid)
        metrics["cluster_spread"] = float(cluster_spread(out.extras["cluster_values"].float(), valid))

        rho = contribution(alpha, valid)
        column_has_steps = (weight.sum(dim=0) > 0).to(alpha.dtype)
        mean_rho = (rho * column_has_steps.unsqueeze(-1)).sum(dim=0) / column_has_steps.sum().clamp(min=1.0)

        winner = torch.nn.functional.one_hot(alpha.argmax(dim=-1), self.num_clusters).to(alpha.dtype)
        argmax_share = (winner * weight.unsqueeze(-1)).sum(dim=(0, 1)) / num_valid
        cluster_values = out.extras["cluster_values"].float()
        cluster_values = torch.where(valid.unsqueeze(-1), cluster_values, torch.zeros_like(cluster_values))
        mean_cluster_value = cluster_values.sum(dim=(0, 1)) / num_valid

        for i in range(self.num_clusters):
            metrics[f"contribution/{i}"] = float(mean_rho[i])
            metrics[f"argmax_share/{i}"] = float(argmax_share[i])
            metrics[f"cluster_value/{i}"] = float(mean_cluster_value[i])

        trajectory: Literal["column", "episode"] = self.cfg.trajectory if first is not None else "column"
        terms = cc_terms(alpha, valid, first=first, trajectory=trajectory, contribution=self.cfg.contribution)
        metrics.update({name: float(value) for name, value in terms.items()})
        return metrics


class SparseDVECritic(DVECritic):
    """``--critic sparse-dve``: the DVE critic with the L_CC terms on (seed 000); options in ``--dve.*``."""

    sparse_default = True
