from __future__ import annotations

from multiscene.models.agent import Agent, AgentOutput
from multiscene.models.core import CoreState

__all__ = ["Agent", "AgentOutput", "CoreState"]
