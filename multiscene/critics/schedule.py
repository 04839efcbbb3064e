"""When the confusion-contribution loss L_CC is on, and how strongly (seed 000 §5.1; SPEC §3.4).

The trainer owns one ``CCSchedule`` (``make_cc_schedule(cfg)``) and, every update:

1. multiplies each unscaled aux term of the critic by ``schedule.scales(global_step)[name]`` (the two key sets
   are equal: ``{"cc_confusion", "cc_contribution"}`` for sparse-dve, ``{}`` for dve and scalar);
2. after the update, calls ``schedule.observe(global_step, mean_episode_length)`` with the mean length of the
   episodes that ended during the rollout (None when none ended), and logs ``schedule.fired_step``;
3. logs ``schedule.early_collapse_warning(confusion_mean, global_step)`` when it is not None;
4. saves ``schedule.state_dict()`` with the checkpoint and restores it with ``load_state_dict`` on resume.

Schedules (``--dve.schedule``), each giving a factor f in [0, 1] with scales ``(f * k1, f * k2)``:

- ``off``: f = 0 (sparse-dve then trains as plain DVE, and the terms are still logged).
- ``pre-boost`` (class-1 games): f = min(1, step / (preboost_fraction * total_timesteps)). The seed applies
  "moderately small" coefficients from step 0 so that alpha becomes sparse over the first quarter of training;
  the linear ramp from 0 is our reading of that.
- ``post-boost`` (class-2 games): f = 0 before ``postboost_step``, 1 from it on (seed 000: after pre-training
  plain DVE, 50M steps per worker there); with ``postboost_fraction > 0`` the switch is at that fraction of
  ``total_timesteps`` instead (issue 14: the quickstart's recipe switches on at half the budget).
- ``post-boost-auto``: the seed's criterion, "once the rate of increase of the average episode length has
  declined", made into a rule (ours):

  * every update appends the mean episode length of that update (updates where no episode ended append
    nothing) to a history;
  * once the history holds at least ``2 * auto_window`` values and ``global_step >= auto_min_fraction *
    total_timesteps``, let ``last`` be the mean of the last ``auto_window`` values and ``prev`` the mean of the
    ``auto_window`` values before them;
  * if ``(last - prev) / max(prev, 1) < auto_threshold``, L_CC switches on at full strength (f = 1) for the
    rest of training, and ``fired_step`` records the step. A falling episode length also counts as flattened.
- ``spread`` (issue 14, leads 1 and 3; ours): L_CC switches on at full strength, for good, once
  ``auto_window`` consecutive calls of ``observe_spread(global_step, spread)`` have reported a ``spread`` (the
  critic's ``cluster_spread``: variance of the cluster means V_i across clusters, mean over steps) of at least
  ``spread_threshold``, and ``global_step >= auto_min_fraction * total_timesteps``; ``fired_step`` records the
  step. Consecutive, because the first Adam steps move the V_i apart for a moment before the value is fitted. The value loss moves the attention only as much as the V_i differ, so sparsity is enforced only once
  the clusters carry different values (seed 000 §4.1: "clusters must differ first"). The trainer calls
  ``observe_spread`` after each update with that update's mean ``dve/cluster_spread``.

The seed warns that L_CC switched on before the state space is explored spreads sparse assignments wrongly and
is hard to undo (all clusters but one get ~0 gradient). The library logs that risk rather than hiding it:
``early_collapse_warning`` reports, once per run, mean confusion that has collapsed near 1/N_b before a quarter
of the budget.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from multiscene.config import TrainConfig

__all__ = ["COLLAPSE_BUDGET_FRACTION", "COLLAPSE_MARGIN", "CCSchedule", "make_cc_schedule"]

COLLAPSE_BUDGET_FRACTION = 0.25
"""Warn about collapsed confusion only before this fraction of the budget (the seed's "first quarter"; ours)."""
COLLAPSE_MARGIN = 0.1
"""Collapsed means delta < 1/N_b + COLLAPSE_MARGIN * (1 - 1/N_b): within 10% of the range above one-hot (ours)."""


class CCSchedule:
    """Scales of the L_CC terms per global env step; see the module docstring for each schedule's rule."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.critic = cfg.critic
        multi = getattr(cfg, "multi", None)
        self.has_cc = cfg.critic == "sparse-dve" or (cfg.critic == "multi" and multi.env_head == "sparse-dve")
        self.dve = cfg.dve
        self.total_timesteps = cfg.total_timesteps
        self.kind = cfg.dve.schedule
        self.fired_step: int | None = None
        """post-boost-auto and spread: the global step at which L_CC switched on; None until then (and for other
        kinds)."""
        self.collapse_warned_step: int | None = None
        """The step at which ``early_collapse_warning`` last returned a message; it warns once per run."""
        self._lengths: deque[float] = deque(maxlen=2 * cfg.dve.auto_window)
        self._spread_run = 0
        """spread: number of consecutive observations at or above the threshold."""

    @property
    def postboost_start(self) -> float:
        """Post-boost: the step from which L_CC is on (``postboost_fraction * total`` when that is > 0)."""
        if self.dve.postboost_fraction > 0:
            return self.dve.postboost_fraction * self.total_timesteps
        return float(self.dve.postboost_step)

    @property
    def term_names(self) -> tuple[str, ...]:
        """The aux terms this schedule scales: both L_CC terms for sparse-dve, none otherwise."""
        return ("cc_confusion", "cc_contribution") if self.has_cc else ()

    def factor(self, global_step: int) -> float:
        """f in [0, 1]: the fraction of (k1, k2) in force at ``global_step``."""
        if self.kind == "pre-boost":
            ramp_steps = self.dve.preboost_fraction * self.total_timesteps
            return min(1.0, max(0.0, global_step / ramp_steps))
        if self.kind == "post-boost":
            return 1.0 if global_step >= self.postboost_start else 0.0
        if self.kind in ("post-boost-auto", "spread"):
            return 1.0 if self.fired_step is not None and global_step >= self.fired_step else 0.0
        return 0.0

    def scales(self, global_step: int) -> dict[str, float]:
        """{"cc_confusion": k1_eff, "cc_contribution": k2_eff} for sparse-dve; {} for critics without L_CC."""
        if not self.term_names:
            return {}
        f = self.factor(global_step)
        return {"cc_confusion": f * self.dve.k1, "cc_contribution": f * self.dve.k2}

    def observe(self, global_step: int, mean_episode_length: float | None) -> None:
        """Record one update's mean episode length (None: no episode ended); may fire post-boost-auto."""
        if self.kind != "post-boost-auto" or self.fired_step is not None or mean_episode_length is None:
            return
        self._lengths.append(float(mean_episode_length))
        window = self.dve.auto_window
        if len(self._lengths) < 2 * window:
            return
        if global_step < self.dve.auto_min_fraction * self.total_timesteps:
            return
        history = list(self._lengths)
        prev = sum(history[:window]) / window
        last = sum(history[window:]) / window
        if (last - prev) / max(prev, 1.0) < self.dve.auto_threshold:
            self.fired_step = int(global_step)

    def observe_spread(self, global_step: int, spread: float | None) -> None:
        """Record the cluster means' spread after an update (None: not measured); may fire the spread schedule."""
        if self.kind != "spread" or self.fired_step is not None or spread is None:
            return
        self._spread_run = self._spread_run + 1 if spread >= self.dve.spread_threshold else 0
        if self._spread_run >= self.dve.auto_window and global_step >= self.dve.auto_min_fraction * self.total_timesteps:
            self.fired_step = int(global_step)

    def early_collapse_warning(self, confusion_mean: float | None, global_step: int) -> str | None:
        """A message when mean confusion collapsed near 1/N_b before a quarter of the budget (SPEC §3.4).

        Only for DVE critics with N_b >= 2, and only the first time (later calls return None), so the log
        carries one clear line; ``confusion_mean`` itself is logged every update. None (no DVE metric this
        update) gives None.
        """
        num_clusters = self.dve.num_clusters
        if self.critic == "scalar" or num_clusters < 2 or self.collapse_warned_step is not None:
            return None
        if confusion_mean is None:
            return None
        if global_step >= COLLAPSE_BUDGET_FRACTION * self.total_timesteps:
            return None
        floor = 1.0 / num_clusters
        if confusion_mean >= floor + COLLAPSE_MARGIN * (1.0 - floor):
            return None
        self.collapse_warned_step = int(global_step)
        return (
            f"DVE confusion collapsed to {confusion_mean:.3f} (one-hot is {floor:.3f}) at step {global_step}, "
            f"before {COLLAPSE_BUDGET_FRACTION:.0%} of the budget: sparse assignments made before the state "
            "space is explored generalize wrongly and are hard to undo (seed 000 §4.1). Consider "
            "--dve.schedule post-boost(-auto) or smaller --dve.k1/--dve.k2."
        )

    def state_dict(self) -> dict[str, Any]:
        """Everything needed for an exact resume (the config itself is saved in config.json)."""
        return {
            "kind": self.kind,
            "fired_step": self.fired_step,
            "collapse_warned_step": self.collapse_warned_step,
            "lengths": list(self._lengths),
            "spread_run": self._spread_run,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()``; the schedule kind must match the config's."""
        if state["kind"] != self.kind:
            raise ValueError(
                f"checkpoint was written with --dve.schedule {state['kind']}, but the config says {self.kind}"
            )
        self.fired_step = None if state["fired_step"] is None else int(state["fired_step"])
        warned = state["collapse_warned_step"]
        self.collapse_warned_step = None if warned is None else int(warned)
        self._lengths.clear()
        self._lengths.extend(float(length) for length in state["lengths"])
        self._spread_run = int(state.get("spread_run", 0))  # checkpoints from before issue 14 lack it


def make_cc_schedule(cfg: TrainConfig) -> CCSchedule:
    """The L_CC schedule of ``cfg`` (``--dve.schedule``); scales are {} unless ``--critic sparse-dve``."""
    return CCSchedule(cfg)
