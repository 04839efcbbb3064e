"""PPO stays bit-identical to the results taken before the algorithm axis existed (issue 10, item 1).

The digests below were computed with commit 0d8c328 (before ``--algo``): a tiny MiniGrid run per critic, its
final weights hashed (sorted state-dict keys, raw bytes) and its per-update policy and value losses. Any change
to PPO's arithmetic, RNG call order or parameter layout breaks them; a deliberate change must say so and
re-pin.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from conftest import tiny_config
from safetensors.torch import load_file

from multiscene.logger import read_metrics
from multiscene.trainer import train

PINNED = {
    "scalar": (
        "835f4d902b6a0970528f35f659f8822a8af1276550ec70a578b53b6389d2b8cb",
        [(-0.0006218869239091873, 0.00033827069637482055), (-0.00022276397794485092, 0.0003789833062910475),
         (-0.00018072454258799553, 0.00036819356682826765)],
    ),
    "sparse-dve": (
        "ff31712fb31aa37dc1ca38747133cefcf3d27329599291929ed58e788f93f67a",
        [(-0.00023676641285419464, 0.00022796484699938446), (-0.00011869054287672043, 0.00011417948735470418),
         (-0.00012934720143675804, 9.308060361945536e-05)],
    ),
}


def _weights_digest(run: Path) -> str:
    weights = load_file(str(run / "model.safetensors"))
    h = hashlib.sha256()
    for key in sorted(weights):
        h.update(key.encode())
        h.update(weights[key].contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("critic", sorted(PINNED))
def test_ppo_matches_the_pinned_run(tmp_path, critic):
    # Pinned before time-limit bootstrapping existed (issue 16): pinned runs treat truncation as termination.
    run = train(tiny_config(str(tmp_path / "run"), critic=critic, final_eval=False, bootstrap_truncation=False))
    losses = [(r["losses/policy_loss"], r["losses/value_loss"]) for r in read_metrics(run / "metrics.jsonl")
              if "losses/policy_loss" in r]
    digest, pinned_losses = PINNED[critic]
    assert losses == pinned_losses
    assert _weights_digest(run) == digest
