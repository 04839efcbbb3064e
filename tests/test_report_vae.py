"""``multiscene report`` of a ``--aux vae`` run (issue 12 item 5): the -ELBO curve and the grid of frames next to
their reconstructions from training and held-out levels (seed 002 Figs 3 and 5)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from test_report import _check_png, write_fake_run  # noqa: E402

from multiscene.analysis.report import ReportOptions, build_report, neg_elbo_series  # noqa: E402
from multiscene.analysis.rundata import load_run  # noqa: E402

FAST = ReportOptions(tsne_points=30, frames_per_cluster=2, trajectories=1, filmstrip_frames=4)


def _add_vae(run: Path, recon: list[float | None], kl: list[float | None]) -> None:
    """Mark the fake run --aux vae and put VAE terms into its metrics records (None: term not logged)."""
    record = json.loads((run / "config.json").read_text())
    record["config"].update({"aux": "vae", "vae": {"latent_dim": 8}})
    (run / "config.json").write_text(json.dumps(record))
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in lines if "losses/value_loss" in r]
    for r, a, b in zip(train_records, recon, kl, strict=False):
        if a is not None:
            r["losses/vae_recon"] = a
        if b is not None:
            r["losses/vae_kl"] = b
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def test_vae_section_from_faked_files(tmp_path: Path) -> None:
    run = write_fake_run(tmp_path / "vae", critic="scalar", env="coinrun", updates=5)
    _add_vae(run, recon=[900.0, 800.0, None, 700.0, 650.0], kl=[5.0, 7.0, 8.0, 9.0, 10.0])
    # Known frames: training reconstructions off by 10 everywhere, held-out ones by 40 (pixel MAE 10 and 40).
    rng = np.random.default_rng(0)
    frames = {split: rng.integers(50, 200, (3, 64, 64, 3), dtype=np.uint8) for split in ("train", "test")}
    np.savez_compressed(run / "eval" / "vae_frames.npz", train_frames=frames["train"],
                        train_recon=frames["train"] + 10, test_frames=frames["test"], test_recon=frames["test"] - 40)
    summary = build_report(run, FAST)

    vae = summary["vae"]
    # -ELBO = recon + KL, only where both were logged (update 3 has no recon)
    x, y = neg_elbo_series(load_run(run))
    np.testing.assert_allclose(y, [905.0, 807.0, 709.0, 660.0])
    np.testing.assert_allclose(x, [256.0, 512.0, 1024.0, 1280.0])
    assert vae["neg_elbo"] == {"points": 4, "first": 905.0, "last": 660.0}
    assert vae["frames"]["train"] == {"frames": 3, "drawn": 3, "pixel_mae": pytest.approx(10.0)}
    assert vae["frames"]["test"]["pixel_mae"] == pytest.approx(40.0)
    assert {"vae_elbo.png", "vae_reconstructions.png"} <= set(summary["figures"])
    for name in ("vae_elbo.png", "vae_reconstructions.png"):
        _check_png(run / "report" / name)
    page = (run / "report" / "index.html").read_text()
    assert "held-out levels" in page and "src='vae_reconstructions.png'" in page


def test_no_vae_section_without_aux_and_a_note_without_frames(tmp_path: Path) -> None:
    plain = write_fake_run(tmp_path / "plain", critic="scalar", env="coinrun")
    assert "vae" not in build_report(plain, FAST)
    run = write_fake_run(tmp_path / "noframes", critic="scalar", env="coinrun", updates=3)
    _add_vae(run, recon=[3.0, 2.0, 1.0], kl=[1.0, 1.0, 1.0])
    summary = build_report(run, FAST)
    assert summary["vae"]["frames"] is None and summary["vae"]["neg_elbo"]["last"] == 2.0
    assert "vae_reconstructions.png" not in summary["figures"]
    assert "No eval/vae_frames.npz" in (run / "report" / "index.html").read_text()


def test_report_of_a_tiny_real_vae_run(tmp_path: Path) -> None:
    """A real PPO run with --aux vae, then write_reconstructions on its saved agent (what the on-policy loop's
    end-of-run hook does, see docs/impala.md), then the report."""
    from conftest import tiny_config
    from safetensors.torch import load_file

    from multiscene.auxloss.vae import write_reconstructions
    from multiscene.envs import make_env
    from multiscene.runtime import env_spec, make_agent
    from multiscene.trainer import train

    torch.set_num_threads(1)
    cfg = tiny_config(str(tmp_path / "run"), env="coinrun", critic="scalar", aux="vae", final_eval=False,
                      num_levels=5, total_timesteps=4 * 16 * 2, vae={"latent_dim": 8})
    run = train(cfg)
    envs = make_env(env_spec(cfg, "train", 1))
    try:
        agent = make_agent(cfg, envs, device=torch.device("cpu"))
    finally:
        envs.close()
    state = {k.removeprefix("agent."): v for k, v in load_file(str(run / "model.safetensors")).items()
             if k.startswith("agent.")}
    agent.load_state_dict(state)
    write_reconstructions(agent.encoder, agent.aux, cfg, torch.device("cpu"), run, frames=3)

    summary = build_report(run, FAST)
    vae = summary["vae"]
    records = [r for r in load_run(run).metrics if "losses/vae_recon" in r]
    assert vae["neg_elbo"]["points"] == len(records) == 2
    assert vae["neg_elbo"]["last"] == pytest.approx(records[-1]["losses/vae_recon"] + records[-1]["losses/vae_kl"])
    assert set(vae["frames"]) == {"train", "test"} and vae["frames"]["test"]["frames"] == 3
    _check_png(run / "report" / "vae_reconstructions.png")
