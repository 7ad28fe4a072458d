"""DeepSpeedHybridEngine: one actor that trains under ZeRO and generates through a fast decode path.

`deepspeed.initialize` picks this engine when `hybrid_engine.enabled`. The
model's `generate` is replaced by `DeepSpeedHybridEngine.generate` when a
container policy (deepspeed/inference/containers) matches the model, so
DS-Chat's `actor.module.generate(...)` comes here.

[Note: hybrid engine generation]
One generate call:
1. drain ZeRO-3's in-flight registries (nothing of training stays in flight),
2. gather the non-layer parameters (embeddings, final norm, LM head) for
   the whole call and suspend the ZeRO-3 module hooks,
3. make the layers readable and fold LoRA into them:
   * pinned (default, and always below ZeRO-3): all layers at once; the
     views reference the gathered tensors and the decode loop runs with no
     gathers at all; afterwards LoRA is unfused and everything released,
   * `inference_tp_size > 1`: `tp_gather_partition_size` layers at a time
     are gathered, fused, cut into this rank's TP shard (a copy), unfused
     and released; the loop then all-reduces partial outputs,
   * `pin_parameters: false` (ZeRO-3, TP 1): every decode step gathers
     `tp_gather_partition_size` layers at a time, and data-parallel ranks
     are kept in lock-step so the collective gathers always match,
4. run the KV-cache decode loop (deepspeed/inference/decode.py); on CPU
   its decode steps' products run through the skinny C++ kernel (or on
   MKL-packed weights, kernels.py), and ranks on one host gather shards and
   sum TP partial outputs through shared memory (deepspeed/comm/shm.py),
5. optionally free the KV cache (`release_inference_cache`).
Calls the decode path cannot run exactly (beam search, unknown families,
repetition penalties, ...) go to HF's own generate, with the parameters
gathered once and DS-Chat LoRA fused.
"""
from __future__ import annotations

import contextlib
import time
from collections import deque
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch

from deepspeed import comm as dist
from deepspeed.accelerator import get_accelerator
from deepspeed.comm import groups
from deepspeed.inference.containers import find_policy
from deepspeed.inference.decode import DecodeLoop, KVWorkspace, StaticLayers
from deepspeed.inference.kernels import InferenceKernels
from deepspeed.inference.generate_args import resolve_generation
from deepspeed.inference.lora_fusion import LoraFusion, collect_lora_adapters
from deepspeed.inference.tp import TP_GROUP_NAME, TPBatch, shard_view, tp_layout
from deepspeed.runtime.engine import DeepSpeedEngine
from deepspeed.runtime.zero.partition_parameters import GatheredParameters
from deepspeed.utils.logging import log_dist

__all__ = ["DeepSpeedHybridEngine"]


class _GatheredLayers:
    """Unpinned ZeRO-3 layers: each step gathers, fuses and views `chunk` layers at a time."""

    def __init__(self, engine: "DeepSpeedHybridEngine", chunk: int) -> None:
        self.engine = engine
        policy = engine.policy
        n = len(policy.layers)
        self.groups = [list(range(s, min(s + chunk, n))) for s in range(0, n, chunk)]
        with self._gathered(self.groups[0][:1]) as views:
            v = views[0][1]
            self.meta = (v.n_kv_heads, v.head_dim, v.qkv_w.dtype)

    def __len__(self) -> int:
        return len(self.engine.policy.layers)

    @contextlib.contextmanager
    def _gathered(self, idxs: List[int], build: bool = True) -> Iterator[List[Tuple[int, Any]]]:
        e = self.engine
        layers = [e.policy.layers[i] for i in idxs]
        with GatheredParameters([p for layer in layers for p in layer.parameters()]):
            if not build:
                yield []
                return
            fusion = LoraFusion([a for i in idxs for a in e._layer_adapters[i]])
            fusion.fuse()
            try:
                yield [(i, e.policy.layer_view(e.policy.layers[i])) for i in idxs]
            finally:
                fusion.unfuse()

    def iterate(self) -> Iterator[List[Tuple[int, Any]]]:
        for idxs in self.groups:
            with self._gathered(idxs) as views:
                yield views

    def participate(self) -> None:
        for idxs in self.groups:
            with self._gathered(idxs, build=False):
                pass


class DeepSpeedHybridEngine(DeepSpeedEngine):
    """A DeepSpeedEngine whose `generate` runs the inference path (see the note at the top)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._he = self._config.hybrid_engine
        self.Z3_enabled = self.zero_optimization_stage() == 3
        self.gather_all_layers = bool(self._he.pin_parameters)
        self._broadcast_rng_state()
        self._tp: Optional[TPBatch] = None
        if self._he.inference_tp_size > 1:
            group = groups.create_group(TP_GROUP_NAME, tp_layout(self.world_size, self._he.inference_tp_size))
            # CPU ranks exchange the per-step partial sums through shared memory (deepspeed/comm/shm.py).
            self._tp = TPBatch(group, groups.get_group_ranks(TP_GROUP_NAME), shared_memory=self.device.type == "cpu")
        #: container policy of the model, or None (then HF's generate is used)
        self.policy = find_policy(self.module)
        self.lora_adapters = collect_lora_adapters([self.module])
        self._layer_adapters: List[list] = []
        self.layer_params: List[torch.nn.Parameter] = []
        if self.policy is not None:
            self._layer_adapters = [collect_lora_adapters([layer]) for layer in self.policy.layers]
            self.layer_params = [p for layer in self.policy.layers for p in layer.parameters()]
        #: the KV cache, kept between calls unless release_inference_cache
        self.workspace = KVWorkspace()
        self._kernels: Optional[InferenceKernels] = None
        self._hf_generate = getattr(self.module, "generate", None)
        if self.policy is not None and self._hf_generate is not None:
            self.module.generate = self.generate
        #: per-generate latency records (also written to the monitor)
        self.he_stats: deque = deque(maxlen=1000)
        self._in_inference = False
        self._train_start: Optional[float] = None
        self._train_time = 0.0
        self._last_generate_end: Optional[float] = None
        self._total_samples = 0
        self._total_time = 0.0

    # ------------------------------------------------------------- set-up
    def _broadcast_rng_state(self) -> None:
        """Every rank starts from rank 0's RNG state, so sampling agrees across ranks."""
        if self.world_size <= 1:
            return
        state = torch.get_rng_state()
        dist.broadcast(state, src=0)
        torch.set_rng_state(state)

    # -------------------------------------------------------------- modes
    def train(self, mode: bool = True):
        """`train()` / `eval()`: drain ZeRO-3 (base class), then switch between training and inference mode."""
        now = time.perf_counter()
        if not hasattr(self, "_he"):  # called while the base class is still being built
            return super().train(mode)
        if mode and self._in_inference:
            self._train_start = now
        elif not mode and self._train_start is not None:
            self._train_time += now - self._train_start
            self._train_start = None
        self._in_inference = not mode
        return super().train(mode)

    def _drain(self) -> None:
        if self.parameter_offload is not None:
            self.parameter_offload.coordinator.end_iteration()

    @contextlib.contextmanager
    def _hooks_suspended(self) -> Iterator[None]:
        offload = self.parameter_offload
        if offload is None:
            yield
            return
        offload.suspended = True
        try:
            yield
        finally:
            offload.suspended = False

    # ------------------------------------------------------------ generate
    def generate(self, input_ids: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                 **kwargs) -> torch.Tensor:
        """HF-compatible generate through the decode path (or HF's generate when it cannot be exact)."""
        if input_ids is None:
            input_ids = kwargs.pop("inputs", None)
        if input_ids is None or self.policy is None:
            return self._fallback_generate(input_ids, attention_mask, kwargs)
        params, why = resolve_generation(self.module, input_ids.shape[1], kwargs)
        if params is None or self.policy.supports(input_ids.shape[1] + max(params.max_new_tokens, 0)):
            return self._fallback_generate(input_ids, attention_mask, kwargs)
        start = time.perf_counter()
        input_ids = input_ids.to(self.device)
        mask = attention_mask.to(self.device) if attention_mask is not None else torch.ones_like(input_ids)
        self._drain()
        with torch.no_grad(), self._hooks_suspended(), GatheredParameters(self.policy.non_layer_params()):
            with self._layers() as (layers, gather_s):
                gen_start = time.perf_counter()
                out = self._decode(layers, input_ids, mask, params)
                gen_s = time.perf_counter() - gen_start
        self._drain()
        if self._he.release_inference_cache:
            self.workspace.release()
            get_accelerator().empty_cache()
        self._record(start, gather_s, gen_s, input_ids.shape[0], out.shape[1] - input_ids.shape[1])
        return out

    def _decode(self, layers, input_ids: torch.Tensor, mask: torch.Tensor, params) -> torch.Tensor:
        if params.max_new_tokens <= 0 and self._tp is None:
            return input_ids
        cache_tokens = self._he.max_out_tokens
        if self._tp is not None:
            tp = self._tp
            ids, full_mask, segments, live = tp.combine(input_ids, mask, params.max_new_tokens, params.pad_token_id)
            loop = DecodeLoop(self.policy, layers, self.workspace, reduce=tp.all_reduce,
                              sync_tokens=tp.broadcast_tokens, cache_tokens=cache_tokens,
                              kernels=self._inference_kernels(), vocab_shard=tp.vocab_shard())
            tokens, segments = loop.generate(ids, full_mask, params, segments=segments, live_rows=live)
            return tp.split(tokens, segments)
        any_running = None
        if isinstance(layers, _GatheredLayers) and self.dp_world_size > 1:
            any_running = self._any_rank_running
        # A CUDA graph can replay a step only while the weights stay put and no collective runs per step.
        fixed = bool(self._he.enable_cuda_graph) and isinstance(layers, StaticLayers) and any_running is None
        loop = DecodeLoop(self.policy, layers, self.workspace, any_running=any_running, cache_tokens=cache_tokens,
                          kernels=self._inference_kernels(), fixed_shape_steps=fixed)
        tokens, _ = loop.generate(input_ids, mask, params)
        return tokens

    def _inference_kernels(self) -> InferenceKernels:
        """The CUDA decode kernels (built on first use) on a GPU; the torch references elsewhere."""
        if self._kernels is None:
            self._kernels = InferenceKernels.load() if self.device.type == "cuda" else InferenceKernels(None)
        return self._kernels

    def _any_rank_running(self, running: bool) -> bool:
        flag = torch.tensor([1 if running else 0], dtype=torch.int32, device=self.device)
        dist.all_reduce(flag, group=self.data_parallel_group)
        return bool(flag.item())

    @contextlib.contextmanager
    def _layers(self) -> Iterator[Tuple[Any, float]]:
        """The layer views for one call, per the configured mode (see the note at the top)."""
        t0 = time.perf_counter()
        policy = self.policy
        chunk = int(self._he.tp_gather_partition_size) if self.Z3_enabled else len(policy.layers)
        if self._tp is not None:
            tp = self._tp
            shards = []
            for s in range(0, len(policy.layers), chunk):
                idxs = range(s, min(s + chunk, len(policy.layers)))
                with GatheredParameters([p for i in idxs for p in policy.layers[i].parameters()]):
                    fusion = LoraFusion([a for i in idxs for a in self._layer_adapters[i]])
                    fusion.fuse()
                    try:
                        shards += [shard_view(policy.layer_view(policy.layers[i]), tp.rank, tp.world, tp.group)
                                   for i in idxs]
                    finally:
                        fusion.unfuse()
            yield StaticLayers(shards), time.perf_counter() - t0
            return
        if self.Z3_enabled and not self.gather_all_layers:
            yield _GatheredLayers(self, chunk), time.perf_counter() - t0
            return
        with GatheredParameters(self.layer_params):
            fusion = LoraFusion([a for adapters in self._layer_adapters for a in adapters])
            fusion.fuse()
            try:
                views = [policy.layer_view(layer) for layer in policy.layers]
                yield StaticLayers(views), time.perf_counter() - t0
            finally:
                fusion.unfuse()

    def _fallback_generate(self, input_ids, attention_mask, kwargs: Dict[str, Any]):
        """HF's generate, with everything gathered once (ZeRO-3) and DS-Chat LoRA fused."""
        if self._hf_generate is None:
            raise AttributeError(f"{type(self.module).__name__} has no generate method")
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
        start = time.perf_counter()
        self._drain()
        # peft's forward adds its own update unless merged, so only DS-Chat layers (fuse_lora flag) are fused.
        fusion = LoraFusion([a for a in self.lora_adapters if a.kind == "dschat"])
        with torch.no_grad(), GatheredParameters(list(self.module.parameters())), self._hooks_suspended():
            gather_s = time.perf_counter() - start
            fusion.fuse()
            try:
                gen_start = time.perf_counter()
                out = self._hf_generate(input_ids, **kwargs)
                gen_s = time.perf_counter() - gen_start
            finally:
                fusion.unfuse()
        self._drain()
        batch = input_ids.shape[0] if torch.is_tensor(input_ids) else 0
        self._record(start, gather_s, gen_s, batch, 0)
        return out

    # ------------------------------------------------------------- latency
    def _record(self, start: float, gather_s: float, gen_s: float, batch: int, new_tokens: int) -> None:
        """DeepSpeed's per-generate latency line; E2E spans the previous generate's end to this one's."""
        now = time.perf_counter()
        e2e = now - (self._last_generate_end if self._last_generate_end is not None else start)
        train_s, self._train_time = self._train_time, 0.0
        others = max(e2e - gather_s - gen_s - train_s, 0.0)
        self._last_generate_end = now
        self._total_samples += batch
        self._total_time += e2e
        pct = (lambda x: 100.0 * x / e2e if e2e > 0 else 0.0)
        stats = {"e2e_latency_s": e2e, "gather_latency_s": gather_s, "generate_time_s": gen_s,
                 "training_time_s": train_s, "others_s": others, "batch_size": batch, "new_tokens": new_tokens,
                 "cur_samples_per_sec": batch / e2e if e2e > 0 else 0.0,
                 "avg_samples_per_sec": self._total_samples / self._total_time if self._total_time > 0 else 0.0}
        self.he_stats.append(stats)
        log_dist(f"|E2E latency={e2e:.2f}s |Gather latency={gather_s:.2f}s ({pct(gather_s):.2f}%) "
                 f"|Generate time={gen_s:.2f}s ({pct(gen_s):.2f}%) |Training time={train_s:.2f}s "
                 f"({pct(train_s):.2f}%) |Others={others:.2f} ({pct(others):.2f}%)"
                 f"|CurSamplesPerSec={stats['cur_samples_per_sec']:.2f} "
                 f"|AvgSamplesPerSec={stats['avg_samples_per_sec']:.2f}", ranks=[0])
        if self.monitor.enabled:
            step = self.global_samples
            self.monitor.write_events([(f"HybridEngine/{k}", float(v), step) for k, v in stats.items()])
