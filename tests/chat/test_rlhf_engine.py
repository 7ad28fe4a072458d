"""DeepSpeedRLHFEngine + one PPO step on tiny models over 2 gloo ranks (ZeRO-2, fp32).

The step-1 / step-2 outputs are written first with `save_hf_format`, the way
the real pipeline hands them to step 3. Each rank then builds the five
engines, generates experience for its own prompts, runs one `train_rlhf`, and
reports what the test checks: shapes, finiteness, which models changed, and
that both ranks hold identical actor/critic weights after the step (the
gradients were averaged).
"""
import argparse

import pytest
import torch
from transformers import AutoModelForCausalLM

from dist_harness import run_distributed
from dschat.data.tokenizer import load_hf_tokenizer
from dschat.models.model_utils import create_critic_model, create_hf_model, find_weights_file, load_weights_file
from dschat.models.saving import save_hf_format

PROMPTS = (["what is 2+3?", "reverse abc", "sort 3 1 2", "capital of france?"],
           ["what is 7+1?", "upper abc", "max of 4 9 1", "length of hello"])
P, ANSWER = 8, 6


def _write_step1_step2(out_dir: str, preset: str) -> None:
    tokenizer = load_hf_tokenizer(preset)
    torch.manual_seed(0)
    actor = create_hf_model(AutoModelForCausalLM, preset, tokenizer)
    save_hf_format(actor, tokenizer, argparse.Namespace(output_dir=out_dir), "actor")
    critic = create_critic_model(preset, tokenizer, None)
    save_hf_format(critic, tokenizer, argparse.Namespace(output_dir=out_dir), "critic")


def _args(**overrides) -> argparse.Namespace:
    args = dict(per_device_training_batch_size=4, gradient_accumulation_steps=1, dtype="fp32",
                actor_zero_stage=2, critic_zero_stage=2, offload=False, max_prompt_seq_len=P,
                max_answer_seq_len=ANSWER, actor_lora_dim=0, critic_lora_dim=0,
                actor_lora_module_name="decoder.layers.", critic_lora_module_name="decoder.layers.",
                only_optimize_lora=False, actor_weight_decay=0.0, critic_weight_decay=0.0,
                actor_learning_rate=1e-3, critic_learning_rate=1e-3, actor_lora_learning_rate=1e-2,
                critic_lora_learning_rate=1e-2, lr_scheduler_type="cosine", num_warmup_steps=0,
                num_padding_at_beginning=0, enable_ema=False, align_overflow=False, print_answers=False,
                unsupervised_dataset_name=None)
    args.update(overrides)
    return argparse.Namespace(**args)


def _left_pad(tokenizer, texts):
    prompts = torch.full((len(texts), P), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(texts), P, dtype=torch.long)
    for i, text in enumerate(texts):
        ids = tokenizer(text)["input_ids"][-P:]
        prompts[i, P - len(ids):] = torch.tensor(ids)
        mask[i, P - len(ids):] = 1
    return prompts, mask


def _snapshot(engine):
    return {n: p.detach().clone() for n, p in engine.module.named_parameters()}


def _max_change(engine, before):
    return max(float((p.detach() - before[n]).abs().max()) for n, p in engine.module.named_parameters())


def _rank_step(out_dir: str, args: argparse.Namespace) -> dict:
    from deepspeed import comm as dist
    from dschat.ppo.trainer import DeepSpeedPPOTrainer, DeepSpeedPPOTrainerUnsupervised
    from dschat.rlhf_engine import DeepSpeedRLHFEngine

    rank = dist.get_rank()
    tokenizer = load_hf_tokenizer(f"{out_dir}/actor")
    torch.manual_seed(1234)
    engine = DeepSpeedRLHFEngine(f"{out_dir}/actor", f"{out_dir}/critic", tokenizer, args, num_total_iters=10)
    unsupervised = args.unsupervised_dataset_name is not None
    trainer = (DeepSpeedPPOTrainerUnsupervised if unsupervised else DeepSpeedPPOTrainer)(engine, args)
    prompts, mask = _left_pad(tokenizer, PROMPTS[rank])

    before = {name: _snapshot(getattr(engine, name)) for name in ("actor", "ref", "critic", "reward")}
    exp = trainer.generate_experience(prompts, mask, step=0)
    exp.validate()
    actor_loss, critic_loss = trainer.train_rlhf(exp)
    if unsupervised:
        # The second actor micro-step of the pair reaches GAS_actor's boundary.
        lm_batch = {"input_ids": exp.seq, "attention_mask": exp.attention_mask, "labels": exp.seq}
        unsup_loss = trainer.train_unsupervised(lm_batch, unsup_coef=27.8)
        assert torch.isfinite(unsup_loss)

    saved_critic = load_weights_file(find_weights_file(f"{out_dir}/critic"))
    # numpy, not torch: torch tensors would travel through shared memory
    # that is gone once the rank exits.
    flat = {name: torch.cat([p.detach().flatten() for p in getattr(engine, name).module.parameters()]).numpy()
            for name in ("actor", "critic")}
    return {
        "seq_shape": tuple(exp.seq.shape),
        "prompt_shape": tuple(exp.prompts.shape),
        "logprobs_shape": tuple(exp.logprobs.shape),
        "rewards_shape": tuple(exp.rewards.shape),
        "finite": all(bool(torch.isfinite(t).all()) for t in (exp.logprobs, exp.ref_logprobs, exp.value,
                                                                exp.rewards, actor_loss, critic_loss)),
        "losses": (float(actor_loss), float(critic_loss)),
        "change": {name: _max_change(getattr(engine, name), before[name]) for name in before},
        "reward_head_loaded": torch.equal(engine.reward.module.v_head.weight.detach(), saved_critic["v_head.weight"]),
        "actor_batch": (engine.actor.train_micro_batch_size_per_gpu(), engine.actor.train_batch_size()),
        "critic_batch": (engine.critic.train_micro_batch_size_per_gpu(), engine.critic.train_batch_size()),
        "ema": None if engine.actor_ema is None else sorted(n for n, _ in engine.actor_ema.module.named_parameters())
        == sorted(n for n, _ in engine.actor.module.named_parameters()),
        "flat": flat,
        "trainable": sorted(n for n, p in engine.actor.module.named_parameters() if p.requires_grad),
    }


def _check_common(results, gas_actor=1):
    for r in results:
        assert r["finite"], r["losses"]
        assert r["prompt_shape"][1] == P
        b, length = r["seq_shape"]
        assert 1 <= b <= 4 and P < length <= P + ANSWER
        assert r["logprobs_shape"] == (b, length - 1) and r["rewards_shape"] == (b, )
        # the trained models moved, the frozen ones did not
        assert r["change"]["actor"] > 0 and r["change"]["critic"] > 0
        assert r["change"]["ref"] == 0 and r["change"]["reward"] == 0
        assert r["reward_head_loaded"]  # strict load of the step-2 head, not a random one
        assert r["actor_batch"] == (4, 4 * 2 * gas_actor)
        assert r["critic_batch"] == (4, 4 * 2)
    # data parallel: both ranks end the step with the same weights
    for name in ("actor", "critic"):
        assert (results[0]["flat"][name] == results[1]["flat"][name]).all(), name


@pytest.fixture(scope="module")
def step12_dirs(tmp_path_factory):
    """preset -> folder holding that preset's step-1 `actor/` and step-2 `critic/` outputs."""
    dirs = {}
    for preset in ("tiny-opt", "tiny-llama"):
        out = tmp_path_factory.mktemp(f"step12-{preset}")
        _write_step1_step2(str(out), preset)
        dirs[preset] = str(out)
    return dirs


@pytest.mark.parametrize("preset", ["tiny-opt", "tiny-llama"])
def test_rlhf_engine_zero2_fp32_one_ppo_step(step12_dirs, preset):
    # tiny-llama: grouped-query attention, greedy generation, rotary positions
    # taken from the mask of the left-padded prompts.
    lora_name = "decoder.layers." if preset == "tiny-opt" else "layers."
    args = _args(enable_ema=True, actor_lora_module_name=lora_name, critic_lora_module_name=lora_name)
    results = run_distributed(_rank_step, world_size=2, args=(step12_dirs[preset], args), timeout=240)
    _check_common(results)
    assert all(r["ema"] for r in results)  # EMA built with the actor's parameter names
    # different prompts per rank: the ranks' losses differ, yet weights agree
    assert results[0]["losses"] != results[1]["losses"]


def test_rlhf_engine_lora_only_and_unsupervised_gas(step12_dirs):
    args = _args(actor_lora_dim=4, critic_lora_dim=4, only_optimize_lora=True,
                 unsupervised_dataset_name="dschat/synthetic")
    results = run_distributed(_rank_step, world_size=2, args=(step12_dirs["tiny-opt"], args),
                              timeout=240)
    # the unsupervised mix doubles the actor's accumulation (two backwards per PPO micro-batch)
    _check_common(results, gas_actor=2)
    for r in results:
        assert r["trainable"] and all("lora_" in n for n in r["trainable"])


def _rank_fp16_aligned(out_dir: str, args: argparse.Namespace) -> list:
    from deepspeed import comm as dist
    from dschat.ppo.trainer import DeepSpeedPPOTrainer
    from dschat.rlhf_engine import DeepSpeedRLHFEngine

    tokenizer = load_hf_tokenizer(f"{out_dir}/actor")
    engine = DeepSpeedRLHFEngine(f"{out_dir}/actor", f"{out_dir}/critic", tokenizer, args, num_total_iters=10)
    trainer = DeepSpeedPPOTrainer(engine, args)
    prompts, mask = _left_pad(tokenizer, PROMPTS[dist.get_rank()])
    flags = []
    for step in range(4):
        exp = trainer.generate_experience(prompts, mask, step=step)
        trainer.train_rlhf(exp)
        flags.append((trainer.get_overflow(), engine.actor.optimizer.cur_scale, engine.critic.optimizer.cur_scale))
    return flags


def test_align_overflow_with_real_fp16_optimizers(step12_dirs):
    # fp16 starts at loss scale 2**16, so the first steps overflow; with
    # --align_overflow, whenever one model overflows the other skips too.
    args = _args(dtype="fp16", align_overflow=True)
    results = run_distributed(_rank_fp16_aligned, world_size=2, args=(step12_dirs["tiny-opt"], args), timeout=240)
    assert results[0] == results[1]  # ranks agree on every decision
    overflows = [flag for flag, _, _ in results[0]]
    assert all(actor == critic for actor, critic in overflows), overflows
    assert overflows[0] == (True, True)
    assert overflows[-1] == (False, False)  # once the scale has dropped, both step
