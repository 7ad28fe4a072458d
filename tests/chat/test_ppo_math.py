"""PPO maths of step 3 against values worked out by hand (spec §8).

Conventions (see [Note: reward placement] in dschat/ppo/losses.py): P is the
prompt width, L the sequence length, actions t = 0..L-2 produce token t+1,
action_mask = attention_mask[:, 1:], start = P - 1.
"""
import math

import pytest
import torch

from dschat.ppo.experience import Experience
from dschat.ppo.losses import (actor_loss_fn, compute_rewards, critic_loss_fn, gather_log_probs,
                               get_advantages_and_returns, masked_mean, ppo_targets, reward_positions, whiten,
                               zero_after_end)

T = torch.tensor


def close(a, b, tol=1e-6):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32),
                               atol=tol, rtol=0)


# ---------------------------------------------------------------- basics
def test_gather_log_probs_hand():
    # logits [0, 0, ln 2] -> softmax [1/4, 1/4, 1/2]
    logits = T([[[0.0, 0.0, math.log(2.0)], [0.0, 0.0, math.log(2.0)]]])
    labels = T([[2, 0]])
    close(gather_log_probs(logits, labels), [[math.log(0.5), math.log(0.25)]])


def test_masked_mean_hand_and_empty_mask():
    close(masked_mean(T([1.0, 2.0, 4.0]), T([1, 0, 1])), 2.5)
    close(masked_mean(T([[1.0, 3.0], [5.0, 7.0]]), T([[1, 1], [0, 1]]), dim=1), [2.0, 7.0])
    # An all-pad answer must not give NaN (it would poison a distributed step).
    close(masked_mean(T([1.0, 2.0]), T([0, 0])), 0.0)


# ------------------------------------------------------- compute_rewards
def test_compute_rewards_places_score_one_past_last_answer_token():
    # P=2, L=6: seq = [p0 p1 a0 a1 PAD PAD]; attention = [1 1 1 1 0 0]
    # action_mask = attention[1:] = [1 1 1 0 0]; start = 1
    # n = sum(action_mask[1:]) = 2 -> ends = 1 + 2 + 1 = 4 -> score at action 3,
    # the action that predicts seq[4] (the first pad after a1). The pre-#620
    # placement would have been action 2 (the one that produced a1).
    prompts = torch.zeros(1, 2, dtype=torch.long)
    attention = T([[1, 1, 1, 1, 0, 0]])
    action_mask = attention[:, 1:]
    logp = T([[-1.0, -2.0, -0.5, -1.5, -3.0]])
    ref = T([[-1.0, -1.0, -1.0, -1.0, -1.0]])
    # logp - ref = [0, -1, 0.5, -0.5, -2]; -0.1 * that = [0, 0.1, -0.05, 0.05, 0.2]
    # score 7 clipped to 5 -> added at action 3: 0.05 + 5 = 5.05
    rewards = compute_rewards(prompts, logp, ref, T([7.0]), action_mask)
    close(rewards, [[0.0, 0.1, -0.05, 5.05, 0.2]])
    ends, pos = reward_positions(1, action_mask)
    assert ends.tolist() == [4] and pos.tolist() == [3]
    # zeroing from `ends` on removes the KL term of action 4 only
    close(zero_after_end(rewards, ends), [[0.0, 0.1, -0.05, 5.05, 0.0]])
    # inputs are not modified
    close(logp, [[-1.0, -2.0, -0.5, -1.5, -3.0]])


def test_compute_rewards_batch_of_two_and_negative_clip():
    # P=2, L=5. row 0: [p p a a PAD] -> action [1 1 1 0], n=2, ends=4, score at 3
    #           row 1: [p p a PAD PAD] -> action [1 1 0 0], n=1, ends=3, score at 2
    prompts = torch.zeros(2, 2, dtype=torch.long)
    action_mask = T([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])[:, 1:]
    zeros = torch.zeros(2, 4)
    rewards = compute_rewards(prompts, zeros, zeros, T([1.5, -6.0]), action_mask)
    close(rewards, [[0.0, 0.0, 0.0, 1.5], [0.0, 0.0, -5.0, 0.0]])
    # kl_ctl and clip are honoured: 0.5 * (ref - logp) and clip at 1
    rewards = compute_rewards(prompts, zeros + 1.0, zeros, T([1.5, -6.0]), action_mask, kl_ctl=0.5,
                              clip_reward_value=1.0)
    close(rewards, [[-0.5, -0.5, -0.5, 0.5], [-0.5, -0.5, -1.5, -0.5]])


def test_compute_rewards_full_length_answer_clamps_to_last_action():
    # P=2, L=5, no pad in the answer: n = 3, ends = 1+3+1 = 5 = L, one past the
    # last action (L-2 = 3). The release's slice clamps, so the score sits at 3.
    prompts = torch.zeros(1, 2, dtype=torch.long)
    action_mask = torch.ones(1, 4)
    zeros = torch.zeros(1, 4)
    close(compute_rewards(prompts, zeros, zeros, T([-9.0]), action_mask), [[0.0, 0.0, 0.0, -5.0]])
    ends, pos = reward_positions(1, action_mask)
    assert ends.tolist() == [5] and pos.tolist() == [3]


def test_left_padded_prompt_does_not_move_start():
    # P=3 with a left pad: prompt attention [0 1 1]; answer [a PAD]
    # seq attention = [0 1 1 1 0], action = [1 1 1 0], start = 2,
    # n = sum(action[2:]) = 1, ends = 4 -> score at 3 (predicts the pad)
    prompts = torch.zeros(1, 3, dtype=torch.long)
    action_mask = T([[0, 1, 1, 1, 0]])[:, 1:]
    zeros = torch.zeros(1, 4)
    close(compute_rewards(prompts, zeros, zeros, T([2.0]), action_mask), [[0.0, 0.0, 0.0, 2.0]])


# ------------------------------------------------------------------ GAE
def test_gae_hand_lambda_095():
    # actions 0..3, start = 1; V = [9, 1, 2, 0.5], r = [9, 0.1, 0, 1]
    # t=3: delta = 1 + 0 - 0.5 = 0.5                  A3 = 0.5
    # t=2: delta = 0 + 0.5 - 2 = -1.5                 A2 = -1.5 + 0.95*0.5 = -1.025
    # t=1: delta = 0.1 + 2 - 1 = 1.1                  A1 = 1.1 + 0.95*(-1.025) = 0.12625
    # returns = A + V[1:] = [1.12625, 0.975, 1.0]; index 0 (prompt) is excluded
    values = T([[9.0, 1.0, 2.0, 0.5]])
    rewards = T([[9.0, 0.1, 0.0, 1.0]])
    adv, ret = get_advantages_and_returns(values, rewards, start=1)
    close(adv, [[0.12625, -1.025, 0.5]])
    close(ret, [[1.12625, 0.975, 1.0]])
    assert not adv.requires_grad


def test_gae_hand_discounted():
    # same inputs, gamma = lam = 0.5 (gamma*lam = 0.25)
    # t=3: delta = 0.5                      A3 = 0.5
    # t=2: delta = 0 + 0.5*0.5 - 2 = -1.75  A2 = -1.75 + 0.25*0.5 = -1.625
    # t=1: delta = 0.1 + 0.5*2 - 1 = 0.1    A1 = 0.1 + 0.25*(-1.625) = -0.30625
    values = T([[9.0, 1.0, 2.0, 0.5]])
    rewards = T([[9.0, 0.1, 0.0, 1.0]])
    adv, ret = get_advantages_and_returns(values, rewards, start=1, gamma=0.5, lam=0.5)
    close(adv, [[-0.30625, -1.625, 0.5]])
    close(ret, [[0.69375, 0.375, 1.0]])


def test_ppo_targets_zeroes_values_after_end():
    # P=2, L=5: [p p a PAD PAD] -> action [1 1 0 0], start=1, n=1, ends=3, score at 2
    # logp == ref -> no KL. score 2 -> rewards [0 0 2 0]
    # values [5 1 1 7] -> zeroed from 3: [5 1 1 0]
    # t=3: delta = 0 + 0 - 0 = 0       A3 = 0
    # t=2: delta = 2 + 0 - 1 = 1       A2 = 1
    # t=1: delta = 0 + 1 - 1 = 0       A1 = 0.95
    # returns = [0.95+1, 1+1, 0+0] = [1.95, 2, 0]
    # (without the zeroing, V3 = 7 would make delta_2 = 8.)
    prompts = torch.zeros(1, 2, dtype=torch.long)
    action_mask = T([[1, 1, 1, 0, 0]])[:, 1:]
    logp = T([[-1.0, -1.0, -1.0, -1.0]])
    values = T([[5.0, 1.0, 1.0, 7.0]])
    rewards, old_values, adv, ret = ppo_targets(prompts, logp, logp.clone(), T([2.0]), values, action_mask)
    close(rewards, [[0.0, 0.0, 2.0, 0.0]])
    close(old_values, [[5.0, 1.0, 1.0, 0.0]])
    close(adv, [[0.95, 1.0, 0.0]])
    close(ret, [[1.95, 2.0, 0.0]])
    close(values, [[5.0, 1.0, 1.0, 7.0]])  # the experience is not mutated


def test_whiten_hand_uses_masked_positions_only():
    # masked values [1, 3, 5, 7] (the 100 is masked out): mean 4, biased var (9+1+1+9)/4 = 5
    # -> (x - 4) / sqrt(5 + 1e-8)
    values = T([[1.0, 3.0, 100.0], [5.0, 7.0, 0.0]])
    mask = T([[1, 1, 0], [1, 1, 0]])
    out = whiten(values, mask)
    s5 = 5.0**0.5
    close(out[:, :2], [[-3 / s5, -1 / s5], [1 / s5, 3 / s5]])
    close(out[0, 2], (100.0 - 4.0) / s5, tol=1e-4)  # shifted and scaled too, then masked by the losses
    close(values, [[1.0, 3.0, 100.0], [5.0, 7.0, 0.0]])  # not modified in place


def test_whiten_needs_two_positions():
    values = T([[2.5, 9.0]])
    close(whiten(values, T([[1, 0]])), [[2.5, 9.0]])


def test_ppo_targets_whitens_advantages_but_not_returns():
    # P=2, L=6: [p p a a PAD PAD] -> action mask [1 1 1 0 0], start=1, n=2, ends=4, score 2 at action 3
    # logp == ref -> rewards [0 0 0 2 0]; values [5 1 1 1 7] -> zeroed from 4: [5 1 1 1 0]
    # t=4: A=0; t=3: delta=2-1=1, A=1; t=2: delta=1-1=0, A=0.95; t=1: A=0.9025
    # A = [0.9025, 0.95, 1, 0], answer mask [1 1 0 0]: mean 0.92625, std 0.02375
    # -> whitened [-1, 1, 0.07375/0.02375, -39]; returns A + V = [1.9025, 1.95, 2, 0] unchanged
    prompts = torch.zeros(1, 2, dtype=torch.long)
    action_mask = T([[1, 1, 1, 1, 0, 0]])[:, 1:]
    logp = T([[-1.0] * 5])
    values = T([[5.0, 1.0, 1.0, 1.0, 7.0]])
    _, _, adv, ret = ppo_targets(prompts, logp, logp.clone(), T([2.0]), values, action_mask, whiten_advantages=True)
    close(adv, [[-1.0, 1.0, 0.07375 / 0.02375, -39.0]], tol=1e-3)  # eps 1e-8 next to var 5.6e-4
    close(ret, [[1.9025, 1.95, 2.0, 0.0]])
    _, _, plain, _ = ppo_targets(prompts, logp, logp.clone(), T([2.0]), values, action_mask)
    close(plain, [[0.9025, 0.95, 1.0, 0.0]])


# --------------------------------------------------------------- losses
def test_actor_loss_hand():
    # ratios r = [1.5, 0.5, 1.1]; A = [1, 1, -2]; clip to [0.8, 1.2]
    # pos0: max(-1.5, -1.2) = -1.2; pos1: max(-0.5, -0.8) = -0.5; pos2: max(2.2, 2.2) = 2.2
    old = torch.zeros(1, 3)
    new = T([[math.log(1.5), math.log(0.5), math.log(1.1)]])
    adv = T([[1.0, 1.0, -2.0]])
    close(actor_loss_fn(new, old, adv, torch.ones(1, 3)), 0.5 / 3)
    # masked position 2 drops out of sum and count: (-1.2 - 0.5) / 2
    close(actor_loss_fn(new, old, adv, T([[1.0, 1.0, 0.0]])), -0.85)
    # negative advantage with a small ratio is pessimistic: A=-1, r=0.5 ->
    # max(0.5, 0.8) = 0.8
    close(actor_loss_fn(T([[math.log(0.5)]]), T([[0.0]]), T([[-1.0]]), T([[1.0]])), 0.8)


def test_actor_loss_gradient_is_zero_when_clipped():
    # A > 0 and r = 1.5 > 1.2: the clipped branch wins, no gradient flows.
    new = T([[math.log(1.5)]]).requires_grad_()
    actor_loss_fn(new, T([[0.0]]), T([[1.0]]), T([[1.0]])).backward()
    close(new.grad, [[0.0]])
    # inside the trust region the gradient is -A * r = -1.1
    new = T([[math.log(1.1)]]).requires_grad_()
    actor_loss_fn(new, T([[0.0]]), T([[1.0]]), T([[1.0]])).backward()
    close(new.grad, [[-1.1]], tol=1e-5)


def test_critic_loss_hand():
    # v = [1, 0, 2], old = 0.5 -> v_clip = [0.7, 0.3, 0.7]; R = [2, 0, 0]
    # pos0: max(1, 1.69) = 1.69; pos1: max(0, 0.09) = 0.09; pos2: max(4, 0.49) = 4
    v = T([[1.0, 0.0, 2.0]])
    old = T([[0.5, 0.5, 0.5]])
    ret = T([[2.0, 0.0, 0.0]])
    close(critic_loss_fn(v, old, ret, torch.ones(1, 3)), 0.5 * 5.78 / 3)
    close(critic_loss_fn(v, old, ret, T([[1.0, 0.0, 1.0]])), 0.5 * 5.69 / 2)
    half = critic_loss_fn(v.half(), old.half(), ret.half(), torch.ones(1, 3), compute_fp32_loss=True)
    assert half.dtype == torch.float32
    close(half, 0.5 * 5.78 / 3, tol=1e-3)


# ----------------------------------------------------------- Experience
def _experience(b=3, p=4, length=7):
    return Experience(prompts=torch.zeros(b, p, dtype=torch.long),
                      seq=torch.arange(b * length).view(b, length),
                      logprobs=torch.randn(b, length - 1),
                      ref_logprobs=torch.randn(b, length - 1),
                      value=torch.randn(b, length - 1),
                      rewards=torch.randn(b),
                      attention_mask=torch.ones(b, length, dtype=torch.long))


def test_experience_shapes_slicing_and_dict_round_trip():
    exp = _experience()
    exp.validate()
    assert len(exp) == 3 and exp.prompt_length == 4
    assert exp.action_mask.shape == (3, 6)
    part = exp[1:3]
    assert len(part) == 2 and torch.equal(part.seq, exp.seq[1:3])
    assert len(exp[0]) == 1
    d = exp.to_dict()
    assert set(d) == {"prompts", "input_ids", "logprobs", "ref_logprobs", "value", "rewards", "attention_mask"}
    back = Experience.from_dict(d)
    assert torch.equal(back.seq, exp.seq) and torch.equal(back.value, exp.value)
    assert exp.to("cpu").seq.device.type == "cpu"
    assert exp["input_ids"] is exp.seq and exp["rewards"] is exp.rewards  # release-style key access


def test_experience_validate_rejects_bad_shape():
    exp = _experience()
    exp.value = exp.value[:, :-1]
    with pytest.raises(ValueError, match="value"):
        exp.validate()
