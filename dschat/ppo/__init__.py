"""Step-3 PPO: pure maths (`losses`), the `Experience` batch, and the trainer.

The trainer lives in `dschat.ppo.trainer`; it is not imported here so that
the maths stays importable without building any model.
"""
from dschat.ppo.experience import Experience
from dschat.ppo.losses import (actor_loss_fn, compute_rewards, critic_loss_fn, gather_log_probs,
                               get_advantages_and_returns, masked_mean, ppo_targets)

__all__ = [
    "Experience",
    "actor_loss_fn",
    "compute_rewards",
    "critic_loss_fn",
    "gather_log_probs",
    "get_advantages_and_returns",
    "masked_mean",
    "ppo_targets",
]
