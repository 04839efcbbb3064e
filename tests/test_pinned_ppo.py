"""PPO stays bit-identical to the results taken before the algorithm axis existed (issue 10, item 1).

The digests below were computed with commit 0d8c328 (before ``--algo``), one set per processor kind the
project has run on (kernels round differently across CPUs): a tiny MiniGrid run per critic, its final weights hashed (sorted state-dict keys, raw bytes) and its per-update policy and value losses. Any change
to PPO's arithmetic, RNG call order or parameter layout breaks them; a deliberate change must say so and
re-pin.
"""

from __future__ import annotations

import hashlib
import platform
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config
from safetensors.torch import load_file

from multiscene.logger import read_metrics
from multiscene.trainer import train

# Float rounding in the CPU kernels differs between processors, so each machine kind the project runs on has its
# own pins, all taken with commit 0d8c328 (and re-checked equal with the commit that added them) on that machine.
PINNED_BY_CPU = {
    # "AMD EPYC" dev machine (2026-11-21).
    "AMD EPYC": {
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
    },
    # "Intel(R) Xeon(R) Processor" dev machine, torch CPU capability AVX512 (2026-12-06).
    "Intel(R) Xeon(R) Processor": {
        "scalar": (
            "ded48548f1eb5c1a010752a1635d3e8db1ce951382988f0e3066af17f9777246",
            [(-0.0006218450143933296, 0.0003382706090633292), (-0.00022276770323514938, 0.0003789831534959376),
             (-0.0001806383952498436, 0.0003681933776533697)],
        ),
        "sparse-dve": (
            "a857ceb47f75dcc118bd9ffcb8ef6e9a378b9fa8f0878c1ed8eae90354bf54cf",
            [(-0.00023673661053180695, 0.00022796480334363878), (-0.00011869566515088081, 0.00011417944006097969),
             (-0.00012934673577547073, 9.308059634349775e-05)],
        ),
    },
}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_pins() -> dict[str, tuple[str, list[tuple[float, float]]]] | None:
    """The pins of this machine's CPU kind, or None on a processor no pin was taken on."""
    model = cpu_model()
    for key, pins in PINNED_BY_CPU.items():
        if model.startswith(key):
            return pins
    return None


def _weights_digest(run: Path) -> str:
    weights = load_file(str(run / "model.safetensors"))
    h = hashlib.sha256()
    for key in sorted(weights):
        h.update(key.encode())
        h.update(weights[key].contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("critic", ["scalar", "sparse-dve"])
def test_ppo_matches_the_pinned_run(tmp_path, critic):
    # Pinned before time-limit bootstrapping existed (issue 16): pinned runs treat truncation as termination.
    run = train(tiny_config(str(tmp_path / "run"), critic=critic, final_eval=False, bootstrap_truncation=False))
    losses = [(r["losses/policy_loss"], r["losses/value_loss"]) for r in read_metrics(run / "metrics.jsonl")
              if "losses/policy_loss" in r]
    pins = machine_pins()
    if pins is None:
        # An unpinned processor: bit-identity cannot be judged here, closeness can (the pinned machines differ
        # from each other by ~1e-4 relative after three updates; a changed loss or RNG order moves far more).
        # To pin this CPU: run this test's config at commit 0d8c328 and add its digest and losses above.
        warnings.warn(f"no bit-exact PPO pin for CPU {cpu_model()!r}: checking the losses to 1e-3 only",
                      stacklevel=1)
        reference = PINNED_BY_CPU["AMD EPYC"][critic][1]
        assert np.allclose(np.array(losses), np.array(reference), rtol=1e-3, atol=1e-7), (losses, reference)
        return
    digest, pinned_losses = pins[critic]
    assert losses == pinned_losses
    assert _weights_digest(run) == digest
