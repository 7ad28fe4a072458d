"""The PPO maths of step 3 as pure functions (spec §8).

Everything here is side-effect free: no module, no optimizer, no in-place
change of an argument. The trainer composes these; the tests check them
against hand-computed values.

Shapes use B = batch, L = full sequence length (prompt + answer),
P = padded prompt length, A = L - P = answer slots, V = vocabulary.
Per-token quantities that come from logits ("actions") have length L-1:
position t holds the action that produced token t+1.

[Note: reward placement]
`log_probs[:, t]` scores token `seq[:, t+1]`, and
`action_mask[:, t] = attention_mask[:, t+1]` says whether that token is a
real (non-pad) token. The first answer token `seq[:, P]` is therefore
produced by action `start = P - 1`. With n = `action_mask[:, start:].sum()`
real answer tokens (answers are right-padded by `generate`), the last real
answer token is produced by action `start + n - 1`.

The original release put the sequence-level score on that action. The
stability release (#620) shifted it by one: `ends = start + n + 1` and the
score lands on action `ends - 1 = start + n`, the action that predicts the
token right after the last real answer token (the EOS / first pad). Rewards
and old values are zeroed from `ends` onward, so actions past that slot
carry neither KL penalty nor value.

Edge case: when the answer fills every slot (n = A), `start + n = L - 1` is
one past the last action. The release indexes through a slice
(`rewards[start:ends][-1]`), which clamps, so the score then lands on the
last action, L - 2. `reward_positions` reproduces that clamp explicitly.

When pad == EOS (OPT), the slot holding the score has action_mask 0: it is
outside both losses and reaches them only through GAE (spec §8).
"""
from typing import Tuple

import torch
import torch.nn.functional as F

__all__ = [
    "KL_CTL",
    "CLIP_REWARD_VALUE",
    "CLIPRANGE",
    "CLIPRANGE_VALUE",
    "GAMMA",
    "LAM",
    "masked_mean",
    "gather_log_probs",
    "reward_positions",
    "compute_rewards",
    "zero_after_end",
    "get_advantages_and_returns",
    "whiten",
    "ppo_targets",
    "actor_loss_fn",
    "critic_loss_fn",
]

# The release's fixed PPO constants (spec §8). They are not CLI flags.
KL_CTL = 0.1
CLIP_REWARD_VALUE = 5.0
CLIPRANGE = 0.2
CLIPRANGE_VALUE = 0.2
GAMMA = 1.0
LAM = 0.95


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """Mean of `values` over the positions where `mask` is 1.

    `values` and `mask` broadcast together, e.g. (B, A) and (B, A). With
    `dim=None` this is sum(values*mask)/sum(mask) over everything, the
    normaliser both PPO losses use. An all-zero mask gives 0, not NaN: a
    batch whose answers were all empty then contributes a zero gradient
    instead of poisoning the step (see [Note: answer filtering] in trainer.py).
    """
    mask = mask.to(values.dtype)
    total = (values * mask).sum() if dim is None else (values * mask).sum(dim=dim)
    count = mask.sum() if dim is None else mask.sum(dim=dim)
    return total / count.clamp(min=1.0)


def gather_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Log-probability of each label under its logits.

    logits: (B, L, V); labels: (B, L) token ids. Returns (B, L). The caller
    does the shift: `gather_log_probs(logits[:, :-1], seq[:, 1:])` gives the
    (B, L-1) action log-probs.
    """
    log_probs = F.log_softmax(logits, dim=-1)
    return log_probs.gather(dim=-1, index=labels.unsqueeze(-1)).squeeze(-1)


def _answer_ends(start: int, action_mask: torch.Tensor) -> torch.Tensor:
    """`ends = start + n + 1` per row (B,), as in [Note: reward placement]."""
    return start + action_mask[:, start:].sum(dim=1).long() + 1


def reward_positions(start: int, action_mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Where each row's score goes, and where zeroing starts.

    action_mask: (B, L-1). Returns `(ends, pos)`, both (B,) long:
    `ends = start + n + 1` (zero rewards/values at index >= ends) and
    `pos = min(ends, L-1) - 1`, the action that receives the score
    (the min reproduces the release's slice clamp; see the note above).
    """
    ends = _answer_ends(start, action_mask)
    pos = ends.clamp(max=action_mask.shape[1]) - 1
    return ends, pos


def compute_rewards(prompts: torch.Tensor,
                    log_probs: torch.Tensor,
                    ref_log_probs: torch.Tensor,
                    reward_score: torch.Tensor,
                    action_mask: torch.Tensor,
                    kl_ctl: float = KL_CTL,
                    clip_reward_value: float = CLIP_REWARD_VALUE) -> torch.Tensor:
    """Per-action rewards: a KL penalty everywhere plus the clipped score at the end.

    prompts: (B, P), only its width is used (start = P - 1).
    log_probs, ref_log_probs: (B, L-1) actor and reference action log-probs.
    reward_score: (B,) reward-model score of each full sequence.
    action_mask: (B, L-1) = attention_mask[:, 1:].
    Returns rewards (B, L-1): `-kl_ctl * (log_probs - ref_log_probs)` with
    `clamp(score, ±clip_reward_value)` added at the slot given by
    `reward_positions` ([Note: reward placement]). Positions past `ends`
    are not zeroed here; `zero_after_end` does that, as train_rlhf does.
    """
    rewards = -kl_ctl * (log_probs - ref_log_probs)
    start = prompts.shape[1] - 1
    _, pos = reward_positions(start, action_mask)
    clipped = reward_score.clamp(-clip_reward_value, clip_reward_value).to(rewards.dtype)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    bonus = torch.zeros_like(rewards)
    bonus[rows, pos.to(rewards.device)] = clipped
    return rewards + bonus


def zero_after_end(x: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """A copy of x (B, L-1) with `x[i, ends[i]:] = 0` for every row i."""
    cols = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
    keep = cols < ends.to(x.device).unsqueeze(1)
    return x * keep.to(x.dtype)


def get_advantages_and_returns(values: torch.Tensor,
                               rewards: torch.Tensor,
                               start: int,
                               gamma: float = GAMMA,
                               lam: float = LAM) -> Tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the answer actions (not whitened).

    values, rewards: (B, L-1), already zeroed after the answer end.
    For t from L-2 down to `start`:
        delta_t = r_t + gamma * V_{t+1} - V_t      (V_{L-1} := 0)
        A_t     = delta_t + gamma * lam * A_{t+1}  (A_{L-1} := 0)
    Returns `(advantages, returns)`, each (B, L-1-start); returns = A + V.
    The advantages are detached: they are targets, not part of the graph.
    """
    length = rewards.shape[1]
    last = torch.zeros_like(rewards[:, 0])
    reversed_adv = []
    for t in reversed(range(start, length)):
        next_value = values[:, t + 1] if t < length - 1 else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        reversed_adv.append(last)
    advantages = torch.stack(reversed_adv[::-1], dim=1)
    returns = advantages + values[:, start:]
    return advantages.detach(), returns


def whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """`(values - mean) / sqrt(var + eps)`, with mean and (biased) variance over the positions where `mask` is 1.

    values, mask: (B, A). Positions outside the mask are shifted and scaled
    too (they are masked out of the losses anyway). Why (step 3's
    `--whiten_advantages`): GAE with a critic that is still far from the
    returns gives every sampled token an advantage with one large common
    offset; PPO then raises (or lowers) the probability of whatever was
    sampled, right or wrong alike, and only the small remainder carries
    the reward's ranking. Whitening per batch keeps the ranking and drops
    the offset. With fewer than two masked positions the input is
    returned unchanged (a variance needs two).
    """
    weights = mask.to(values.dtype)
    count = weights.sum()
    if float(count) < 2:
        return values
    mean = (values * weights).sum() / count
    var = (((values - mean)**2) * weights).sum() / count
    return (values - mean) * torch.rsqrt(var + eps)


def ppo_targets(prompts: torch.Tensor,
                log_probs: torch.Tensor,
                ref_log_probs: torch.Tensor,
                reward_score: torch.Tensor,
                values: torch.Tensor,
                action_mask: torch.Tensor,
                kl_ctl: float = KL_CTL,
                clip_reward_value: float = CLIP_REWARD_VALUE,
                gamma: float = GAMMA,
                lam: float = LAM,
                whiten_advantages: bool = False) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The no-grad half of `train_rlhf`: rewards, end zeroing and GAE.

    Inputs as in `compute_rewards`, plus `values` (B, L-1), the old critic
    values. Returns `(rewards, old_values, advantages, returns)`: the first
    two (B, L-1) zeroed from `ends` on, the last two (B, L-1-start).
    Unlike the release, the caller's `values` is not modified in place.
    With `whiten_advantages` (off in the release) the advantages are
    whitened over the answer actions (`whiten`); the returns, the critic's
    targets, are computed before that and do not change.
    """
    start = prompts.shape[1] - 1
    ends, _ = reward_positions(start, action_mask)
    rewards = compute_rewards(prompts, log_probs, ref_log_probs, reward_score, action_mask, kl_ctl,
                              clip_reward_value)
    rewards = zero_after_end(rewards, ends)
    old_values = zero_after_end(values, ends)
    advantages, returns = get_advantages_and_returns(old_values, rewards, start, gamma, lam)
    if whiten_advantages:
        advantages = whiten(advantages, action_mask[:, start:])
    return rewards, old_values, advantages, returns


def actor_loss_fn(logprobs: torch.Tensor,
                  old_logprobs: torch.Tensor,
                  advantages: torch.Tensor,
                  mask: torch.Tensor,
                  cliprange: float = CLIPRANGE) -> torch.Tensor:
    """Clipped policy-gradient loss (scalar).

    All inputs (B, A) over the answer actions `[start:]`.
    ratio = exp((logprobs - old_logprobs) * mask);
    loss = sum(max(-A * ratio, -A * clip(ratio, 1-c, 1+c)) * mask) / sum(mask).
    """
    ratio = torch.exp((logprobs - old_logprobs) * mask)
    loss_unclipped = -advantages * ratio
    loss_clipped = -advantages * ratio.clamp(1.0 - cliprange, 1.0 + cliprange)
    return masked_mean(torch.max(loss_unclipped, loss_clipped), mask)


def critic_loss_fn(values: torch.Tensor,
                   old_values: torch.Tensor,
                   returns: torch.Tensor,
                   mask: torch.Tensor,
                   cliprange_value: float = CLIPRANGE_VALUE,
                   compute_fp32_loss: bool = False) -> torch.Tensor:
    """Clipped value loss (scalar).

    All inputs (B, A) over the answer actions `[start:]`.
    v_clip = clamp(values, old_values ± c);
    loss = 0.5 * sum(max((v - R)^2, (v_clip - R)^2) * mask) / sum(mask).
    `compute_fp32_loss` squares in fp32, so fp16 values cannot overflow.
    """
    clipped = torch.clamp(values, old_values - cliprange_value, old_values + cliprange_value)
    if compute_fp32_loss:
        values, clipped, returns = values.float(), clipped.float(), returns.float()
    loss_unclipped = (values - returns)**2
    loss_clipped = (clipped - returns)**2
    return 0.5 * masked_mean(torch.max(loss_unclipped, loss_clipped), mask)
