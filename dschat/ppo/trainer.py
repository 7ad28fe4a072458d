"""The step-3 PPO trainer (spec §8): generate, score, and train actor + critic.

`DeepSpeedPPOTrainer` drives the four engines of a `DeepSpeedRLHFEngine`
(actor, ref, critic, reward) through the public engine API only
(`__call__`, `backward`, `step`, `train`/`eval`, `.module`, `.optimizer`).
The maths lives in losses.py; this file only moves tensors between models.

Deliberate choices where the release has a quirk (spec §13):

* Old log-probs, ref log-probs, values and rewards are computed with
  dropout off. The release computes the actor/critic ones in train mode only
  because it switches back to train() (to leave Hybrid-Engine inference
  mode) before scoring; the result is a noisy baseline for the PPO ratio.
  We still call train() on the engines (so a Hybrid Engine leaves inference
  mode exactly as in the release) but turn dropout off for the scoring
  forwards by flipping `training` flags directly, which touches no engine
  state. With dropout 0 (the recommended recipe) nothing changes.
* The experience is not mutated in place: `ppo_targets` returns zeroed
  copies, so a buffered experience can be trained on for several PPO epochs
  with the same targets.
* Actor and ref get `position_ids` derived from the attention mask, the way
  HF `generate` builds them for left-padded prompts, so a left-padded Llama
  is scored at the positions it generated at (spec §4 "(?)"). For OPT this
  is what its learned positions compute anyway.
* KL at every position and unwhitened advantages are kept as in the release.
  Two opt-in departures (step-3 flags, off by default): `--whiten_advantages`
  whitens the advantages of each micro-batch, and `train_rlhf(...,
  train_actor=False)` updates the critic only (`--critic_warmup_steps`).
"""
import contextlib
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import torch

import deepspeed
from deepspeed import comm as dist
from dschat.ppo.experience import Experience
from dschat.ppo.losses import (CLIP_REWARD_VALUE, CLIPRANGE, CLIPRANGE_VALUE, GAMMA, KL_CTL, LAM, actor_loss_fn,
                               compute_rewards, critic_loss_fn, gather_log_probs, get_advantages_and_returns,
                               ppo_targets)
from dschat.utils import position_ids_from_mask

__all__ = ["DeepSpeedPPOTrainer", "DeepSpeedPPOTrainerUnsupervised", "align_overflow"]


@contextlib.contextmanager
def _dropout_off(*modules: torch.nn.Module) -> Iterator[None]:
    """Set `training=False` on every submodule, then restore each flag.

    Flags are flipped directly instead of calling `.eval()`, because an
    engine's eval() may do more than toggle dropout (the Hybrid Engine
    switches to inference layouts) and LoRA layers override train/eval.
    """
    saved: List[Tuple[torch.nn.Module, bool]] = []
    for module in modules:
        for sub in module.modules():
            saved.append((sub, sub.training))
            sub.training = False
    try:
        yield
    finally:
        for sub, flag in saved:
            sub.training = flag


def _has_overflow_api(optimizer: Any) -> bool:
    return optimizer is not None and hasattr(optimizer, "check_overflow") and hasattr(optimizer, "skip_step")


def align_overflow(actor_optimizer: Any, critic_optimizer: Any) -> Tuple[bool, bool]:
    """Make actor and critic skip the coming step together (`--align_overflow`).

    Called after both backwards and before either step. Each optimizer that
    exposes the DeepSpeed wrapper API checks its reduced gradients
    (`check_overflow(external=True)`, a collective, so every rank calls it in
    the same order); if exactly one overflowed, `skip_step` is set on the
    other so the pair stays in step. A raw torch optimizer (fp32 ZeRO-0)
    has no loss scale and never reports an overflow; it is left alone.
    Returns `(actor_overflow, critic_overflow)`.
    """
    actor_ok, critic_ok = _has_overflow_api(actor_optimizer), _has_overflow_api(critic_optimizer)
    actor_overflow = bool(actor_optimizer.check_overflow(external=True)) if actor_ok else False
    critic_overflow = bool(critic_optimizer.check_overflow(external=True)) if critic_ok else False
    if actor_overflow and not critic_overflow and critic_ok:
        critic_optimizer.skip_step = True
    elif critic_overflow and not actor_overflow and actor_ok:
        actor_optimizer.skip_step = True
    return actor_overflow, critic_overflow


def _logits(output: Any) -> torch.Tensor:
    return output.logits if hasattr(output, "logits") else output[0]


class DeepSpeedPPOTrainer:
    """PPO over the engines of a `DeepSpeedRLHFEngine` (spec §8).

    Args:
        rlhf_engine: holds `actor`, `ref`, `critic`, `reward` engines and `tokenizer`.
        args: the step-3 argparse namespace (max_answer_seq_len,
            actor_zero_stage, align_overflow, print_answers,
            print_answers_interval, compute_fp32_loss, and the sampling
            options do_sample / temperature / top_k of `generation_kwargs`).
    """

    def __init__(self, rlhf_engine: Any, args: Any) -> None:
        self.rlhf_engine = rlhf_engine
        self.actor_model = rlhf_engine.actor
        self.critic_model = rlhf_engine.critic
        self.ref_model = rlhf_engine.ref
        self.reward_model = rlhf_engine.reward
        self.tokenizer = rlhf_engine.tokenizer
        self.args = args
        self.max_answer_seq_len: int = args.max_answer_seq_len
        # Generation must stay in lock-step across ranks under ZeRO-3: a rank
        # that finishes early would otherwise stop joining the parameter
        # all-gathers and hang the others (spec §12 item 4).
        self.z3_enabled: bool = getattr(args, "actor_zero_stage", 0) == 3
        self.compute_fp32_loss: bool = bool(getattr(args, "compute_fp32_loss", False))
        # The release's fixed constants; attributes so experiments can override them.
        self.kl_ctl = KL_CTL
        self.clip_reward_value = CLIP_REWARD_VALUE
        self.cliprange = CLIPRANGE
        self.cliprange_value = CLIPRANGE_VALUE
        self.gamma = GAMMA
        self.lam = LAM
        #: whiten the advantages per micro-batch (`--whiten_advantages`; the release does not)
        self.whiten_advantages: bool = bool(getattr(args, "whiten_advantages", False))
        #: wall time of the last `generate` call, for throughput reports
        self.generate_time = 0.0
        #: (prompt width, seq) of the last batch that had a usable answer
        self._last_valid: Optional[Tuple[int, torch.Tensor]] = None

    # ------------------------------------------------------------ generation
    def generation_kwargs(self) -> Dict[str, Any]:
        """Sampling settings of the experience answers, passed to `generate`.

        Default (DS-Chat, spec §8): Llama is forced greedy, other models keep
        their generation config. `args.do_sample` (step 3's `--do_sample`)
        samples instead, with `args.temperature` and `args.top_k` (0: off).
        Why an option: PPO learns from the *differences* between answers to
        the same kind of prompt; a greedy, nearly deterministic policy
        explores little, which matters most for small models.
        """
        if getattr(self.args, "do_sample", False):
            return {"do_sample": True, "temperature": float(getattr(self.args, "temperature", 1.0)),
                    "top_k": int(getattr(self.args, "top_k", 0))}
        config = getattr(self.actor_model.module, "config", None)
        if getattr(config, "model_type", None) == "llama":
            return {"do_sample": False}
        return {}

    def _generate_sequence(self, prompts: torch.Tensor, mask: torch.Tensor, step: int) -> torch.Tensor:
        """Generate answers for (B, P) left-padded prompts; returns (B', L) sequences.

        [Note: answer filtering]
        Rows whose answer has at most one non-pad token are dropped (spec §8),
        so B' <= B. Dropping rows is local and changes no collective: every
        rank still runs the same number of forwards, backwards and steps,
        whatever its B'. The one desync risk is a rank with *no* usable row:
        the release returns None there and the caller skips the step, while
        the other ranks train and wait forever in the gradient reduction.
        Here such a rank reuses its last usable batch (as the release does
        since #778) and, if it has none yet, keeps the unfiltered batch. Its
        empty answers add nothing to the masked losses (an all-empty batch
        gives 0/0, which `masked_mean` turns into 0), so the rank contributes
        little or no gradient but still joins every collective. No extra
        collective is needed to agree on any of this.
        """
        max_min_length = self.max_answer_seq_len + prompts.shape[1]
        pad_id = self.tokenizer.pad_token_id
        with torch.no_grad():
            seq = self.actor_model.module.generate(prompts,
                                                   attention_mask=mask,
                                                   max_length=max_min_length,
                                                   pad_token_id=pad_id,
                                                   synced_gpus=self.z3_enabled,
                                                   **self.generation_kwargs())
        prompt_width = prompts.shape[1]
        answers = seq[:, prompt_width:]
        if self._should_print(step):
            self._print_answers(prompts, answers, step)
        valid = (answers != pad_id).sum(dim=-1) > 1
        if bool(valid.all()):
            self._last_valid = (prompt_width, seq)
            return seq
        if bool(valid.any()):
            seq = seq[valid]
            self._last_valid = (prompt_width, seq)
            return seq
        if self._last_valid is not None and self._last_valid[0] == prompt_width:
            return self._last_valid[1]
        return seq

    def _should_print(self, step: int) -> bool:
        interval = max(1, int(getattr(self.args, "print_answers_interval", 1)))
        return bool(getattr(self.args, "print_answers", False)) and step % interval == 0

    def _print_answers(self, prompts: torch.Tensor, answers: torch.Tensor, step: int) -> None:
        rank = dist.get_rank() if dist.is_initialized() else 0
        decoded_prompts = self.tokenizer.batch_decode(prompts, skip_special_tokens=True)
        decoded_answers = self.tokenizer.batch_decode(answers, skip_special_tokens=True)
        for prompt, answer in zip(decoded_prompts, decoded_answers):
            print(f"[step {step} rank {rank}] prompt: {prompt!r}\n[step {step} rank {rank}] answer: {answer!r}",
                  flush=True)

    def generate_experience(self, prompts: torch.Tensor, mask: torch.Tensor, step: int) -> Experience:
        """Generate answers and score them with all four models (no grad).

        prompts, mask: (B, P) left-padded prompt ids and attention mask.
        Returns an `Experience` of B' <= B rows (see [Note: answer filtering]).
        """
        self.eval()
        started = time.time()
        seq = self._generate_sequence(prompts, mask, step)
        self.generate_time = time.time() - started
        self.train()

        prompt_width = prompts.shape[1]
        pad_id = self.tokenizer.pad_token_id
        attention_mask = seq.ne(pad_id).long()
        position_ids = position_ids_from_mask(attention_mask)
        with torch.no_grad(), _dropout_off(self.actor_model, self.critic_model, self.ref_model, self.reward_model):
            logits = _logits(self.actor_model(seq, attention_mask=attention_mask, position_ids=position_ids))
            ref_logits = _logits(self.ref_model(seq, attention_mask=attention_mask, position_ids=position_ids))
            reward_out = self.reward_model.forward_value(seq, attention_mask, prompt_length=prompt_width)
            values = self.critic_model.forward_value(seq, attention_mask, return_value_only=True)
        if self.compute_fp32_loss:
            logits, ref_logits = logits.float(), ref_logits.float()
        experience = Experience(prompts=seq[:, :prompt_width],
                                seq=seq,
                                logprobs=gather_log_probs(logits[:, :-1, :], seq[:, 1:]),
                                ref_logprobs=gather_log_probs(ref_logits[:, :-1, :], seq[:, 1:]),
                                value=values.detach()[:, :-1],
                                rewards=reward_out["chosen_end_scores"].detach(),
                                attention_mask=attention_mask)
        return experience

    # ------------------------------------------------------------- training
    def compute_rewards(self, prompts: torch.Tensor, log_probs: torch.Tensor, ref_log_probs: torch.Tensor,
                        reward_score: torch.Tensor, action_mask: torch.Tensor) -> torch.Tensor:
        """(B, L-1) per-action rewards; see `dschat.ppo.losses.compute_rewards`."""
        return compute_rewards(prompts, log_probs, ref_log_probs, reward_score, action_mask, self.kl_ctl,
                               self.clip_reward_value)

    def get_advantages_and_returns(self, values: torch.Tensor, rewards: torch.Tensor,
                                   start: int) -> Tuple[torch.Tensor, torch.Tensor]:
        return get_advantages_and_returns(values, rewards, start, self.gamma, self.lam)

    def train_rlhf(self, inputs: Union[Experience, Dict[str, torch.Tensor]],
                   train_actor: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
        """One PPO update of actor and critic on one micro-batch; returns (actor_loss, critic_loss).

        With `train_actor=False` (critic warm-up) the actor loss is computed
        for the log but the actor takes no backward and no step; every rank
        must pass the same flag, since backward and step are collectives.
        """
        exp = inputs if isinstance(inputs, Experience) else Experience.from_dict(inputs)
        start = exp.prompt_length - 1
        action_mask = exp.action_mask
        with torch.no_grad():
            _, old_values, advantages, returns = ppo_targets(exp.prompts, exp.logprobs, exp.ref_logprobs, exp.rewards,
                                                             exp.value, action_mask, self.kl_ctl,
                                                             self.clip_reward_value, self.gamma, self.lam,
                                                             self.whiten_advantages)
        batch = {
            "input_ids": exp.seq,
            "attention_mask": exp.attention_mask,
            "position_ids": position_ids_from_mask(exp.attention_mask),
        }
        with contextlib.nullcontext() if train_actor else torch.no_grad():
            logits = _logits(self.actor_model(**batch, use_cache=False))
            if self.compute_fp32_loss:
                logits = logits.float()
            log_probs = gather_log_probs(logits[:, :-1, :], exp.seq[:, 1:])
            actor_loss = actor_loss_fn(log_probs[:, start:], exp.logprobs[:, start:], advantages,
                                       action_mask[:, start:], self.cliprange)
        aligning = train_actor and bool(getattr(self.args, "align_overflow", False))
        if train_actor:
            self.actor_model.backward(actor_loss)
            if not aligning:
                self.actor_model.step()

        values = self.critic_model.forward_value(exp.seq, exp.attention_mask, return_value_only=True,
                                                 use_cache=False)[:, :-1]
        critic_loss = critic_loss_fn(values[:, start:], old_values[:, start:], returns, action_mask[:, start:],
                                     self.cliprange_value, self.compute_fp32_loss)
        self.critic_model.backward(critic_loss)
        if aligning:
            # The actor step was postponed so both models decide on skipping
            # together, from gradients of the same batch.
            align_overflow(self.actor_model.optimizer, self.critic_model.optimizer)
            self.actor_model.step()
        self.critic_model.step()
        return actor_loss, critic_loss

    def get_overflow(self) -> Tuple[bool, bool]:
        """Whether the last actor / critic step overflowed (always False without a wrapper)."""
        actor_overflow = bool(getattr(self.actor_model.optimizer, "overflow", False))
        critic_overflow = bool(getattr(self.critic_model.optimizer, "overflow", False))
        return actor_overflow, critic_overflow

    # ------------------------------------------------------------------ modes
    def train(self) -> None:
        """Actor and critic to train mode (ref and reward are never trained)."""
        self.actor_model.train()
        self.critic_model.train()

    def eval(self) -> None:
        """All four models to eval mode; with a Hybrid Engine the actor enters inference mode."""
        self.actor_model.eval()
        self.critic_model.eval()
        self.reward_model.eval()
        self.ref_model.eval()

    def dump_model_norms(self, tag: str) -> Dict[str, float]:
        """L2 norm of each model's parameters (gathered under ZeRO-3), for debugging divergence."""
        norms = {
            "actor": _model_norm(self.actor_model),
            "ref": _model_norm(self.ref_model),
            "critic": _model_norm(self.critic_model),
            "reward": _model_norm(self.reward_model),
        }
        rank = dist.get_rank() if dist.is_initialized() else 0
        print(f"[rank {rank}] {tag} model norms: {norms}", flush=True)
        return norms


class DeepSpeedPPOTrainerUnsupervised(DeepSpeedPPOTrainer):
    """PPO plus the pretraining-loss mix of InstructGPT (`--unsupervised_dataset_name`)."""

    def train_unsupervised(self, inputs: Dict[str, torch.Tensor], unsup_coef: float) -> torch.Tensor:
        """One actor LM step on an unsupervised batch (input_ids, attention_mask, labels).

        The loss is scaled by `unsup_coef` for the backward only; the
        returned value is the unscaled LM loss, for logging.
        """
        outputs = self.actor_model(**inputs, use_cache=False)
        loss = outputs.loss if hasattr(outputs, "loss") else outputs[0]
        self.actor_model.backward(unsup_coef * loss)
        self.actor_model.step()
        return loss


def _model_norm(model: torch.nn.Module) -> float:
    total = 0.0
    for param in model.parameters():
        if hasattr(param, "ds_id"):
            # ZeRO-3 only: `deepspeed.zero` is looked up at call time.
            with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                total += float(param.detach().float().pow(2).sum())
        else:
            total += float(param.detach().float().pow(2).sum())
    return total**0.5
