"""Public entry point of training: ``train(cfg)``. (Pure move: the loop now lives in multiscene/algos/onpolicy/loop.py.)"""

from multiscene.algos.onpolicy.loop import *  # noqa: F401,F403
from multiscene.algos.onpolicy.loop import (  # noqa: F401
    CONFIG_FILE,
    TrainingStopped,
    agent_tensors,
    env_spec,
    load_agent_tensors,
    load_config,
    make_agent,
    resolve_device,
    train,
)
