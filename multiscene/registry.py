"""Every pluggable part of multiscene is registered here, and only here: one line per part.

A part is named by ``"package.module:attribute"`` and imported when first needed. Adding a critic, an on-policy
algorithm or an auxiliary loss is one new file plus one line below (README, "Adding a part").

What a registered attribute provides:

- algorithm (``--algo``): a class with ``family`` and ``train(cfg) -> Path``; the on-policy ones subclass
  ``multiscene.algos.onpolicy.base.OnPolicyAlgorithm`` and share one loop. An algorithm that builds no critic
  of this registry declares ``critics`` (the ``--critic`` names it accepts) and ``critics_reason``, and
  ``multiscene.config.check_critic_choice`` refuses the others (DreamerV2: ``("scalar",)``);
- critic (``--critic``): a ``multiscene.critics.base.Critic`` subclass with
  ``from_config(cfg, core_dim, encoder_dim)``;
- auxiliary loss (``--aux``): an ``nn.Module`` class with ``from_config(cfg, obs_shape, feature_dim)``,
  ``losses(...) -> dict`` and ``scales(cfg) -> dict`` with the same keys.

Any of them may declare ``config_group = ("name", DataclassType)``: the group becomes ``--name.*`` flags and a
``cfg.name`` field of ``TrainConfig`` (several parts may share one group, as dve and sparse-dve share ``dve``),
and a ``validate(self, cfg)`` method on the dataclass is called by ``multiscene.config.validate``.
``multiscene.config`` imports the registered modules to build ``TrainConfig``: at module level they may import
``ConfigError`` and the group dataclasses from ``multiscene.config``, but ``TrainConfig`` only for type hints
(under ``TYPE_CHECKING``).
"""

from __future__ import annotations

import importlib
from typing import Any

ALGORITHMS: dict[str, str] = {
    "ppo": "multiscene.algos.onpolicy.ppo:PPO",
    "a2c": "multiscene.algos.onpolicy.a2c:A2C",
    "acktr": "multiscene.algos.onpolicy.acktr:ACKTR",
    "impala": "multiscene.algos.impala:IMPALA",
    "dreamer": "multiscene.algos.dreamer:Dreamer",
}

CRITICS: dict[str, str] = {
    "scalar": "multiscene.critics.scalar:ScalarCritic",
    "dve": "multiscene.critics.dve:DVECritic",
    "sparse-dve": "multiscene.critics.dve:SparseDVECritic",
    "multi": "multiscene.critics.multi:MultiCritic",
}

ENCODERS: dict[str, str] = {
    "impala": "multiscene.models.encoders:ImpalaCNN",
    "nature": "multiscene.models.encoders:NatureCNN",
    "minigrid": "multiscene.models.encoders:MiniGridCNN",
    "mlp": "multiscene.models.encoders:MLPEncoder",
}
"""``--encoder NAME``; ``auto`` (the default) picks by observation shape (multiscene.models.encoders)."""

AUX_LOSSES: dict[str, str] = {
    "vae": "multiscene.auxloss.vae:VAEAux",
}
"""``--aux NAME``; ``none`` (no auxiliary loss) is always allowed."""

OPTION_GROUPS: dict[str, str] = {
    "vwr": "multiscene.rewards.vwr:VWRConfig",
    "hotwire_cfg": "multiscene.algos.onpolicy.hotwire:HotwireConfig",
}
"""Config groups of parts that are switched on by a flag rather than chosen by name (``--vwr.*`` for the VWR
reward of ``--critic multi``; ``--hotwire-cfg.*`` for ``--hotwire``)."""

KINDS: dict[str, dict[str, str]] = {
    "algorithm": ALGORITHMS, "critic": CRITICS, "aux": AUX_LOSSES, "encoder": ENCODERS,
}
FLAGS = {"algorithm": "--algo", "critic": "--critic", "aux": "--aux", "encoder": "--encoder"}


def load(kind: str, name: str) -> Any:
    """The registered attribute of ``name`` among the parts of ``kind`` (algorithm, critic, aux)."""
    table = KINDS[kind]
    if name not in table:
        from multiscene.config import ConfigError

        raise ConfigError(f"{FLAGS[kind]} must be one of {', '.join(table)}; got {name!r}.")
    module_name, attribute = table[name].split(":")
    return getattr(importlib.import_module(module_name), attribute)


def config_groups() -> dict[str, type]:
    """Group name -> dataclass, over every registered part that declares ``config_group``."""
    groups: dict[str, type] = {}
    for kind, table in KINDS.items():
        for name in table:
            group = getattr(load(kind, name), "config_group", None)
            if group is None:
                continue
            group_name, group_type = group
            if groups.setdefault(group_name, group_type) is not group_type:
                raise TypeError(f"config group {group_name!r} is declared with two different dataclasses")
    for group_name, target in OPTION_GROUPS.items():
        module_name, attribute = target.split(":")
        groups.setdefault(group_name, getattr(importlib.import_module(module_name), attribute))
    return groups
