"""Step-3 checkpoints that a killed run resumes from (DS-Chat could not, #850).

A checkpoint `<checkpoint_dir>/` holds, per tag `global_step<N>`:

* `actor/`, `critic/` (and `actor_ema/`): `engine.save_checkpoint` of each
  trained engine: module, optimizer state (ZeRO shards), LR scheduler;
* the loop position and running statistics (`Step3State`: epoch, step in
  the epoch, steps done, non-overflow count, the reward EMA, the reward and
  evaluation history), stored in the actor checkpoint's `client_state`;
* `rng/<tag>/rank<r>.pt`: every rank's python, numpy, torch and accelerator
  RNG states (generation samples, and PPO reshuffles its experience);
* `latest_step3`: the tag of the last *complete* checkpoint. It is written
  last, by rank 0, after a barrier, so a run killed mid-save resumes from
  the previous checkpoint. (Each engine also keeps its own `latest`.)

Checkpoints are taken only between PPO rounds (the experience buffer is
empty then), so nothing else needs saving. The ref and reward models are
frozen and are rebuilt from the step-1/2 folders.
"""
import dataclasses
import os
import random
import shutil
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

from deepspeed import comm as dist
from deepspeed.accelerator import get_accelerator
from dschat.utils import print_rank_0

__all__ = [
    "Step3State", "save_step3_checkpoint", "load_step3_checkpoint", "set_rng_state", "latest_tag", "LATEST_FILE"
]

LATEST_FILE = "latest_step3"
_STATE_KEY = "dschat_step3_state"


@dataclasses.dataclass
class Step3State:
    """Where the step-3 loop is, and what it has accumulated so far."""

    epoch: int = 0
    """Epoch of the next prompt batch."""
    step: int = 0
    """Prompt batches of `epoch` already consumed (the next batch's index)."""
    global_step: int = 0
    """Prompt batches consumed over all epochs."""
    non_overflow_steps: int = 0
    """Steps where neither optimizer overflowed (test mode stops on it)."""
    step_average_reward: float = 0.0
    """Reward summed since the last reward-EMA update (one per GAS_actor steps)."""
    reward_ema: Optional[Dict[str, Any]] = None
    """`ExponentialMovingAverage.state_dict()` of the reward."""
    rewards: List[List[float]] = dataclasses.field(default_factory=list)
    """[global_step, mean reward over ranks] per PPO round, for the reward curve."""
    evaluations: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
    """Task-success / mean-reward evaluations, each with its `step`."""

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Step3State":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _rng_state() -> Dict[str, Any]:
    accelerator = get_accelerator()
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if accelerator.device_name() != "cpu":
        state["accelerator"] = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what the checkpoint saved for this rank (see `load_step3_checkpoint` for when)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("accelerator") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["accelerator"])


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def latest_tag(checkpoint_dir: str) -> Optional[str]:
    """The tag of the last complete checkpoint in `checkpoint_dir`, or None."""
    path = os.path.join(checkpoint_dir, LATEST_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return handle.read().strip() or None


def save_step3_checkpoint(checkpoint_dir: str, engines: Mapping[str, Any], state: Step3State) -> str:
    """Checkpoint every engine of `engines` ({"actor": ..., "critic": ...}) and `state`; all ranks call it."""
    tag = f"global_step{state.global_step}"
    for name, engine in engines.items():
        client_state = {_STATE_KEY: state.to_dict()} if name == "actor" else {}
        engine.save_checkpoint(os.path.join(checkpoint_dir, name), tag=tag, client_state=client_state)
    rng_dir = os.path.join(checkpoint_dir, "rng", tag)
    os.makedirs(rng_dir, exist_ok=True)
    tmp = os.path.join(rng_dir, f".rank{_rank()}.pt.tmp")
    torch.save(_rng_state(), tmp)
    os.replace(tmp, os.path.join(rng_dir, f"rank{_rank()}.pt"))
    _barrier()
    if _rank() == 0:
        tmp = os.path.join(checkpoint_dir, f".{LATEST_FILE}.tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(tag)
        os.replace(tmp, os.path.join(checkpoint_dir, LATEST_FILE))
        _prune(checkpoint_dir, engines, keep=tag)
    _barrier()
    print_rank_0(f"[dschat] saved step-3 checkpoint {tag} to {checkpoint_dir}")
    return tag


def _prune(checkpoint_dir: str, engines: Mapping[str, Any], keep: str) -> None:
    """Delete every older tag once `keep` is complete: a resume only ever needs the latest one."""
    for name in list(engines) + ["rng"]:
        folder = os.path.join(checkpoint_dir, name)
        if not os.path.isdir(folder):
            continue
        for entry in os.listdir(folder):
            if entry.startswith("global_step") and entry != keep:
                shutil.rmtree(os.path.join(folder, entry), ignore_errors=True)


def load_step3_checkpoint(checkpoint_dir: str,
                          engines: Mapping[str, Any]) -> Optional[Tuple[Step3State, Optional[Dict[str, Any]]]]:
    """Restore `engines` from the latest checkpoint; returns (loop state, this rank's RNG state), or None.

    The RNG state is returned, not applied: the caller applies it with
    `set_rng_state` at the point of the loop where it was saved, i.e. after
    creating the epoch's DataLoader iterator (which draws a seed from torch's
    RNG) and before the next generation.
    """
    tag = latest_tag(checkpoint_dir)
    if tag is None:
        print_rank_0(f"[dschat] --resume: no step-3 checkpoint in {checkpoint_dir}; starting from the beginning")
        return None
    state: Optional[Step3State] = None
    for name, engine in engines.items():
        folder = os.path.join(checkpoint_dir, name)
        if not os.path.isdir(os.path.join(folder, tag)):
            raise FileNotFoundError(f"checkpoint {tag} has no {name}/ folder under {checkpoint_dir}; it was saved "
                                    f"without --{'enable_ema' if name == 'actor_ema' else name}")
        path, client_state = engine.load_checkpoint(folder, tag=tag)
        if path is None:
            raise RuntimeError(f"loading the {name} checkpoint {tag} from {folder} failed")
        if name == "actor":
            state = Step3State.from_dict(client_state[_STATE_KEY])
    rng_file = os.path.join(checkpoint_dir, "rng", tag, f"rank{_rank()}.pt")
    rng_state = None
    if os.path.isfile(rng_file):
        # Our own file, written by save_step3_checkpoint: numpy's RNG state is
        # not a tensor, so the safe weights_only loader cannot read it.
        rng_state = torch.load(rng_file, weights_only=False)
    else:
        print_rank_0(f"[dschat] warning: no RNG state for this rank in {tag} (different world size?); sampling "
                     "will not repeat the interrupted run exactly")
    print_rank_0(f"[dschat] resumed step 3 from {tag}: epoch {state.epoch}, step {state.step}")
    return state, rng_state
