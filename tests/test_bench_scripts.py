"""The pure parts of benchmarks/ppo_mujoco_vs_cleanrl.py and benchmarks/acktr_vs_a2c.py against hand computations
(the training subprocesses themselves are exercised by running the scripts; see docs/benchmarks.md)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from conftest import load_benchmark_script


def test_cleanrl_sps_lines_and_median_ratio():
    vs = load_benchmark_script("ppo_mujoco_vs_cleanrl.py")
    out = "global_step=1000, episodic_return=[-3.]\nSPS: 1500\nfoo\nSPS: 1770\n"
    assert vs.SPS_LINE.findall(out) == ["1500", "1770"]
    M = vs.Measurement
    ms = [M("ours", 0, 60.0, 1, 0, 0), M("cleanrl", 0, 30.0, 1, 0, 0), M("ours", 1, 20.0, 1, 0, 0),
          M("cleanrl", 1, 40.0, 1, 0, 0), M("ours", 2, 40.0, 1, 0, 0), M("cleanrl", 2, 35.0, 1, 0, 0)]
    s = vs.summarize(ms)
    # medians 40 and 35; paired per-round ratios 2.0, 0.5, 40/35
    assert s["ours_sps"] == 40.0 and s["cleanrl_sps"] == 35.0
    assert s["ratio"] == pytest.approx(40 / 35)
    assert s["ratio_per_round_min"] == pytest.approx(0.5) and s["ratio_per_round_max"] == pytest.approx(2.0)


def test_both_commands_get_the_same_shape_and_budget():
    vs = load_benchmark_script("ppo_mujoco_vs_cleanrl.py")
    args = vs.parse_args(["--total-timesteps", "4096", "--num-steps", "1024", "--num-envs", "2",
                          "--cleanrl-python", sys.executable, "--cleanrl-script", __file__])
    ours = vs.ours_command("python", args, Path("/tmp/x"))
    theirs = vs.cleanrl_command(args)
    for flag, value in (("--num-envs", "2"), ("--num-steps", "1024"), ("--total-timesteps", "4096"), ("--seed", "1")):
        assert ours[ours.index(flag) + 1] == value and theirs[theirs.index(flag) + 1] == value
    assert "--no-cuda" in theirs and ours[ours.index("--preset") + 1] == "ppo-mujoco"
    # --ours-arg flags go to our side only, after everything else (so they override the preset)
    args = vs.parse_args(["--ours-arg=--no-adam-fused", "--ours-arg=--bf16"])  # a flag as value needs "="
    ours, theirs = vs.ours_command("python", args, Path("/tmp/x")), vs.cleanrl_command(args)
    assert ours[-2:] == ["--no-adam-fused", "--bf16"] and "--no-adam-fused" not in theirs


def test_run_scores_follow_the_carried_forward_curve(tmp_path):
    avsa = load_benchmark_script("acktr_vs_a2c.py")
    records = [
        {"update": 1, "global_step": 100, "charts/episodic_return": 10.0, "charts/episodes": 1},
        {"update": 2, "global_step": 200},  # no episode finished
        {"update": 3, "global_step": 300, "charts/episodic_return": 20.0, "charts/episodes": 3},
        {"update": 4, "global_step": 400, "charts/episodic_return": 40.0, "charts/episodes": 2,
         "nonfinite/skipped_update": 1},
        {"update": 5, "global_step": 500, "charts/episodic_return": 100.0, "charts/episodes": 1},
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n{\"torn")
    scores = avsa.run_scores(tmp_path, budget=500, final_fraction=0.2)
    # the curve carried forward through update 2 (no episode): 10, 10, 20, 40, 100
    assert scores["auc"] == pytest.approx(180 / 5)
    assert scores["final"] == pytest.approx(100.0)  # only update 5 lies beyond step 400
    assert scores["nonfinite"] == 1 and scores["steps"] == 500
    # the last 40% (step > 300) holds updates 4 and 5
    assert avsa.run_scores(tmp_path, budget=500, final_fraction=0.4)["final"] == pytest.approx(70.0)
    # before the first finished episode there is no curve: a run whose first episode ends at update 3
    (tmp_path / "late").mkdir()
    (tmp_path / "late" / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records[1:]))
    assert avsa.run_scores(tmp_path / "late", budget=500)["auc"] == pytest.approx((20 + 40 + 100) / 3)
    empty = avsa.run_scores(tmp_path / "missing", budget=500)
    assert math.isnan(empty["auc"]) and math.isnan(empty["final"])


def test_methods_differ_only_where_they_say():
    avsa = load_benchmark_script("acktr_vs_a2c.py")
    assert avsa.methods_for("Hopper-v5") is avsa.MUJOCO_METHODS
    assert avsa.methods_for("BreakoutNoFrameskip-v4") is avsa.ATARI_METHODS
    assert avsa.methods_for("ALE/Boxing-v5") is avsa.ATARI_METHODS
    run = avsa.Run("Hopper-v5", 20000, "acktr-n20", 2, Path("/tmp/r"))
    cmd = avsa.train_command(run)
    assert cmd[cmd.index("--preset") + 1] == "acktr-mujoco"
    assert cmd[cmd.index("--num-envs") + 1] == "8" and cmd[cmd.index("--num-steps") + 1] == "20"
    assert cmd[cmd.index("--total-timesteps") + 1] == "20000" and cmd[cmd.index("--seed") + 1] == "2"


def test_breakdown_times_every_part_of_a_small_run():
    pytest.importorskip("mujoco")
    vs = load_benchmark_script("ppo_mujoco_vs_cleanrl.py")
    parts = vs.breakdown(["--env", "HalfCheetah-v5", "--num-steps", "64", "--num-minibatches", "4",
                          "--update-epochs", "2", "--torch-threads", "1"], rounds=1)
    assert set(parts["collect"]) == {"env step", "acting forward", "observation normalization", "total", "rest"}
    assert set(parts["update"]) == {"forward", "loss", "backward", "gradient clipping", "optimizer step", "total",
                                    "rest"}
    for times in parts.values():
        assert all(v > 0 for k, v in times.items() if k != "rest")
        assert sum(v for k, v in times.items() if k != "total") == pytest.approx(times["total"])
    # the patched methods are restored
    import torch

    assert torch.Tensor.backward.__name__ == "backward"


FAKE_PEER = '''
import json, sys
args = sys.argv[1:]
batch = int(args[args.index("--batch-size") + 1])
print("peer log line", file=sys.stderr)
sys.stdout.write("noise before the protocol\\n")
sys.stdout.write("@@" + json.dumps({"ready": {"flops_per_step": 2e9 * batch, "flops_by_op": {"aten.mm": 2e9 * batch},
                                              "parameters": {"total_trained": 1000}}}) + "\\n")
sys.stdout.flush()
for line in sys.stdin:
    if not line.strip():
        break
    n = json.loads(line)["steps"]
    sys.stdout.write("@@" + json.dumps({"wall": [0.5] * n, "cpu": [0.25] * n}) + "\\n")
    sys.stdout.flush()
'''


def test_dreamer_vs_peer_times_our_step_against_a_peer_speaking_the_protocol(tmp_path, monkeypatch):
    # The peer venv is not part of the project's, so a stand-in speaks peer_dreamkit_step.py's line protocol with
    # fixed times: what is tested is our side (a real train step, its FLOPs and parameters) and the ABAB
    # bookkeeping, ratios and summary of run_shape.
    import argparse

    dvp = load_benchmark_script("dreamer_vs_peer.py")
    fake = tmp_path / "fake_peer.py"
    fake.write_text(FAKE_PEER)
    monkeypatch.setattr(dvp, "PEER_SCRIPT", fake)
    ns = argparse.Namespace(peer_python=sys.executable, seed=1, warmup=1, rounds=2, steps=1)
    with open(tmp_path / "peer.log", "w") as log:
        result = dvp.run_shape(ns, batch=2, seq_len=4, log=log)
    assert "peer log line" in (tmp_path / "peer.log").read_text()
    s = result["summary"]
    assert [r["round"] for r in result["rounds"]] == [1, 2] and result["peer_ready"]["flops_per_step"] == 4e9
    assert s["peer_cpu_s_per_step"] == pytest.approx(0.25) and s["peer_wall_s_per_step"] == pytest.approx(0.5)
    assert s["ours_cpu_s_per_step"] > 0 and result["flops_per_step"]["ours"] > 0
    assert s["ratio_cpu_ours_over_peer"] == pytest.approx(s["ours_cpu_s_per_step"] / 0.25)
    assert s["ours_gflops_per_cpu_s"] == pytest.approx(result["flops_per_step"]["ours"] / s["ours_cpu_s_per_step"] / 1e9)
    assert result["parameters"]["ours"]["total_trained"] == (result["parameters"]["ours"]["world_model"]
                                                            + result["parameters"]["ours"]["actor"]
                                                            + result["parameters"]["ours"]["critic"])
    assert all(len(w) == 1 for w in result["times"]["ours"]["wall"]) and len(result["times"]["peer"]["cpu"]) == 2
