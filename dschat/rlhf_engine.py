"""The five models of step 3, each wrapped by `deepspeed.initialize` (spec §7).

Built in the release's order: actor, ref, EMA (optional), critic, reward.
Only the actor and critic train; ref, EMA and reward get an eval config and
no optimizer. All five share the actor's tokenizer.

[Note: step-3 batch sizes]
Every engine gets `train_micro_batch_size_per_gpu =
per_device_training_batch_size` and `train_batch_size = micro * world * GAS`.
The actor uses GAS_actor = 2 * GAS when the unsupervised mix is on, because
each PPO micro-batch then makes two actor backward/step calls (the PPO loss
and the LM loss); its engine must reach the accumulation boundary after the
same number of PPO micro-batches as the critic. Engines without an optimizer
still get the batch sizes so the runtime's batch-size checks pass.
"""
import time
from typing import Any, Dict, Optional, Tuple

import torch
from transformers import AutoModelForCausalLM

import deepspeed
from deepspeed import comm as dist
from dschat.ds_utils import get_eval_ds_config, get_train_ds_config
from dschat.lora.lora import (convert_linear_layer_to_lora, make_model_gradient_checkpointing_compatible,
                              only_optimize_lora_parameters)
from dschat.lora.param_groups import get_optimizer_grouped_parameters
from dschat.models.model_utils import create_critic_model, create_hf_model
from dschat.utils import get_lr_scheduler, get_optimizer, print_rank_0

__all__ = ["DeepSpeedRLHFEngine", "actor_gradient_accumulation_steps"]


def actor_gradient_accumulation_steps(args: Any) -> int:
    """GAS_actor of [Note: step-3 batch sizes]; an explicit `args.gradient_accumulation_steps_actor` wins."""
    explicit = getattr(args, "gradient_accumulation_steps_actor", None)
    if explicit:
        return int(explicit)
    unsupervised = getattr(args, "unsupervised_dataset_name", None) is not None
    return args.gradient_accumulation_steps * (2 if unsupervised else 1)


def _world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


class DeepSpeedRLHFEngine:
    """Actor, ref, optional actor EMA, critic and reward engines for PPO.

    Args:
        actor_model_name_or_path: the step-1 (SFT) output, a local HF folder.
        critic_model_name_or_path: the step-2 (reward model) output.
        tokenizer: shared by all five models.
        args: the step-3 argparse namespace (spec §2 flag names).
        num_total_iters: scheduler length of the actor and critic.
    """

    def __init__(self, actor_model_name_or_path: str, critic_model_name_or_path: str, tokenizer: Any, args: Any,
                 num_total_iters: int) -> None:
        self.args = args
        self.num_total_iters = num_total_iters
        self.tokenizer = tokenizer
        # deepspeed.initialize would create the process group on the first
        # engine anyway; doing it first lets the batch sizes use the world size.
        deepspeed.init_distributed()
        self.actor = self._init_actor(actor_model_name_or_path)
        self.ref = self._init_ref(actor_model_name_or_path)
        self.actor_ema: Optional[Any] = None
        if getattr(args, "enable_ema", False):
            self.actor_ema = self._init_ema(actor_model_name_or_path)
        self.critic = self._init_critic(critic_model_name_or_path)
        self.reward = self._init_reward(critic_model_name_or_path)
        if getattr(args, "critic_gradient_checkpointing", False):
            self.critic.gradient_checkpointing_enable()

    # ------------------------------------------------------------- configs
    def _batch_sizes(self, config: Dict[str, Any], gas: int) -> Dict[str, Any]:
        micro = self.args.per_device_training_batch_size
        config["train_micro_batch_size_per_gpu"] = micro
        config["train_batch_size"] = micro * _world_size() * gas
        return config

    def _dtype(self) -> str:
        return getattr(self.args, "dtype", "fp16")

    def _eval_config(self, offload: bool, stage: int, gas: int) -> Dict[str, Any]:
        return self._batch_sizes(get_eval_ds_config(offload=offload, dtype=self._dtype(), stage=stage), gas)

    def _optimizer_and_scheduler(self, model: torch.nn.Module, weight_decay: float, lora_lr: float,
                                 lr: float) -> Tuple[torch.optim.Optimizer, Any]:
        """Adam (betas 0.9, 0.95) over the LoRA-aware groups, and the HF schedule (spec §5)."""
        groups = get_optimizer_grouped_parameters(model, weight_decay, lora_lr)
        optimizer = get_optimizer(groups, lr=lr, offload=bool(getattr(self.args, "offload", False)))
        scheduler = get_lr_scheduler(self.args.lr_scheduler_type, optimizer, self.args.num_warmup_steps,
                                     self.num_total_iters)
        return optimizer, scheduler

    def _add_lora(self, model: torch.nn.Module, lora_dim: int, module_name: str) -> torch.nn.Module:
        if lora_dim <= 0:
            return model
        model = convert_linear_layer_to_lora(model, module_name, lora_dim)
        if getattr(self.args, "only_optimize_lora", False):
            model = only_optimize_lora_parameters(model)
            model = make_model_gradient_checkpointing_compatible(model)
        return model

    # -------------------------------------------------------------- models
    def _init_actor(self, path: str) -> Any:
        started = _log_start("Actor")
        args = self.args
        config = get_train_ds_config(offload=bool(getattr(args, "offload", False)),
                                     dtype=self._dtype(),
                                     stage=args.actor_zero_stage,
                                     enable_hybrid_engine=bool(getattr(args, "enable_hybrid_engine", False)),
                                     inference_tp_size=getattr(args, "inference_tp_size", 1),
                                     release_inference_cache=bool(getattr(args, "release_inference_cache", False)),
                                     pin_parameters=not getattr(args, "unpin_actor_parameters", False),
                                     tp_gather_partition_size=getattr(args, "tp_gather_partition_size", 8),
                                     max_out_tokens=args.max_prompt_seq_len + args.max_answer_seq_len,
                                     enable_tensorboard=bool(getattr(args, "enable_tensorboard", False)),
                                     enable_mixed_precision_lora=bool(getattr(args, "enable_mixed_precision_lora",
                                                                              False)),
                                     tb_path=getattr(args, "tensorboard_path", ""),
                                     tb_name="step3_actor")
        config = self._batch_sizes(config, actor_gradient_accumulation_steps(args))
        model = create_hf_model(AutoModelForCausalLM, path, self.tokenizer, ds_config=config,
                                dropout=getattr(args, "actor_dropout", None))
        model = self._add_lora(model, args.actor_lora_dim, args.actor_lora_module_name)
        optimizer, scheduler = self._optimizer_and_scheduler(model, args.actor_weight_decay,
                                                             args.actor_lora_learning_rate, args.actor_learning_rate)
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config)
        _log_end("Actor", started)
        return engine

    def _ref_stage(self) -> int:
        # A ZeRO-3 actor is too big to hold whole, so its frozen copies are partitioned too.
        return 3 if self.args.actor_zero_stage == 3 else 0

    def _init_ref(self, path: str) -> Any:
        started = _log_start("Ref")
        config = self._eval_config(bool(getattr(self.args, "offload_reference_model", False)), self._ref_stage(),
                                   actor_gradient_accumulation_steps(self.args))
        model = create_hf_model(AutoModelForCausalLM, path, self.tokenizer, ds_config=config)
        engine, *_ = deepspeed.initialize(model=model, config=config)
        _log_end("Ref", started)
        return engine

    def _init_ema(self, path: str) -> Any:
        started = _log_start("EMA")
        config = self._eval_config(bool(getattr(self.args, "offload_reference_model", False)), self._ref_stage(),
                                   actor_gradient_accumulation_steps(self.args))
        model = create_hf_model(AutoModelForCausalLM, path, self.tokenizer, ds_config=config)
        # Same LoRA layers as the actor, so `moving_average` pairs parameters by name.
        if self.args.actor_lora_dim > 0:
            model = convert_linear_layer_to_lora(model, self.args.actor_lora_module_name, self.args.actor_lora_dim)
        engine, *_ = deepspeed.initialize(model=model, config=config)
        _log_end("EMA", started)
        return engine

    def _init_critic(self, path: str) -> Any:
        started = _log_start("Critic")
        args = self.args
        config = get_train_ds_config(offload=bool(getattr(args, "offload", False)),
                                     dtype=self._dtype(),
                                     stage=args.critic_zero_stage,
                                     enable_tensorboard=bool(getattr(args, "enable_tensorboard", False)),
                                     tb_path=getattr(args, "tensorboard_path", ""),
                                     tb_name="step3_critic")
        config = self._batch_sizes(config, args.gradient_accumulation_steps)
        # Construction uses an offload-free eval config: it only decides
        # whether the model is built partitioned (ZeRO-3), spec §7.
        build_config = self._eval_config(False, args.critic_zero_stage, args.gradient_accumulation_steps)
        model = create_critic_model(path, self.tokenizer, build_config,
                                    num_padding_at_beginning=args.num_padding_at_beginning,
                                    rlhf_training=True,
                                    dropout=getattr(args, "critic_dropout", None),
                                    zero_stage=args.critic_zero_stage,
                                    compute_fp32_loss=bool(getattr(args, "compute_fp32_loss", False)))
        model = self._add_lora(model, args.critic_lora_dim, args.critic_lora_module_name)
        optimizer, scheduler = self._optimizer_and_scheduler(model, args.critic_weight_decay,
                                                             args.critic_lora_learning_rate, args.critic_learning_rate)
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config)
        _log_end("Critic", started)
        return engine

    def _init_reward(self, path: str) -> Any:
        started = _log_start("Reward")
        args = self.args
        stage = 3 if args.critic_zero_stage == 3 else 0
        config = self._eval_config(bool(getattr(args, "offload_reward_model", False)), stage,
                                   args.gradient_accumulation_steps)
        build_config = self._eval_config(False, stage, args.gradient_accumulation_steps)
        model = create_critic_model(path, self.tokenizer, build_config,
                                    num_padding_at_beginning=args.num_padding_at_beginning,
                                    rlhf_training=True,
                                    dropout=getattr(args, "critic_dropout", None),
                                    zero_stage=stage)
        engine, *_ = deepspeed.initialize(model=model, config=config)
        _log_end("Reward", started)
        return engine


def _log_start(name: str) -> float:
    print_rank_0(f"[RLHF engine] initializing {name} model ...")
    return time.time()


def _log_end(name: str, started: float) -> None:
    print_rank_0(f"[RLHF engine] {name} model ready ({time.time() - started:.2f}s)")
