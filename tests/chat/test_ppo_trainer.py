"""DeepSpeedPPOTrainer control flow, with fake engines (no real model needed).

Covers align_overflow (spec §8 step 5), the step order of train_rlhf, the
answer filter of `_generate_sequence` and its rank-safe fallbacks, the
generation arguments, dropout handling while scoring, and the unsupervised
step. The real-model path is tested in test_rlhf_engine.py.
"""
import argparse
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from dschat.ppo.experience import Experience
from dschat.ppo.losses import actor_loss_fn, critic_loss_fn, gather_log_probs, ppo_targets
from dschat.ppo.trainer import DeepSpeedPPOTrainer, DeepSpeedPPOTrainerUnsupervised, align_overflow

PAD = 0


class FakeWrappedOptimizer:
    """The part of DeepSpeed's optimizer wrapper that align_overflow uses."""

    def __init__(self, overflow: bool, log: list, name: str) -> None:
        self._will_overflow = overflow
        self.overflow = False
        self.skip_step = False
        self.log, self.name = log, name

    def check_overflow(self, external: bool = False) -> bool:
        assert external, "align_overflow must ask for the external (pre-step) check"
        self.log.append(f"{self.name}.check_overflow")
        self.overflow = self._will_overflow
        return self.overflow


@pytest.mark.parametrize("actor_of,critic_of,actor_skip,critic_skip", [
    (False, False, False, False),
    (True, False, False, True),
    (False, True, True, False),
    (True, True, False, False),
])
def test_align_overflow_sets_skip_step_on_the_other(actor_of, critic_of, actor_skip, critic_skip):
    log = []
    actor, critic = FakeWrappedOptimizer(actor_of, log, "actor"), FakeWrappedOptimizer(critic_of, log, "critic")
    assert align_overflow(actor, critic) == (actor_of, critic_of)
    assert (actor.skip_step, critic.skip_step) == (actor_skip, critic_skip)
    assert log == ["actor.check_overflow", "critic.check_overflow"]


def test_align_overflow_guards_raw_torch_optimizer():
    # fp32 ZeRO-0 exposes a plain torch optimizer: no check_overflow / skip_step.
    raw = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    log = []
    wrapped = FakeWrappedOptimizer(True, log, "critic")
    assert align_overflow(raw, wrapped) == (False, True)
    assert not hasattr(raw, "skip_step")
    assert align_overflow(raw, None) == (False, False)


# ------------------------------------------------------------ fake engines
class TinyLM(nn.Module):
    """Embedding + linear head; `generate` returns queued sequences."""

    def __init__(self, vocab=11, dim=8, model_type="opt"):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(dim, vocab)
        self.config = SimpleNamespace(model_type=model_type)
        self.generated = []
        self.generate_calls = []
        self.seen_training = []

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=None, labels=None):
        self.seen_training.append(self.drop.training)
        logits = self.head(self.drop(self.emb(input_ids)))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
        return SimpleNamespace(logits=logits, loss=loss)

    def generate(self, prompts, **kwargs):
        self.generate_calls.append(kwargs)
        return self.generated.pop(0)


class TinyCritic(nn.Module):

    def __init__(self, vocab=11):
        super().__init__()
        self.emb = nn.Embedding(vocab, 1)
        self.seen_training = []

    def forward_value(self, input_ids, attention_mask=None, return_value_only=False, prompt_length=0,
                      use_cache=False):
        self.seen_training.append(self.training)
        values = self.emb(input_ids).squeeze(-1)
        if return_value_only:
            return values
        return {"values": values, "chosen_end_scores": values[:, -1]}


class FakeEngine(nn.Module):
    """Records backward/step calls the way the trainer drives a DeepSpeed engine."""

    def __init__(self, module, name, log, optimizer=None):
        super().__init__()
        self.module = module
        self.name, self.log = name, log
        self.optimizer = optimizer
        self.backward_losses = []

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def forward_value(self, *args, **kwargs):
        return self.module.forward_value(*args, **kwargs)

    def backward(self, loss):
        self.log.append(f"{self.name}.backward")
        self.backward_losses.append(loss.detach().clone())
        loss.backward()

    def step(self):
        self.log.append(f"{self.name}.step")


def make_trainer(args=None, model_type="opt", actor_opt=None, critic_opt=None, cls=DeepSpeedPPOTrainer):
    log = []
    torch.manual_seed(0)
    engine = SimpleNamespace(actor=FakeEngine(TinyLM(model_type=model_type), "actor", log, actor_opt),
                             ref=FakeEngine(TinyLM(), "ref", log),
                             critic=FakeEngine(TinyCritic(), "critic", log, critic_opt),
                             reward=FakeEngine(TinyCritic(), "reward", log),
                             tokenizer=SimpleNamespace(pad_token_id=PAD,
                                                       batch_decode=lambda x, **kw: [str(r) for r in x.tolist()]))
    defaults = dict(max_answer_seq_len=4, actor_zero_stage=2, align_overflow=False, print_answers=False)
    defaults.update(args or {})
    return cls(engine, argparse.Namespace(**defaults)), engine, log


def make_experience(b=2, p=3, length=7):
    torch.manual_seed(1)
    seq = torch.randint(1, 11, (b, length))
    seq[0, 5:] = PAD  # row 0: 2 answer tokens then pads
    mask = seq.ne(PAD).long()
    return Experience(prompts=seq[:, :p], seq=seq, logprobs=-torch.rand(b, length - 1),
                      ref_logprobs=-torch.rand(b, length - 1), value=torch.randn(b, length - 1),
                      rewards=torch.tensor([1.0, -2.0]), attention_mask=mask)


# ---------------------------------------------------------------- training
def test_train_rlhf_step_order_without_align():
    trainer, _, log = make_trainer()
    trainer.train_rlhf(make_experience())
    assert log == ["actor.backward", "actor.step", "critic.backward", "critic.step"]


def test_train_rlhf_align_overflow_postpones_actor_step():
    log_opt = []
    actor_opt = FakeWrappedOptimizer(False, log_opt, "actor")
    critic_opt = FakeWrappedOptimizer(True, log_opt, "critic")
    trainer, _, log = make_trainer({"align_overflow": True}, actor_opt=actor_opt, critic_opt=critic_opt)
    trainer.train_rlhf(make_experience())
    assert log == ["actor.backward", "critic.backward", "actor.step", "critic.step"]
    assert log_opt == ["actor.check_overflow", "critic.check_overflow"]
    assert actor_opt.skip_step and not critic_opt.skip_step  # critic overflowed -> actor skips too
    assert trainer.get_overflow() == (False, True)


def test_train_rlhf_losses_match_plain_torch_reference():
    trainer, engine, _ = make_trainer()
    engine.actor.module.drop.p = 0.0  # deterministic forward, so the loss can be recomputed
    exp = make_experience()
    original_value = exp.value.clone()
    actor_loss, critic_loss = trainer.train_rlhf(exp)
    # Reference: the same maths written out on the fake models (their step()
    # is a no-op, so the parameters are the ones train_rlhf used).
    start = exp.prompt_length - 1
    am = exp.attention_mask[:, 1:]
    _, old_values, adv, ret = ppo_targets(exp.prompts, exp.logprobs, exp.ref_logprobs, exp.rewards, original_value,
                                          am)
    with torch.no_grad():
        lp = gather_log_probs(engine.actor.module(exp.seq).logits[:, :-1], exp.seq[:, 1:])
        values = engine.critic.module.forward_value(exp.seq, return_value_only=True)[:, :-1]
    torch.testing.assert_close(actor_loss.detach(), actor_loss_fn(lp[:, start:], exp.logprobs[:, start:], adv,
                                                                  am[:, start:]))
    torch.testing.assert_close(critic_loss.detach(), critic_loss_fn(values[:, start:], old_values[:, start:], ret,
                                                                    am[:, start:]))
    # gradients reached both models
    assert engine.actor.module.head.weight.grad is not None and engine.critic.module.emb.weight.grad is not None
    # the experience itself is not mutated (the release zeroed values in place)
    torch.testing.assert_close(exp.value, original_value)


def test_train_rlhf_critic_warmup_leaves_the_actor_alone():
    # --critic_warmup_steps: train_actor=False -> no actor backward/step (not even with align_overflow),
    # no actor gradient, the critic trains as usual and both losses are still reported.
    log_opt = []
    actor_opt, critic_opt = FakeWrappedOptimizer(False, log_opt, "actor"), FakeWrappedOptimizer(False, log_opt, "critic")
    trainer, engine, log = make_trainer({"align_overflow": True}, actor_opt=actor_opt, critic_opt=critic_opt)
    actor_loss, critic_loss = trainer.train_rlhf(make_experience(), train_actor=False)
    assert log == ["critic.backward", "critic.step"]
    assert log_opt == []
    assert engine.actor.module.head.weight.grad is None and engine.critic.module.emb.weight.grad is not None
    assert torch.isfinite(actor_loss) and torch.isfinite(critic_loss) and not actor_loss.requires_grad


def test_train_rlhf_whiten_advantages_flag_matches_reference():
    trainer, engine, _ = make_trainer({"whiten_advantages": True})
    engine.actor.module.drop.p = 0.0
    exp = make_experience()
    am = exp.attention_mask[:, 1:]
    start = exp.prompt_length - 1
    _, _, adv, _ = ppo_targets(exp.prompts, exp.logprobs, exp.ref_logprobs, exp.rewards, exp.value, am,
                               whiten_advantages=True)
    actor_loss, _ = trainer.train_rlhf(exp)
    with torch.no_grad():
        lp = gather_log_probs(engine.actor.module(exp.seq).logits[:, :-1], exp.seq[:, 1:])
    torch.testing.assert_close(actor_loss.detach(), actor_loss_fn(lp[:, start:], exp.logprobs[:, start:], adv,
                                                                  am[:, start:]))
    assert make_trainer()[0].whiten_advantages is False  # DS-Chat default


def test_train_unsupervised_scales_backward_only():
    trainer, engine, log = make_trainer(cls=DeepSpeedPPOTrainerUnsupervised)
    ids = torch.randint(1, 11, (2, 5))
    loss = trainer.train_unsupervised({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids},
                                      unsup_coef=27.8)
    assert log == ["actor.backward", "actor.step"]
    torch.testing.assert_close(engine.actor.backward_losses[0], 27.8 * loss.detach())


def test_get_overflow_without_wrapper_is_false():
    trainer, _, _ = make_trainer(actor_opt=torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0))
    assert trainer.get_overflow() == (False, False)


# -------------------------------------------------------------- generation
def _prompts():
    prompts = torch.tensor([[0, 5, 6], [7, 8, 9]])
    return prompts, prompts.ne(PAD).long()


def test_generate_sequence_arguments_and_filter():
    trainer, engine, _ = make_trainer({"actor_zero_stage": 3})
    prompts, mask = _prompts()
    # row 0 answer has 2 real tokens (kept); row 1 has 1 (dropped, spec §8)
    seq = torch.tensor([[0, 5, 6, 3, 4, 0, 0], [7, 8, 9, 3, 0, 0, 0]])
    engine.actor.module.generated.append(seq)
    out = trainer._generate_sequence(prompts, mask, step=0)
    assert torch.equal(out, seq[:1])
    call = engine.actor.module.generate_calls[0]
    assert call["max_length"] == 3 + 4 and call["pad_token_id"] == PAD
    assert call["synced_gpus"] is True  # actor ZeRO-3 keeps ranks generating in lock-step
    assert "min_length" not in call and "do_sample" not in call
    assert torch.equal(call["attention_mask"], mask)


def test_generate_sequence_llama_is_greedy_and_z2_not_synced():
    trainer, engine, _ = make_trainer(model_type="llama")
    prompts, mask = _prompts()
    engine.actor.module.generated.append(torch.tensor([[0, 5, 6, 3, 4, 5, 0], [7, 8, 9, 3, 4, 0, 0]]))
    trainer._generate_sequence(prompts, mask, step=0)
    call = engine.actor.module.generate_calls[0]
    assert call["do_sample"] is False and call["synced_gpus"] is False


def test_generate_sequence_all_empty_reuses_last_valid_or_keeps_batch():
    trainer, engine, _ = make_trainer()
    prompts, mask = _prompts()
    empty = torch.tensor([[0, 5, 6, 0, 0, 0, 0], [7, 8, 9, 3, 0, 0, 0]])
    # No usable batch yet: the batch is kept whole so this rank still trains
    # (with a zero loss) instead of skipping the step the other ranks take.
    engine.actor.module.generated.append(empty)
    assert torch.equal(trainer._generate_sequence(prompts, mask, step=0), empty)
    good = torch.tensor([[0, 5, 6, 3, 4, 0, 0], [7, 8, 9, 3, 4, 5, 6]])
    engine.actor.module.generated += [good, empty]
    assert torch.equal(trainer._generate_sequence(prompts, mask, step=1), good)
    assert torch.equal(trainer._generate_sequence(prompts, mask, step=2), good)  # reused (#778)


def test_empty_answer_batch_gives_zero_finite_losses():
    trainer, _, _ = make_trainer()
    seq = torch.tensor([[4, 5, 6, 0, 0], [7, 8, 9, 0, 0]])
    exp = Experience(prompts=seq[:, :3], seq=seq, logprobs=torch.zeros(2, 4), ref_logprobs=torch.zeros(2, 4),
                     value=torch.zeros(2, 4), rewards=torch.ones(2), attention_mask=seq.ne(PAD).long())
    actor_loss, critic_loss = trainer.train_rlhf(exp)
    assert float(actor_loss.detach()) == 0.0 and float(critic_loss.detach()) == 0.0


def test_generate_experience_scores_without_dropout_and_restores_modes(capsys):
    trainer, engine, _ = make_trainer({"print_answers": True, "print_answers_interval": 2})
    prompts, mask = _prompts()
    seq = torch.tensor([[0, 5, 6, 3, 4, 0, 0], [7, 8, 9, 3, 4, 5, 6]])
    engine.actor.module.generated.append(seq)
    engine.actor.train()
    exp = trainer.generate_experience(prompts, mask, step=4)
    exp.validate()
    assert exp.seq.shape == (2, 7) and exp.logprobs.shape == (2, 6) and exp.rewards.shape == (2, )
    assert torch.equal(exp.attention_mask, seq.ne(PAD).long())
    assert not exp.logprobs.requires_grad and not exp.value.requires_grad
    # scoring ran with dropout off (deterministic old log-probs), ...
    assert engine.actor.module.seen_training == [False]
    assert engine.critic.module.seen_training == [False]
    # ... and the trainable models are back in train mode afterwards
    assert engine.actor.training and engine.actor.module.drop.training and engine.critic.training
    # deterministic: the same log-probs in eval mode
    engine.actor.module.eval()
    with torch.no_grad():
        expect = gather_log_probs(engine.actor.module(seq).logits[:, :-1], seq[:, 1:])
    torch.testing.assert_close(exp.logprobs, expect)
    assert "answer" in capsys.readouterr().out  # step 4 is a multiple of interval 2
    assert math.isfinite(trainer.generate_time)


def test_minidataset_cuts_experience_into_micro_batches():
    from dschat.data.collators import MiniDataset
    buffer = MiniDataset(max_size=2, small_batch_size=1)
    assert buffer.add(make_experience()) is None
    micro = buffer.add(make_experience())
    assert len(micro) == 4 and all(isinstance(m, Experience) and len(m) == 1 for m in micro)
    micro[1].validate()


def test_dump_model_norms_matches_torch():
    trainer, engine, _ = make_trainer()
    norms = trainer.dump_model_norms("check")
    expect = torch.cat([p.detach().flatten() for p in engine.critic.module.parameters()]).norm()
    assert math.isclose(norms["critic"], float(expect), rel_tol=1e-5)


def test_generation_kwargs_do_sample_is_a_public_option():
    """`--do_sample` samples even for Llama (which DS-Chat forces greedy), with temperature and top-k."""
    trainer, engine, _ = make_trainer({"do_sample": True, "temperature": 0.7, "top_k": 5}, model_type="llama")
    assert trainer.generation_kwargs() == {"do_sample": True, "temperature": 0.7, "top_k": 5}
    prompts, mask = _prompts()
    engine.actor.module.generated.append(torch.tensor([[0, 5, 6, 3, 4, 5, 0], [7, 8, 9, 3, 4, 0, 0]]))
    trainer._generate_sequence(prompts, mask, step=0)
    call = engine.actor.module.generate_calls[0]
    assert call["do_sample"] is True and call["temperature"] == 0.7 and call["top_k"] == 5
    greedy, _, _ = make_trainer({"do_sample": False}, model_type="llama")
    assert greedy.generation_kwargs() == {"do_sample": False}
    default, _, _ = make_trainer(model_type="opt")
    assert default.generation_kwargs() == {}
