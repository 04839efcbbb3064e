"""Critic isolation on a frozen behaviour policy (multiscene.bench.critic_fit) and its benchmark script (issue 3)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from conftest import load_benchmark_script

from multiscene.bench.critic_fit import (
    collect_episodes,
    discounted_returns,
    fit_critic,
    hidden_payoff_policy,
    value_errors,
)
from multiscene.config import DVEConfig, TrainConfig
from multiscene.envs.scenes import HIDDEN_PAYOFF_ID, level_payoff
from multiscene.models.agent import Agent


def _config(critic: str, cluster_input: str = "core", **changes: object) -> TrainConfig:
    return TrainConfig(
        env=HIDDEN_PAYOFF_ID, critic=critic, hidden_size=16, learning_rate=3e-3,  # type: ignore[arg-type]
        dve=DVEConfig(cluster_input=cluster_input), **changes,  # type: ignore[arg-type]
    )


def test_discounted_returns_by_hand() -> None:
    reward = np.array([[0.0, 0.0], [0.0, 2.0], [1.0, 5.0]], dtype=np.float32)
    valid = np.array([[True, True], [True, True], [True, False]])
    out = discounted_returns(reward, valid, gamma=0.5)
    # column 0: G2 = 1, G1 = 0.5, G0 = 0.25; column 1 ends at t = 1: G1 = 2, G0 = 1, padding 0 (its 5 is ignored)
    np.testing.assert_allclose(out, [[0.25, 1.0], [0.5, 2.0], [1.0, 0.0]])


def test_greedy_policy_walks_the_shortest_path() -> None:
    seeds = np.arange(6)
    data = collect_episodes(HIDDEN_PAYOFF_ID, seeds, hidden_payoff_policy(0.0), gamma=0.9, seed=0)
    assert data.valid.sum(axis=0).tolist() == [5] * 6  # turn, turn, three steps south
    assert data.num_actions == 7
    for e, seed in enumerate(seeds):
        payoff = level_payoff(int(seed))
        assert data.reward[4, e] == pytest.approx(payoff)
        np.testing.assert_allclose(data.returns[:, e], payoff * 0.9 ** np.arange(4, -1, -1), rtol=1e-6)
    # the first observation is the same on every level
    assert all(np.array_equal(data.obs[0, 0], data.obs[0, e]) for e in range(6))


def test_noisy_policy_pads_and_is_reproducible() -> None:
    seeds = np.repeat(np.arange(5), 4)
    a = collect_episodes(HIDDEN_PAYOFF_ID, seeds, hidden_payoff_policy(0.5), gamma=0.99, seed=3)
    b = collect_episodes(HIDDEN_PAYOFF_ID, seeds, hidden_payoff_policy(0.5), gamma=0.99, seed=3)
    np.testing.assert_array_equal(a.obs, b.obs)
    lengths = a.valid.sum(axis=0)
    assert lengths.min() >= 5 and lengths.max() > 5  # noise makes some episodes longer
    assert not a.obs[~a.valid].any() and not a.returns[~a.valid].any()
    sub = a.columns(np.array([0, 3]))
    assert sub.valid.shape == (int(lengths[[0, 3]].max()), 2)
    np.testing.assert_array_equal(sub.level_seed, a.level_seed[[0, 3]])
    with pytest.raises(ValueError, match="epsilon"):
        hidden_payoff_policy(1.5)


def test_value_errors_split_first_step() -> None:
    data = collect_episodes(HIDDEN_PAYOFF_ID, np.arange(4), hidden_payoff_policy(0.0), gamma=0.99, seed=0)
    errors = value_errors(data.returns, data)
    assert errors == {"error": 0.0, "error_t0": 0.0, "error_after": 0.0}
    shifted = data.returns.copy()
    shifted[0] += 0.4
    errors = value_errors(shifted, data)
    assert errors["error_t0"] == pytest.approx(0.4) and errors["error_after"] == pytest.approx(0.0)
    assert errors["error"] == pytest.approx(0.4 / 5)


def test_same_seed_gives_every_critic_the_same_trunk() -> None:
    """The benchmark's pairing: encoder and core are built before the critic, so their init does not depend on it."""
    agents = []
    for critic in ("scalar", "dve", "sparse-dve"):
        torch.manual_seed(5)
        agents.append(Agent((7, 7, 3), 7, _config(critic)))
    for other in agents[1:]:
        for (name, p), (_, q) in zip(agents[0].encoder.named_parameters(), other.encoder.named_parameters()):
            assert torch.equal(p, q), name
        for (name, p), (_, q) in zip(agents[0].core.named_parameters(), other.core.named_parameters()):
            assert torch.equal(p, q), name


@pytest.mark.parametrize(("critic", "cluster_input"), [("scalar", "core"), ("dve", "encoder"), ("sparse-dve", "core")])
def test_fit_lowers_the_error_of_every_critic(critic: str, cluster_input: str) -> None:
    data = collect_episodes(HIDDEN_PAYOFF_ID, np.repeat(np.arange(8), 3), hidden_payoff_policy(0.3), 0.99, seed=0)
    cfg = _config(critic, cluster_input, total_timesteps=40)
    result = fit_critic(cfg, data, data, steps=40, batch_episodes=8, eval_every=20, seed=1)
    assert [int(e["step"]) for e in result.curve] == [0, 20, 40]
    first, last = result.curve[0]["error"], result.curve[-1]["error"]
    assert np.isfinite(last) and last < 0.8 * first
    assert result.value is not None and result.value.shape == data.valid.shape
    if critic == "scalar":
        assert result.alpha is None and "confusion" not in result.curve[-1]
    else:
        assert result.alpha is not None and result.alpha.shape == (*data.valid.shape, 3)
        assert 1 / 3 - 1e-6 <= result.curve[-1]["confusion"] <= 1 + 1e-6
        shares = [result.curve[-1][f"argmax_share/{i}"] for i in range(3)]
        assert sum(shares) == pytest.approx(1.0)


def test_sparse_dve_fit_applies_lcc() -> None:
    """With a large k1 from step 0, L_CC must drive the weights towards one-hot within the fit (plain DVE does not)."""
    data = collect_episodes(HIDDEN_PAYOFF_ID, np.repeat(np.arange(8), 3), hidden_payoff_policy(0.3), 0.99, seed=0)
    confusions = {}
    for critic in ("dve", "sparse-dve"):
        cfg = TrainConfig(env=HIDDEN_PAYOFF_ID, critic=critic, hidden_size=16, learning_rate=3e-3,  # type: ignore[arg-type]
                          total_timesteps=30, dve=DVEConfig(k1=1.0, k2=0.0, schedule="off" if critic == "dve" else "pre-boost",
                                                            preboost_fraction=0.01))
        result = fit_critic(cfg, data, data, steps=30, batch_episodes=8, eval_every=30, seed=1)
        confusions[critic] = result.curve[-1]["confusion"]
    assert confusions["sparse-dve"] < 0.6 < confusions["dve"]


def test_fit_rejects_bad_sizes() -> None:
    data = collect_episodes(HIDDEN_PAYOFF_ID, np.arange(4), hidden_payoff_policy(0.0), 0.99, seed=0)
    with pytest.raises(ValueError, match="steps"):
        fit_critic(_config("scalar"), data, data, steps=0, batch_episodes=2, eval_every=1, seed=0)
    with pytest.raises(ValueError, match="batch_episodes"):
        fit_critic(_config("scalar"), data, data, steps=1, batch_episodes=5, eval_every=1, seed=0)


def _load_script() -> ModuleType:
    return load_benchmark_script("dve_critic_fit.py")


def test_benchmark_script_tiny_budget(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = _load_script()
    args = ["--steps", "6", "--eval-every", "3", "--train-levels", "6", "--episodes-per-level", "2",
            "--test-levels", "8", "--batch-episodes", "4", "--hidden-size", "8", "--seeds", "1", "2",
            "--variants", "scalar", "dve-encoder", "sparse-dve", "--out-dir", str(tmp_path / "runs"),
            "--json", str(tmp_path / "results.json"), "--figure", str(tmp_path / "curves.png"),
            "--figure-gradients", str(tmp_path / "gradients.png")]
    assert script.main(args) == 0
    out = capsys.readouterr().out
    for field in ("scene-blind floor", "scene-aware floor", "AUC - scalar", "dve-encoder", "wall time"):
        assert field in out
    results = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "gradients.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(results["summary"]) == {"scalar", "dve-encoder", "sparse-dve"}
    assert len(results["runs"]) == 6
    assert results["floors"]["scene_aware"] < results["floors"]["scene_blind"]
    dve = results["summary"]["dve-encoder"]
    paired = [r["auc_error_after"] for r in results["runs"] if r["variant"] == "dve-encoder"]
    scalar = [r["auc_error_after"] for r in results["runs"] if r["variant"] == "scalar"]
    np.testing.assert_allclose(dve["auc_minus_scalar"], np.array(paired) - np.array(scalar))
    for run in results["runs"]:
        if run["variant"] == "scalar":
            assert run["scene_clusters"] is None
        else:
            clusters = run["scene_clusters"]
            assert 0.0 <= clusters["nmi"] <= 1.0 and 1 <= clusters["clusters_used"] <= 3
            assert clusters["levels"] <= 3  # "levels" are the scenes here

    # a second call with the same settings reuses the cached runs; changed settings refit
    cached = tmp_path / "runs" / "scalar-1.json"
    before = cached.stat().st_mtime_ns
    assert script.main(args) == 0
    assert cached.stat().st_mtime_ns == before
    assert script.main([*args[:1], "7", *args[2:]]) == 0
    assert cached.stat().st_mtime_ns != before
    assert json.loads(cached.read_text())["settings"]["steps"] == 7


def test_benchmark_script_bad_input(tmp_path: Path) -> None:
    script = _load_script()
    with pytest.raises(SystemExit):
        script.main(["--steps", "0", "--out-dir", str(tmp_path)])
    with pytest.raises(SystemExit):
        script.main(["--variants", "nonsense", "--out-dir", str(tmp_path)])


def test_mean_abs_to_group_median_by_hand() -> None:
    from multiscene.analysis.stats import mean_abs_to_group_median

    values = np.array([1.0, 2.0, 6.0, 10.0, 10.0])
    # one group: median 6 -> |1-6| + |2-6| + 0 + 4 + 4 = 17 over 5 rows
    assert mean_abs_to_group_median(values, np.zeros(5)) == pytest.approx(17 / 5)
    # groups {1, 2, 6} (median 2: 1 + 0 + 4) and {10, 10} (0)
    assert mean_abs_to_group_median(values, np.array([0, 0, 0, 1, 1])) == pytest.approx(5 / 5)
    # two-column keys: (0, 0) = {1, 2} (median 1.5: 0.5 + 0.5), (0, 1) = {6}, (1, 1) = {10, 10}
    keys = np.array([[0, 0], [0, 0], [0, 1], [1, 1], [1, 1]])
    assert mean_abs_to_group_median(values, keys) == pytest.approx(1 / 5)



# --- issue 14: gradient norms on the attention layer and the remedies of lead 1 --------------------------------


def _tiny_data():  # noqa: ANN202 - Episodes
    return collect_episodes(HIDDEN_PAYOFF_ID, np.repeat(np.arange(6), 2), hidden_payoff_policy(0.3), 0.99, seed=0)


def test_fit_records_attention_gradients() -> None:
    data = _tiny_data()
    cfg = _config("sparse-dve", "encoder", total_timesteps=6)
    result = fit_critic(cfg, data, data, steps=6, batch_episodes=4, eval_every=3, seed=1, grad_every=2)
    assert [int(g["step"]) for g in result.gradients] == [0, 2, 4]
    for g in result.gradients:
        assert g["grad_norm_value"] > 0 and g["grad_norm_cc_confusion"] > 0 and g["grad_norm_cc_contribution"] > 0
        assert 1 / 3 - 1e-6 <= g["confusion"] <= 1 + 1e-6 and g["cluster_spread"] >= 0
    # pre-boost ramp over a quarter of 6 steps: off at step 0, full from step 2 on
    assert [g["cc_factor"] for g in result.gradients] == pytest.approx([0.0, 1.0, 1.0])
    assert "cluster_spread" in result.curve[-1]
    dve = fit_critic(_config("dve", total_timesteps=4), data, data, steps=4, batch_episodes=4, eval_every=4, seed=1,
                     grad_every=2)
    assert [set(g) for g in dve.gradients] == [{"step", "grad_norm_value", "cc_factor", "cluster_spread",
                                                "confusion"}] * 2
    scalar = fit_critic(_config("scalar"), data, data, steps=2, batch_episodes=4, eval_every=2, seed=1)
    assert scalar.gradients == []


def test_cc_grad_ratio_caps_lcc_relative_to_the_value_loss() -> None:
    data = _tiny_data()
    # k1 = k2 = 5 from step 0: uncapped, L_CC's gradient on the attention layer dwarfs the value loss's.
    cfg = _config("sparse-dve", total_timesteps=4)
    cfg = dataclasses.replace(cfg, dve=dataclasses.replace(cfg.dve, k1=5.0, k2=5.0, schedule="post-boost",
                                                             cc_grad_ratio=0.1))
    result = fit_critic(cfg, data, data, steps=4, batch_episodes=4, eval_every=4, seed=1, grad_every=1)
    for g in result.gradients:
        cc = g["grad_norm_cc_confusion"] + g["grad_norm_cc_contribution"]
        assert cc > 0.1 * g["grad_norm_value"]  # the cap binds ...
        assert g["cc_factor"] * cc == pytest.approx(0.1 * g["grad_norm_value"], rel=1e-5)  # ... exactly


def test_attention_lr_scale_gives_the_attention_layer_its_own_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    import multiscene.bench.critic_fit as critic_fit

    made: list[torch.optim.Adam] = []

    class RecordingAdam(torch.optim.Adam):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            made.append(self)

    monkeypatch.setattr(critic_fit.torch.optim, "Adam", RecordingAdam)
    data = _tiny_data()
    cfg = _config("sparse-dve", total_timesteps=2)
    cfg = dataclasses.replace(cfg, dve=dataclasses.replace(cfg.dve, attention_lr_scale=0.1))
    fit_critic(cfg, data, data, steps=2, batch_episodes=4, eval_every=2, seed=1)
    (optimizer,) = made
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([cfg.learning_rate, 0.1 * cfg.learning_rate])
    assert [p.shape for p in optimizer.param_groups[1]["params"]] == [(3, 16), (3,)]  # the attention Linear


def test_spread_schedule_fires_inside_the_fit() -> None:
    data = _tiny_data()
    cfg = _config("sparse-dve", total_timesteps=5)
    cfg = dataclasses.replace(cfg, dve=dataclasses.replace(cfg.dve, schedule="spread", spread_threshold=0.0,
                                                             auto_window=2, auto_min_fraction=0.0))
    result = fit_critic(cfg, data, data, steps=5, batch_episodes=4, eval_every=5, seed=1, grad_every=1)
    assert result.cc_fired_step == 1  # two observations >= 0, after steps 0 and 1
    assert [g["cc_factor"] for g in result.gradients] == [0.0, 0.0, 1.0, 1.0, 1.0]
