"""The recurrent state-space model of DreamerV2 (Hafner et al. 2020, §2 and Fig. 2; seed 003 eq. 1).

State at step t: a deterministic GRU state ``h_t`` [B, D] and a stochastic state ``z_t`` of S categorical latents
with K classes each, kept as one-hot samples [B, S, K] (S = K = 32 in the paper).

    recurrent model       h_t = GRU(h_{t-1}, [z_{t-1}, a_{t-1}])
    posterior             z_t ~ q(z_t | h_t, e_t)          e_t = encoder(x_t)
    prior                 z^_t ~ p(z^_t | h_t)

Samples are straight-through (DreamerV2 §2, "straight-through gradients"): the forward value is the one-hot
sample, the gradient is that of the class probabilities.

Conventions: ``action[t]`` is the action that led INTO step t (zero at an episode start), so ``observe`` reads
``(a_{t-1}, x_t)`` pairs from one index. Where ``first[t]`` is true, the carried state and the action are reset
to zeros before step t (a new episode; DreamerV2 ``rssm.observe`` does the same with ``is_first``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F


class RSSMState(NamedTuple):
    """One step of the model state; all [B, ...] (or [T, B, ...] when stacked over time)."""

    deter: torch.Tensor
    """[B, D] GRU state h."""
    stoch: torch.Tensor
    """[B, S, K] one-hot (straight-through) sample of z."""
    logits: torch.Tensor
    """[B, S, K] logits of the distribution z was drawn from."""


def straight_through_sample(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A one-hot sample of ``Categorical(logits)`` over the last dim whose gradient is the probabilities'.

    Forward: exactly the one-hot sample. Backward: d(out)/d(logits) = d(softmax(logits))/d(logits)
    (Bengio et al. 2013; DreamerV2 §2: ``sample + probs - stop_grad(probs)``).
    """
    probs = torch.softmax(logits, dim=-1)
    # Gumbel-max draws exactly from the categorical and costs a third of torch.multinomial on the CPU
    # (measured on 5120 x 32 logits; the exponential draws dominated the imagination's non-matmul time).
    uniform = torch.rand(logits.shape, generator=generator, device=logits.device).clamp_(min=1e-20)
    index = (logits.detach() - torch.log(-torch.log(uniform))).argmax(-1)
    one_hot = F.one_hot(index, probs.shape[-1]).to(probs.dtype)
    return one_hot + probs - probs.detach()


def categorical_kl(lhs_logits: torch.Tensor, rhs_logits: torch.Tensor) -> torch.Tensor:
    """KL(lhs || rhs) of S independent categoricals [..., S, K], summed over the S latents -> [...]."""
    lhs_log = torch.log_softmax(lhs_logits, dim=-1)
    rhs_log = torch.log_softmax(rhs_logits, dim=-1)
    return (lhs_log.exp() * (lhs_log - rhs_log)).sum(dim=(-2, -1))


class RSSM(nn.Module):
    """GRU + categorical latents. ``embed_size`` is the encoder's output width; actions are one-hot or
    continuous vectors of ``action_size``."""

    def __init__(self, embed_size: int, action_size: int, deter: int, hidden: int, stoch: int, classes: int) -> None:
        super().__init__()
        self.deter_size, self.stoch, self.classes = deter, stoch, classes
        self.action_size = action_size
        # DreamerV2 uses its own layer-normed GRU cell; torch's GRUCell is the plain one (our simplification).
        self.img_in = nn.Sequential(nn.Linear(stoch * classes + action_size, hidden), nn.ELU())
        self.gru = nn.GRUCell(hidden, deter)
        self.img_out = nn.Sequential(nn.Linear(deter, hidden), nn.ELU(), nn.Linear(hidden, stoch * classes))
        self.obs_out = nn.Sequential(nn.Linear(deter + embed_size, hidden), nn.ELU(), nn.Linear(hidden, stoch * classes))

    @property
    def feature_size(self) -> int:
        """Width of ``features``: D + S * K."""
        return self.deter_size + self.stoch * self.classes

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> RSSMState:
        """Zeros (DreamerV2 starts every episode from a zero state)."""
        deter = torch.zeros(batch, self.deter_size, device=device)
        stoch = torch.zeros(batch, self.stoch, self.classes, device=device)
        return RSSMState(deter, stoch, torch.zeros_like(stoch))

    @staticmethod
    def features(state: RSSMState) -> torch.Tensor:
        """[..., D + S*K]: h and the flattened z, what every head and the actor-critic read."""
        return torch.cat([state.deter, state.stoch.flatten(-2)], dim=-1)

    def img_step(self, prev: RSSMState, action: torch.Tensor, generator: torch.Generator | None = None) -> RSSMState:
        """Prior step: h_t from (h_{t-1}, z_{t-1}, a_{t-1}), then z^_t ~ p(. | h_t). ``action`` [B, A]."""
        x = self.img_in(torch.cat([prev.stoch.flatten(-2), action], dim=-1))
        deter = self.gru(x, prev.deter)
        logits = self.img_out(deter).unflatten(-1, (self.stoch, self.classes))
        return RSSMState(deter, straight_through_sample(logits, generator), logits)

    def obs_step(
        self, prev: RSSMState, action: torch.Tensor, embed: torch.Tensor, first: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[RSSMState, RSSMState]:
        """One filtering step -> (posterior, prior) at t. ``first`` [B] bool resets state and action first."""
        keep = (~first).to(action.dtype)[:, None]
        prev = RSSMState(prev.deter * keep, prev.stoch * keep[..., None], prev.logits * keep[..., None])
        prior = self.img_step(prev, action * keep, generator)
        logits = self.obs_out(torch.cat([prior.deter, embed], dim=-1)).unflatten(-1, (self.stoch, self.classes))
        post = RSSMState(prior.deter, straight_through_sample(logits, generator), logits)
        return post, prior

    def observe(
        self, embed: torch.Tensor, action: torch.Tensor, first: torch.Tensor, state: RSSMState | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[RSSMState, RSSMState]:
        """Filter a sequence: ``embed`` [T, B, E], ``action`` [T, B, A] (a_{t-1}), ``first`` [T, B] ->
        (posterior, prior), each an RSSMState of [T, B, ...] tensors."""
        T, B = embed.shape[:2]
        assert action.shape[:2] == (T, B) and first.shape == (T, B), (embed.shape, action.shape, first.shape)
        state = state if state is not None else self.initial_state(B, embed.device)
        posts, priors = [], []
        for t in range(T):
            state, prior = self.obs_step(state, action[t], embed[t], first[t], generator)
            posts.append(state)
            priors.append(prior)
        return _stack(posts), _stack(priors)

    def imagine(self, actions: torch.Tensor, state: RSSMState, generator: torch.Generator | None = None) -> RSSMState:
        """Open-loop prior rollout for given ``actions`` [T, B, A] from ``state`` -> [T, B, ...] states."""
        priors = []
        for t in range(actions.shape[0]):
            state = self.img_step(state, actions[t], generator)
            priors.append(state)
        return _stack(priors)


def _stack(states: list[RSSMState]) -> RSSMState:
    return RSSMState(*(torch.stack(parts) for parts in zip(*states)))


def flatten_time(state: RSSMState) -> RSSMState:
    """[T, B, ...] -> [T * B, ...] (imagination starts from every posterior state of a batch)."""
    return RSSMState(*(x.reshape(-1, *x.shape[2:]) for x in state))
