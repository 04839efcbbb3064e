"""DVE, Sparse DVE and the L_CC schedules against numbers computed by hand (SPEC §3.2-§3.4; issue 3)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytest
import torch

from multiscene.config import ConfigError, DVEConfig, TrainConfig, validate
from multiscene.critics import (
    CCSchedule,
    DVECritic,
    ScalarCritic,
    make_cc_schedule,
    make_critic,
)
from multiscene.critics.base import CriticOutput
from multiscene.critics.dve import (
    attention_grad_norms,
    attention_param_groups,
    cc_grad_cap,
    cc_loss,
    cc_terms,
    cluster_spread,
    confusion,
    confusion_histogram,
    contribution,
)

LOG3 = math.log(3.0)


def one_hot_alpha(clusters: list[list[int]], num_clusters: int = 3) -> torch.Tensor:
    """clusters[b][t] -> alpha [T, B, N_b], one-hot on the given cluster."""
    index = torch.tensor(clusters).T  # [T, B]
    return torch.nn.functional.one_hot(index, num_clusters).float()


def mixed_alpha() -> torch.Tensor:
    """The mixed case, [T=2, B=2, N_b=3].

    Column 0: alpha = (1/2, 1/4, 1/4) then (0, 1/2, 1/2).
      sum alpha^2 = 3/8 -> delta = 1 / (3 * 3/8) = 8/9;  sum alpha^2 = 1/2 -> delta = 2/3.
      rho = ((8/9 * 1/2 + 0) / 2, (8/9 * 1/4 + 2/3 * 1/2) / 2, same) = (2/9, 5/18, 5/18)
      sum rho^2 = 4/81 + 2 * 25/324 = 66/324 = 11/54.
    Column 1: uniform, delta = 1, rho = (1/3, 1/3, 1/3), sum rho^2 = 1/3.
    cc_confusion = (log 8/9 + log 2/3 + 0 + 0) / 4;  cc_contribution = (log 11/54 + log 1/3) / 2.
    """
    column0 = torch.tensor([[0.5, 0.25, 0.25], [0.0, 0.5, 0.5]])
    column1 = torch.full((2, 3), 1.0 / 3.0)
    return torch.stack([column0, column1], dim=1)


# --- confusion, contribution, L_CC by hand --------------------------------------------------------------------


def test_uniform_weights() -> None:
    alpha = torch.full((4, 2, 3), 1.0 / 3.0)
    torch.testing.assert_close(confusion(alpha), torch.ones(4, 2))
    torch.testing.assert_close(contribution(alpha), torch.full((2, 3), 1.0 / 3.0))
    terms = cc_terms(alpha)
    assert terms["cc_confusion"].item() == pytest.approx(0.0, abs=1e-6)
    assert terms["cc_contribution"].item() == pytest.approx(-LOG3)  # sum rho^2 = 1/N_b
    assert cc_loss(alpha, k1=0.5, k2=2.0).item() == pytest.approx(-2.0 * LOG3)


def test_one_hot_collapsed_on_one_cluster() -> None:
    alpha = one_hot_alpha([[0, 0, 0], [0, 0, 0]])
    torch.testing.assert_close(confusion(alpha), torch.full((3, 2), 1.0 / 3.0))
    torch.testing.assert_close(contribution(alpha), torch.tensor([[1 / 3, 0.0, 0.0], [1 / 3, 0.0, 0.0]]))
    terms = cc_terms(alpha)
    assert terms["cc_confusion"].item() == pytest.approx(-LOG3)
    assert terms["cc_contribution"].item() == pytest.approx(-2.0 * LOG3)  # sum rho^2 = 1/N_b^2
    assert cc_loss(alpha, k1=1.0, k2=1.0).item() == pytest.approx(-3.0 * LOG3)


def test_one_hot_balanced_over_clusters() -> None:
    alpha = one_hot_alpha([[0, 1, 2], [2, 0, 1]])
    torch.testing.assert_close(contribution(alpha), torch.full((2, 3), 1.0 / 9.0))
    terms = cc_terms(alpha)
    assert terms["cc_confusion"].item() == pytest.approx(-LOG3)
    assert terms["cc_contribution"].item() == pytest.approx(-3.0 * LOG3)  # sum rho^2 = 1/N_b^3
    assert cc_loss(alpha, k1=0.1, k2=0.2).item() == pytest.approx(0.1 * -LOG3 + 0.2 * -3.0 * LOG3)


def test_mixed_case() -> None:
    alpha = mixed_alpha()
    torch.testing.assert_close(confusion(alpha), torch.tensor([[8 / 9, 1.0], [2 / 3, 1.0]]))
    torch.testing.assert_close(
        contribution(alpha), torch.tensor([[2 / 9, 5 / 18, 5 / 18], [1 / 3, 1 / 3, 1 / 3]])
    )
    terms = cc_terms(alpha)
    expected_confusion = (math.log(8 / 9) + math.log(2 / 3)) / 4
    expected_contribution = (math.log(11 / 54) + math.log(1 / 3)) / 2
    assert terms["cc_confusion"].item() == pytest.approx(expected_confusion)
    assert terms["cc_contribution"].item() == pytest.approx(expected_contribution)
    loss = cc_loss(alpha, k1=0.3, k2=0.7)
    assert loss.item() == pytest.approx(0.3 * expected_confusion + 0.7 * expected_contribution)


def test_confusion_accepts_any_leading_shape() -> None:
    assert confusion(torch.tensor([0.5, 0.5])).item() == pytest.approx(1.0)
    assert confusion(torch.tensor([1.0, 0.0, 0.0, 0.0])).item() == pytest.approx(0.25)
    assert confusion(torch.full((2, 3, 4, 5), 0.2)).shape == (2, 3, 4)


def test_masked_steps_change_nothing() -> None:
    alpha = mixed_alpha()
    garbage = torch.tensor([[float("nan"), -5.0, 1e9], [0.0, 0.0, 0.0]])  # one garbage row per column
    padded = torch.cat([alpha, garbage.unsqueeze(0)], dim=0)  # [3, 2, 3]
    mask = torch.tensor([[True, True], [True, True], [False, False]])
    torch.testing.assert_close(contribution(padded, mask), contribution(alpha))
    for name, value in cc_terms(padded, mask).items():
        torch.testing.assert_close(value, cc_terms(alpha)[name])
    torch.testing.assert_close(cc_loss(padded, 0.3, 0.7, mask), cc_loss(alpha, 0.3, 0.7))
    # A float mask means the same as a boolean one.
    torch.testing.assert_close(cc_loss(padded, 0.3, 0.7, mask.float()), cc_loss(alpha, 0.3, 0.7))

    # Garbage does not leak NaN into the gradient either: masked steps get exactly zero gradient.
    padded.requires_grad_(True)
    cc_loss(padded, 1.0, 1.0, mask).backward()
    assert padded.grad is not None
    assert torch.isfinite(padded.grad).all()
    assert (padded.grad[2] == 0).all()
    assert padded.grad[:2].abs().sum() > 0


def test_column_without_valid_steps() -> None:
    alpha = mixed_alpha()
    mask = torch.tensor([[True, False], [True, False]])  # column 1 holds no valid step
    rho = contribution(alpha, mask)
    torch.testing.assert_close(rho[1], torch.zeros(3))  # defined as 0, not NaN
    terms = cc_terms(alpha, mask)
    # Only column 0 counts: its two steps and its one trajectory.
    assert terms["cc_confusion"].item() == pytest.approx((math.log(8 / 9) + math.log(2 / 3)) / 2)
    assert terms["cc_contribution"].item() == pytest.approx(math.log(11 / 54))
    # Nothing valid at all: both terms are 0.
    nothing = cc_terms(alpha, torch.zeros(2, 2, dtype=torch.bool))
    assert nothing["cc_confusion"].item() == 0.0
    assert nothing["cc_contribution"].item() == 0.0


# --- trajectory="episode" -------------------------------------------------------------------------------------


def test_episode_trajectories_by_hand() -> None:
    # One column of 6 steps: a balanced episode (clusters 0, 1, 2) then a collapsed one (0, 0, 0).
    alpha = one_hot_alpha([[0, 1, 2, 0, 0, 0]])
    first = torch.tensor([[True], [False], [False], [True], [False], [False]])
    # Per episode: sum rho^2 = 1/27 and 1/9 -> mean log = -(3 + 2) / 2 * log 3.
    episodes = cc_terms(alpha, first=first, trajectory="episode")
    assert episodes["cc_contribution"].item() == pytest.approx(-2.5 * LOG3)
    # As one column: delta = 1/3, counts (4, 1, 1) -> rho = (4, 1, 1) / 18, sum rho^2 = 18/324 = 1/18.
    column = cc_terms(alpha, first=first, trajectory="column")
    assert column["cc_contribution"].item() == pytest.approx(math.log(1 / 18))
    # The confusion term does not depend on how trajectories are cut.
    assert episodes["cc_confusion"].item() == pytest.approx(-LOG3)


def test_episode_trajectories_equal_a_loop_over_episodes() -> None:
    torch.manual_seed(0)
    num_steps, num_columns = 7, 3
    alpha = torch.softmax(torch.randn(num_steps, num_columns, 4), dim=-1)
    first = torch.zeros(num_steps, num_columns, dtype=torch.bool)
    first[0, 0] = first[3, 0] = True  # column 0: [0, 3), [3, 7)
    first[2, 1] = first[4, 1] = first[5, 1] = True  # column 1: [0, 2), [2, 4), [4, 5), [5, 7)
    mask = torch.ones(num_steps, num_columns, dtype=torch.bool)  # column 2: one trajectory, no start
    mask[4, 1] = False  # the episode [4, 5) has no valid step: left out
    mask[6, 0] = False
    alpha = alpha.clone()
    alpha[4, 1] = float("nan")
    alpha[6, 0] = 7.0

    expected = []
    for column, bounds in ((0, [0, 3, 7]), (1, [0, 2, 4, 5, 7]), (2, [0, 7])):
        for start, end in zip(bounds[:-1], bounds[1:], strict=True):
            piece_mask = mask[start:end, column : column + 1]
            if not piece_mask.any():
                continue
            rho = contribution(alpha[start:end, column : column + 1], piece_mask)
            expected.append(torch.log(rho.pow(2).sum()))
    assert len(expected) == 6
    terms = cc_terms(alpha, mask, first=first, trajectory="episode")
    torch.testing.assert_close(terms["cc_contribution"], torch.stack(expected).mean())
    torch.testing.assert_close(terms["cc_confusion"], cc_terms(alpha, mask)["cc_confusion"])


def test_episode_trajectories_need_first() -> None:
    with pytest.raises(ValueError, match="first"):
        cc_terms(mixed_alpha(), trajectory="episode")


# --- the critics ----------------------------------------------------------------------------------------------


def dve_config(**changes: object) -> DVEConfig:
    return DVEConfig(**changes)  # type: ignore[arg-type]


def test_dve_forward_shapes_and_mixture() -> None:
    torch.manual_seed(0)
    critic = DVECritic(core_dim=8, encoder_dim=5, cfg=dve_config(num_clusters=3), sparse=False)
    core_out, encoder_out = torch.randn(4, 2, 8), torch.randn(4, 2, 5)
    out = critic(core_out, encoder_out)
    assert out.values.shape == (4, 2, 1)
    for name in ("alpha", "cluster_values", "attention_logits"):
        assert out.extras[name].shape == (4, 2, 3)
    alpha = out.extras["alpha"]
    torch.testing.assert_close(alpha.sum(dim=-1), torch.ones(4, 2))
    torch.testing.assert_close(out.values[..., 0], (alpha * out.extras["cluster_values"]).sum(dim=-1))
    assert critic.head_names == ("value",)


def test_dve_with_one_cluster_equals_scalar_critic() -> None:
    torch.manual_seed(0)
    scalar = ScalarCritic(core_dim=8)
    dve = DVECritic(core_dim=8, encoder_dim=5, cfg=dve_config(num_clusters=1), sparse=False)
    with torch.no_grad():
        dve.cluster_means.weight.copy_(scalar.value.weight)
        dve.cluster_means.bias.copy_(scalar.value.bias)
    core_out = torch.randn(6, 3, 8, requires_grad=True)
    encoder_out = torch.randn(6, 3, 5)
    dve_out, scalar_out = dve(core_out, encoder_out), scalar(core_out, encoder_out)
    torch.testing.assert_close(dve_out.extras["alpha"], torch.ones(6, 3, 1))
    torch.testing.assert_close(dve_out.values, scalar_out.values)
    (dve_grad,) = torch.autograd.grad(dve_out.values.sum(), core_out)
    (scalar_grad,) = torch.autograd.grad(scalar_out.values.sum(), core_out)
    torch.testing.assert_close(dve_grad, scalar_grad)


def test_cluster_input_switch() -> None:
    torch.manual_seed(0)
    core_out, encoder_out = torch.randn(3, 2, 8), torch.randn(3, 2, 5)
    other_encoder_out = torch.randn(3, 2, 5)
    on_encoder = DVECritic(8, 5, dve_config(cluster_input="encoder"), sparse=False)
    a, b = on_encoder(core_out, encoder_out), on_encoder(core_out, other_encoder_out)
    torch.testing.assert_close(a.extras["alpha"], b.extras["alpha"])  # alpha always reads the core
    assert not torch.allclose(a.extras["cluster_values"], b.extras["cluster_values"])
    on_core = DVECritic(8, 5, dve_config(cluster_input="core"), sparse=False)
    torch.testing.assert_close(
        on_core(core_out, encoder_out).values, on_core(core_out, other_encoder_out).values
    )


def test_cc_loss_gradient_reaches_attention_only() -> None:
    torch.manual_seed(0)
    critic = DVECritic(core_dim=8, encoder_dim=5, cfg=dve_config(num_clusters=3), sparse=True)
    out = critic(torch.randn(5, 4, 8), torch.randn(5, 4, 5))
    mask = torch.ones(5, 4, dtype=torch.bool)
    terms = critic.aux_losses(out, mask)
    assert set(terms) == {"cc_confusion", "cc_contribution"}
    for name in terms:
        critic.zero_grad()
        terms[name].backward(retain_graph=True)
        assert critic.attention.weight.grad is not None
        assert critic.attention.weight.grad.abs().sum() > 1e-4, name
        cluster_grad = critic.cluster_means.weight.grad
        assert cluster_grad is None or (cluster_grad == 0).all(), name


def test_cc_loss_drives_alpha_sparse_without_collapse() -> None:
    # Minimizing L_CC from near-uniform logits makes alpha one-hot while every column keeps several clusters in
    # use: sum rho^2 ends well below the collapsed 1/N_b^2 (SPEC §3.4).
    torch.manual_seed(0)
    logits = (0.1 * torch.randn(6, 2, 3)).requires_grad_(True)
    optimizer = torch.optim.Adam([logits], lr=0.1)
    for _ in range(150):
        loss = cc_loss(torch.softmax(logits, dim=-1), k1=0.1, k2=1.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    alpha = torch.softmax(logits, dim=-1).detach()
    assert confusion(alpha).mean().item() < 0.34
    assert (contribution(alpha).pow(2).sum(dim=-1) < 0.05).all()  # collapsed: 1/9; balanced: 1/27


def test_aux_losses_per_critic() -> None:
    core_out, encoder_out = torch.randn(4, 2, 8), torch.randn(4, 2, 5)
    mask = torch.ones(4, 2)
    plain = DVECritic(8, 5, dve_config(), sparse=False)
    assert plain.aux_losses(plain(core_out, encoder_out), mask) == {}
    episode = DVECritic(8, 5, dve_config(trajectory="episode"), sparse=True)
    out = episode(core_out, encoder_out)
    with pytest.raises(ValueError, match="first"):
        episode.aux_losses(out, mask)
    first = torch.zeros(4, 2, dtype=torch.bool)
    first[2, 0] = True
    terms = episode.aux_losses(out, mask, first=first)
    expected = cc_terms(out.extras["alpha"], mask, first=first, trajectory="episode")
    for name in expected:
        torch.testing.assert_close(terms[name], expected[name])


def test_diagnostics_by_hand() -> None:
    critic = DVECritic(8, 5, dve_config(num_clusters=3), sparse=True)
    # Column 0: clusters 0, 1, 2 (balanced); column 1: cluster 0 twice, then a masked garbage step.
    alpha = one_hot_alpha([[0, 1, 2], [0, 0, 1]])
    alpha[2, 1] = float("nan")
    cluster_values = torch.tensor([[1.0, 2.0, 3.0]]).expand(3, 2, 3).clone()
    cluster_values[2, 1] = 1e9
    out = CriticOutput(values=torch.zeros(3, 2, 1), extras={"alpha": alpha, "cluster_values": cluster_values})
    mask = torch.tensor([[True, True], [True, True], [True, False]])
    metrics = critic.diagnostics(out, mask)
    assert all(isinstance(value, float) for value in metrics.values())
    assert metrics["confusion_mean"] == pytest.approx(1 / 3)
    # rho: column 0 (1/9, 1/9, 1/9); column 1 (1/3, 0, 0) -> mean over columns (2/9, 1/18, 1/18).
    assert metrics["contribution/0"] == pytest.approx(2 / 9)
    assert metrics["contribution/1"] == pytest.approx(1 / 18)
    assert metrics["contribution/2"] == pytest.approx(1 / 18)
    # argmax over the 5 valid steps: cluster 0 three times, 1 and 2 once each.
    assert metrics["argmax_share/0"] == pytest.approx(3 / 5)
    assert metrics["argmax_share/1"] == pytest.approx(1 / 5)
    assert metrics["argmax_share/2"] == pytest.approx(1 / 5)
    for i, value in enumerate((1.0, 2.0, 3.0)):
        assert metrics[f"cluster_value/{i}"] == pytest.approx(value)
    assert metrics["cc_confusion"] == pytest.approx(-LOG3)
    assert metrics["cc_contribution"] == pytest.approx((-3.0 * LOG3 - 2.0 * LOG3) / 2)


def test_confusion_histogram() -> None:
    uniform = torch.full((4, 2, 3), 1.0 / 3.0)
    assert confusion_histogram(uniform) == [0] * 9 + [8]
    collapsed = one_hot_alpha([[0, 1, 2], [0, 0, 0]])
    assert confusion_histogram(collapsed, bins=4) == [6, 0, 0, 0]
    # delta = 8/9 and 2/3 over [1/3, 1] in 3 bins of width 2/9: 2/3 -> bin 1, 8/9 -> bin 2; the uniform column
    # is masked out.
    mask = torch.tensor([[True, False], [True, False]])
    assert confusion_histogram(mixed_alpha(), mask, bins=3) == [0, 1, 1]
    assert confusion_histogram(torch.ones(5, 2, 1), bins=4) == [0, 0, 0, 10]


# --- make_critic ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind", "terms"),
    [
        ("scalar", ScalarCritic, set()),
        ("dve", DVECritic, set()),
        ("sparse-dve", DVECritic, {"cc_confusion", "cc_contribution"}),
    ],
)
def test_make_critic(name: str, kind: type, terms: set[str]) -> None:
    cfg = TrainConfig(critic=name)  # type: ignore[arg-type]
    critic = make_critic(cfg, core_dim=8, encoder_dim=5)
    assert isinstance(critic, kind)
    out = critic(torch.randn(3, 2, 8), torch.randn(3, 2, 5))
    assert out.values.shape == (3, 2, 1)
    mask = torch.ones(3, 2, dtype=torch.bool)
    aux = critic.aux_losses(out, mask)
    # The trainer passes episode starts to every critic alike.
    assert set(critic.aux_losses(out, mask, first=torch.zeros(3, 2, dtype=torch.bool))) == set(aux)
    # The trainer asserts that the critic's terms and the schedule's scales have the same keys.
    assert set(aux) == terms == set(make_cc_schedule(cfg).scales(0))
    if isinstance(critic, DVECritic):
        assert critic.sparse == (name == "sparse-dve")
        assert critic.num_clusters == cfg.dve.num_clusters


# --- schedules ------------------------------------------------------------------------------------------------


def schedule(total_timesteps: int = 1000, critic: str = "sparse-dve", **dve: object) -> CCSchedule:
    cfg = TrainConfig(critic=critic, total_timesteps=total_timesteps, dve=DVEConfig(**dve))  # type: ignore[arg-type]
    return make_cc_schedule(cfg)


def test_pre_boost_ramp() -> None:
    s = schedule(k1=0.2, k2=0.4, schedule="pre-boost", preboost_fraction=0.5)
    assert s.scales(0) == {"cc_confusion": 0.0, "cc_contribution": 0.0}
    mid = s.scales(250)  # halfway through the ramp of 500 steps
    assert mid["cc_confusion"] == pytest.approx(0.1)
    assert mid["cc_contribution"] == pytest.approx(0.2)
    assert s.scales(500) == pytest.approx({"cc_confusion": 0.2, "cc_contribution": 0.4})
    assert s.scales(999) == pytest.approx({"cc_confusion": 0.2, "cc_contribution": 0.4})


def test_post_boost_switches_on_at_the_step() -> None:
    s = schedule(k1=0.2, k2=0.4, schedule="post-boost", postboost_step=300)
    assert s.scales(299) == {"cc_confusion": 0.0, "cc_contribution": 0.0}
    assert s.scales(300) == pytest.approx({"cc_confusion": 0.2, "cc_contribution": 0.4})
    assert s.scales(800) == pytest.approx({"cc_confusion": 0.2, "cc_contribution": 0.4})


def test_off_and_critics_without_cc() -> None:
    assert schedule(schedule="off").scales(500) == {"cc_confusion": 0.0, "cc_contribution": 0.0}
    assert schedule(critic="dve", schedule="pre-boost").scales(500) == {}
    assert schedule(critic="scalar", schedule="post-boost").scales(500) == {}


PLATEAU = [10.0, 20.0, 30.0, 40.0, 50.0, 60.0] + [60.0] * 10


def feed(s: CCSchedule, lengths: Sequence[float | None], steps_per_update: int = 100) -> None:
    for update, length in enumerate(lengths, start=1):
        s.observe(update * steps_per_update, length)


def test_post_boost_auto_fires_on_a_plateau() -> None:
    s = schedule(
        10_000,
        k1=0.2,
        k2=0.4,
        schedule="post-boost-auto",
        auto_window=3,
        auto_threshold=0.05,
        auto_min_fraction=0.0,
    )
    # Growth (last - prev) / prev of the window means after update 6, 7, ...: 50/20 - 1 = 1.5, 56.7/30 - 1,
    # 60/40 - 1, 60/50 - 1 = 0.2, 60/56.7 - 1 = 0.059 (update 10), then 60/60 - 1 = 0 < 0.05 at update 11.
    feed(s, PLATEAU[:10])
    assert s.fired_step is None
    assert s.scales(1000) == {"cc_confusion": 0.0, "cc_contribution": 0.0}
    s.observe(1100, PLATEAU[10])
    assert s.fired_step == 1100
    assert s.scales(1100) == pytest.approx({"cc_confusion": 0.2, "cc_contribution": 0.4})
    s.observe(1200, 500.0)  # once on, it stays on
    assert s.fired_step == 1100
    assert s.scales(5000) == pytest.approx({"cc_confusion": 0.2, "cc_contribution": 0.4})


def test_post_boost_auto_ignores_updates_without_episodes() -> None:
    s = schedule(
        10_000, schedule="post-boost-auto", auto_window=3, auto_threshold=0.05, auto_min_fraction=0.0
    )
    lengths: list[float | None] = []
    for length in PLATEAU[:11]:
        lengths += [length, None]
    feed(s, lengths)
    assert s.fired_step == 2100  # the 11th length arrives at update 21


def test_post_boost_auto_does_not_fire_while_growing() -> None:
    s = schedule(
        10_000, schedule="post-boost-auto", auto_window=3, auto_threshold=0.05, auto_min_fraction=0.0
    )
    feed(s, [10.0 * 1.1**i for i in range(50)])  # steady 10% growth per update
    assert s.fired_step is None
    assert s.scales(5000) == {"cc_confusion": 0.0, "cc_contribution": 0.0}


def test_post_boost_auto_respects_min_fraction() -> None:
    s = schedule(
        10_000, schedule="post-boost-auto", auto_window=3, auto_threshold=0.05, auto_min_fraction=0.15
    )
    feed(s, PLATEAU + [60.0] * 10)
    assert s.fired_step == 1500  # plateau detected from step 1100, but not before 15% of 10_000


def test_schedule_state_dict_round_trip() -> None:
    options: dict[str, Any] = dict(
        schedule="post-boost-auto", auto_window=3, auto_threshold=0.05, auto_min_fraction=0.0
    )
    original = schedule(10_000, **options)
    feed(original, PLATEAU[:8])
    assert original.early_collapse_warning(0.34, 200) is not None
    state = original.state_dict()
    restored = schedule(10_000, **options)
    restored.load_state_dict(state)
    assert restored.state_dict() == state
    for update in range(9, 13):
        original.observe(update * 100, PLATEAU[update - 1])
        restored.observe(update * 100, PLATEAU[update - 1])
    assert restored.fired_step == original.fired_step == 1100
    assert restored.state_dict() == original.state_dict()
    assert restored.early_collapse_warning(0.34, 300) is None  # already warned before the checkpoint
    with pytest.raises(ValueError, match="schedule"):
        schedule(10_000, schedule="pre-boost").load_state_dict(state)


def test_early_collapse_warning() -> None:
    # N_b = 3: collapsed means mean delta < 1/3 + 0.1 * 2/3 = 0.4, before step 250 of 1000.
    s = schedule(1000, num_clusters=3)
    assert s.early_collapse_warning(0.45, 100) is None
    message = s.early_collapse_warning(0.35, 100)
    assert message is not None and "0.350" in message and "100" in message
    assert s.early_collapse_warning(0.34, 120) is None  # warned once
    assert schedule(1000, num_clusters=3).early_collapse_warning(0.35, 250) is None  # past a quarter
    assert schedule(1000, critic="dve").early_collapse_warning(0.35, 100) is not None
    assert schedule(1000, critic="scalar").early_collapse_warning(0.35, 100) is None
    assert schedule(1000, critic="scalar").early_collapse_warning(None, 100) is None
    assert schedule(1000, num_clusters=3).early_collapse_warning(None, 100) is None


# --- issue 14: normalized contribution, cluster spread, attention gradients, spread schedule -------------------


def test_normalized_contribution_by_hand() -> None:
    uniform = torch.full((4, 2, 3), 1.0 / 3.0)
    collapsed = one_hot_alpha([[0, 0, 0], [0, 0, 0]])
    balanced = one_hot_alpha([[0, 1, 2], [2, 0, 1]])

    def term(alpha: torch.Tensor) -> float:
        return cc_terms(alpha, contribution="normalized")["cc_contribution"].item()

    # p = rho / sum rho: collapse gives p = (1, 0, 0), sum p^2 = 1 -> log 1 = 0, the maximum.
    assert term(collapsed) == pytest.approx(0.0, abs=1e-6)
    # balanced one-hot: rho = (1/9, 1/9, 1/9) -> p = 1/3 each, sum p^2 = 1/3 -> -log 3, the minimum.
    assert term(balanced) == pytest.approx(-LOG3)
    # state-blind uniform weights: also p = 1/3 each (the form no longer carries delta).
    assert term(uniform) == pytest.approx(-LOG3)
    # The confusion term is untouched by the form.
    assert cc_terms(balanced, contribution="normalized")["cc_confusion"].item() == pytest.approx(-LOG3)
    # Mixed case: column 0 rho = (2/9, 5/18, 5/18), sum 7/9 -> p = (4/14, 5/14, 5/14), sum p^2 = 66/196;
    # column 1 uniform -> 1/3.
    expected = (math.log(66 / 196) + math.log(1 / 3)) / 2
    assert term(mixed_alpha()) == pytest.approx(expected)
    expected_confusion = (math.log(8 / 9) + math.log(2 / 3)) / 4
    loss = cc_loss(mixed_alpha(), k1=0.3, k2=0.7, contribution="normalized")
    assert loss.item() == pytest.approx(0.3 * expected_confusion + 0.7 * expected)


def test_paper_form_ranks_collapse_below_uniform_normalized_form_above() -> None:
    """Lead 2 of issue 14: the paper's term prefers collapse to state-blind weights; the normalized one does not."""
    uniform = torch.full((3, 2, 3), 1.0 / 3.0)
    collapsed = one_hot_alpha([[0, 0, 0], [0, 0, 0]])
    paper = {name: cc_terms(a)["cc_contribution"].item() for name, a in (("u", uniform), ("c", collapsed))}
    normalized = {
        name: cc_terms(a, contribution="normalized")["cc_contribution"].item()
        for name, a in (("u", uniform), ("c", collapsed))
    }
    assert paper["c"] < paper["u"]  # minimized: the paper's form rewards collapse
    assert normalized["c"] > normalized["u"]  # the normalized form penalizes it


def test_normalized_contribution_lies_between_its_extremes() -> None:
    generator = torch.Generator().manual_seed(0)
    for num_clusters in (2, 3, 5):
        logits = 4.0 * torch.randn(6, 8, num_clusters, generator=generator)
        mask = torch.rand(6, 8, generator=generator) > 0.3
        value = cc_terms(torch.softmax(logits, -1), mask, contribution="normalized")["cc_contribution"].item()
        assert -math.log(num_clusters) - 1e-6 <= value <= 1e-6


def test_normalized_contribution_masks_and_rejects_unknown_forms() -> None:
    alpha = mixed_alpha()
    garbage = torch.cat([alpha, torch.full((1, 2, 3), float("nan"))])
    mask = torch.tensor([[True, True], [True, True], [False, False]])
    alpha.requires_grad_(True)
    clean = cc_terms(alpha, contribution="normalized")["cc_contribution"]
    garbage.requires_grad_(True)
    masked = cc_terms(garbage, mask, contribution="normalized")["cc_contribution"]
    torch.testing.assert_close(masked, clean)
    masked.backward()
    assert garbage.grad is not None and torch.isfinite(garbage.grad).all()
    with pytest.raises(ValueError, match="contribution"):
        cc_terms(alpha, contribution="squared")  # type: ignore[arg-type]


def test_critic_uses_the_configured_contribution() -> None:
    critic = DVECritic(8, 5, dve_config(contribution="normalized"), sparse=True)
    alpha = one_hot_alpha([[0, 0, 0], [0, 0, 0]])
    out = CriticOutput(values=torch.zeros(3, 2, 1), extras={"alpha": alpha, "cluster_values": torch.zeros(3, 2, 3)})
    mask = torch.ones(3, 2, dtype=torch.bool)
    assert critic.aux_losses(out, mask)["cc_contribution"].item() == pytest.approx(0.0, abs=1e-6)
    assert critic.diagnostics(out, mask)["cc_contribution"] == pytest.approx(0.0, abs=1e-6)


def test_cluster_spread_by_hand() -> None:
    values = torch.tensor([[1.0, 2.0, 3.0]]).expand(2, 2, 3).clone()  # variance across clusters 2/3
    values[1, 1] = torch.tensor([5.0, 5.0, 5.0])  # variance 0
    assert cluster_spread(values).item() == pytest.approx((3 * 2 / 3 + 0.0) / 4)
    values[1, 1] = float("nan")
    mask = torch.tensor([[True, True], [True, False]])
    assert cluster_spread(values, mask).item() == pytest.approx(2 / 3)
    critic = DVECritic(8, 5, dve_config(), sparse=False)
    out = CriticOutput(values=torch.zeros(2, 2, 1),
                       extras={"alpha": torch.full((2, 2, 3), 1 / 3), "cluster_values": values})
    assert critic.diagnostics(out, mask)["cluster_spread"] == pytest.approx(2 / 3)


def test_attention_grad_norms_equal_backward() -> None:
    torch.manual_seed(0)
    critic = DVECritic(8, 5, dve_config(), sparse=True)
    core = torch.randn(4, 3, 8)
    out = critic(core, torch.randn(4, 3, 5))
    target = torch.randn(4, 3)
    value_loss = (out.values[..., 0] - target).pow(2).mean()
    terms = critic.aux_losses(out, torch.ones(4, 3, dtype=torch.bool))
    norms = attention_grad_norms(critic.attention, {"value": value_loss, "cc": 0.5 * terms["cc_confusion"]})
    for name, loss in (("value", value_loss), ("cc", 0.5 * terms["cc_confusion"])):
        critic.zero_grad()
        loss.backward(retain_graph=True)
        expected = torch.cat([p.grad.reshape(-1) for p in critic.attention.parameters()]).norm()
        assert norms[name] == pytest.approx(float(expected), rel=1e-5)
    # A loss that never reaches the attention layer has norm 0.
    other = critic.cluster_means(torch.randn(2, 8)).sum()
    assert attention_grad_norms(critic.attention, {"other": other})["other"] == 0.0


def test_attention_param_groups() -> None:
    model = torch.nn.Module()
    model.trunk = torch.nn.Linear(4, 8)
    model.critic = DVECritic(8, 4, dve_config(), sparse=True)
    groups = attention_param_groups(model, model.critic, lr=1e-3, attention_lr_scale=0.1)
    assert [g["lr"] for g in groups] == pytest.approx([1e-3, 1e-4])
    assert [g["lr_scale"] for g in groups] == pytest.approx([1.0, 0.1])
    torch.optim.Adam(groups, lr=1e-3)  # the extra key is accepted by torch optimizers
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.critic.attention.parameters()}
    everything = {id(p) for p in model.parameters()}
    assert {id(p) for g in groups for p in g["params"]} == everything
    assert sum(len(g["params"]) for g in groups) == len(everything)
    single = attention_param_groups(model, model.critic, lr=1e-3, attention_lr_scale=1.0)
    assert len(single) == 1 and len(single[0]["params"]) == len(everything)
    assert len(attention_param_groups(model, ScalarCritic(8), lr=1e-3, attention_lr_scale=0.1)) == 1


def test_spread_schedule_fires_after_a_window_of_spread() -> None:
    s = schedule(1000, k1=0.2, k2=0.4, schedule="spread", spread_threshold=0.01, auto_window=3,
                 auto_min_fraction=0.1)
    assert s.scales(0) == {"cc_confusion": 0.0, "cc_contribution": 0.0}
    s.observe_spread(10, 0.5)  # a transient: high, then low again -> the run restarts
    s.observe_spread(20, 0.5)
    s.observe_spread(30, 0.001)
    s.observe_spread(40, 0.02)
    s.observe_spread(50, 0.02)
    assert s.fired_step is None
    s.observe_spread(60, 0.02)  # three in a row, but before 10% of the budget
    assert s.fired_step is None
    s.observe_spread(100, None)  # not measured: changes nothing
    s.observe_spread(110, 0.03)
    assert s.fired_step == 110
    assert s.scales(109) == {"cc_confusion": 0.0, "cc_contribution": 0.0}
    assert s.scales(110) == pytest.approx({"cc_confusion": 0.2, "cc_contribution": 0.4})
    s.observe_spread(120, 0.0)  # once on, it stays on
    assert s.scales(500) == pytest.approx({"cc_confusion": 0.2, "cc_contribution": 0.4})
    restored = schedule(1000, schedule="spread", spread_threshold=0.01, auto_window=3, auto_min_fraction=0.1)
    restored.load_state_dict(s.state_dict())
    assert restored.state_dict() == s.state_dict()
    # Other schedules ignore the spread.
    other = schedule(1000, schedule="post-boost-auto", auto_min_fraction=0.0, auto_window=1)
    other.observe_spread(500, 1.0)
    assert other.fired_step is None


@pytest.mark.parametrize(
    ("changes", "flag"),
    [
        ({"contribution": "squared"}, "--dve.contribution"),
        ({"spread_threshold": -1.0}, "--dve.spread-threshold"),
        ({"attention_lr_scale": 0.0}, "--dve.attention-lr-scale"),
        ({"cc_grad_ratio": -0.5}, "--dve.cc-grad-ratio"),
    ],
)
def test_new_dve_fields_are_validated(changes: dict[str, Any], flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        validate(TrainConfig(critic="sparse-dve", dve=DVEConfig(**changes)))


def test_post_boost_fraction_of_the_budget() -> None:
    s = schedule(2000, k1=0.2, k2=0.4, schedule="post-boost", postboost_fraction=0.5, postboost_step=10)
    assert s.scales(999) == {"cc_confusion": 0.0, "cc_contribution": 0.0}  # the fraction overrides the step
    assert s.scales(1000) == pytest.approx({"cc_confusion": 0.2, "cc_contribution": 0.4})
    # Budget-independent: valid with a tiny budget, where a fixed step would be past the end.
    validate(TrainConfig(critic="sparse-dve", total_timesteps=2048, num_envs=16, num_steps=128,
                         dve=DVEConfig(schedule="post-boost", postboost_fraction=0.5)))
    with pytest.raises(ConfigError, match="--dve.postboost-fraction"):
        validate(TrainConfig(critic="sparse-dve", dve=DVEConfig(schedule="post-boost", postboost_fraction=1.0)))


def test_post_boost_step_and_fraction_together_are_rejected() -> None:
    with pytest.raises(ConfigError, match="--dve.postboost-step"):
        validate(TrainConfig(critic="sparse-dve",
                             dve=DVEConfig(schedule="post-boost", postboost_fraction=0.5, postboost_step=100)))


def test_cc_grad_cap() -> None:
    assert cc_grad_cap(value_norm=1.0, cc_norm=5.0, ratio=0.1) == pytest.approx(0.02)  # 0.02 * 5 = 0.1 * 1
    assert cc_grad_cap(value_norm=1.0, cc_norm=0.05, ratio=0.1) == 1.0  # already below the cap
    assert cc_grad_cap(value_norm=1.0, cc_norm=5.0, ratio=0.0) == 1.0  # off
    assert cc_grad_cap(value_norm=1.0, cc_norm=0.0, ratio=0.1) == 1.0


def test_attention_trunk_grad_off_keeps_only_the_cluster_means_gradient_on_the_trunk() -> None:
    torch.manual_seed(0)
    for trunk_grad in (True, False):
        critic = DVECritic(8, 5, dve_config(attention_trunk_grad=trunk_grad), sparse=True)
        core = torch.randn(4, 2, 8, requires_grad=True)
        out = critic(core, torch.randn(4, 2, 5))
        out.extras["alpha"].pow(2).sum().backward()  # a loss of the attention alone (as L_CC is)
        assert (core.grad is not None and core.grad.abs().sum() > 0) == trunk_grad
        assert critic.attention.weight.grad is not None and critic.attention.weight.grad.abs().sum() > 0
        core.grad = None
        out = critic(core, torch.randn(4, 2, 5))
        out.extras["cluster_values"].sum().backward()  # the cluster means always train the trunk
        assert core.grad is not None and core.grad.abs().sum() > 0
