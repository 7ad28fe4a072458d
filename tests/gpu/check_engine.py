"""GPU check of the engine on CUDA with NCCL (one rank), run by tests/gpu/run.sh.

Prints one verdict line per check ("<name>: OK ..." or "<name>: FAIL ...")
and exits non-zero if any failed:

* engine_zero2_fp16: ZeRO-2 with fp16 (dynamic loss scale) and FusedAdam
  trains a tiny OPT for a few steps; its losses must follow an fp32
  torch.optim.AdamW run from the same weights on the same batches.
* engine_zero3_bf16: the same under ZeRO-3 in bf16.
* hybrid_engine_zero3_graph: a ZeRO-3 bf16 Hybrid Engine with
  `enable_cuda_graph` generates greedily (OPT and Llama with GQA, left
  padding); every generated token must be HF's argmax given the same
  prefix (teacher-forced through the HF model on the gathered weights),
  bar near-ties of bf16 rounding.

The package need not be installed: run from the repository root.
`--cpu` runs the same checks on the CPU accelerator (gloo), to try the
script on a machine without a GPU.
"""
import os
import sys
import traceback
from pathlib import Path

os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
os.environ.setdefault("MASTER_PORT", "29533")
os.environ.setdefault("RANK", "0")
os.environ.setdefault("LOCAL_RANK", "0")
os.environ.setdefault("WORLD_SIZE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from check_cuda_ops import bootstrap  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM  # noqa: E402

bootstrap()  # a plain checkout: map accelerator/ and op_builder/ onto their installed names
import deepspeed  # noqa: E402

VOCAB = 512
DEVICE = "cpu" if "--cpu" in sys.argv else "cuda"


def tiny(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if family == "opt":
        cfg = OPTConfig(vocab_size=VOCAB, hidden_size=256, num_hidden_layers=4, ffn_dim=1024, num_attention_heads=8,
                        max_position_embeddings=256, pad_token_id=1, eos_token_id=2, bos_token_id=2,
                        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)  # deterministic references
        return _decisive(OPTForCausalLM(cfg))
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0,
                      eos_token_id=2, bos_token_id=1)
    return _decisive(LlamaForCausalLM(cfg))


def _decisive(model: torch.nn.Module) -> torch.nn.Module:
    """Larger weights than HF's init: random-init logits are otherwise nearly tied, and bf16 rounding
    (HF's separate q/k/v matmuls vs our fused one) flips argmaxes that mean nothing."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.1)
    return model


def config(stage: int, dtype: str, he: bool = False) -> dict:
    cfg = {"train_micro_batch_size_per_gpu": 4, "gradient_clipping": 0.0, "steps_per_print": 1000,
           "optimizer": {"type": "Adam", "params": {"lr": 1e-3, "weight_decay": 0.0}},
           "zero_optimization": {"stage": stage}, dtype: {"enabled": True}}
    if he:
        cfg["hybrid_engine"] = {"enabled": True, "max_out_tokens": 64, "enable_cuda_graph": True}
    return cfg


def batches(n: int):
    """Two batches in turn, so that a few steps visibly lower the loss."""
    g = torch.Generator().manual_seed(1)
    two = [torch.randint(3, VOCAB, (4, 32), generator=g).to(DEVICE) for _ in range(2)]
    return [two[i % 2] for i in range(n)]


def check_training(stage: int, dtype: str) -> str:
    data = batches(8)
    ref = tiny("opt").to(DEVICE)
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-3, weight_decay=0.0)
    ref_losses = []
    for b in data:
        loss = ref(input_ids=b, labels=b).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        ref_losses.append(loss.item())
    engine, *_ = deepspeed.initialize(model=tiny("opt"), config=config(stage, dtype))
    losses = []
    for b in data:
        loss = engine(input_ids=b, labels=b).loss
        engine.backward(loss)
        engine.step()
        losses.append(float(loss))
    worst = max(abs(a - r) / abs(r) for a, r in zip(losses, ref_losses))
    if not all(torch.isfinite(torch.tensor(losses))) or worst > 0.03 or losses[-1] >= losses[0]:
        raise AssertionError(f"losses {losses} vs fp32 AdamW {ref_losses} (worst rel diff {worst:.3g})")
    return f"worst_rel_loss_diff={worst:.3g} loss {losses[0]:.3f}->{losses[-1]:.3f}"


def check_generation() -> str:
    from deepspeed.runtime.hybrid_engine import DeepSpeedHybridEngine
    from deepspeed.runtime.zero.partition_parameters import GatheredParameters
    details = []
    for family in ("opt", "llama"):
        engine, *_ = deepspeed.initialize(model=tiny(family), config=config(3, "bf16", he=True))
        assert isinstance(engine, DeepSpeedHybridEngine) and engine.policy is not None
        pad = engine.module.config.pad_token_id
        g = torch.Generator().manual_seed(2)
        lengths = (12, 5, 9, 12)
        ids = torch.full((4, 12), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, n in enumerate(lengths):
            ids[i, 12 - n:] = torch.randint(3, VOCAB, (n,), generator=g)
            mask[i, 12 - n:] = 1
        ids, mask = ids.to(DEVICE), mask.to(DEVICE)
        engine.eval()
        out = engine.module.generate(ids, attention_mask=mask, max_new_tokens=24, do_sample=False,
                                     pad_token_id=pad, synced_gpus=True)
        with torch.no_grad(), GatheredParameters(list(engine.module.parameters())):
            engine.parameter_offload.suspended = True
            try:
                full = torch.cat([mask, torch.ones_like(out[:, 12:])], dim=1)
                positions = (full.cumsum(-1) - 1).clamp(min=0)  # generate's positions under left padding
                logits = engine.module(input_ids=out, attention_mask=full,
                                       position_ids=positions).logits[:, 11:-1].float()
            finally:
                engine.parameter_offload.suspended = False
        engine.train()
        agree = (logits.argmax(-1) == out[:, 12:]).float().mean().item()
        if out.shape != (4, 36) or agree < 0.95:
            raise AssertionError(f"{family}: shape {tuple(out.shape)}, HF argmax agreement {agree:.3f}")
        details.append(f"{family}_argmax_agreement={agree:.3f}")
    return " ".join(details)


def main() -> int:
    if DEVICE == "cuda":
        if not torch.cuda.is_available():
            print("engine: FAIL no CUDA device")
            return 1
        torch.cuda.set_device(0)
    failed = 0
    checks = [("engine_zero2_fp16", lambda: check_training(2, "fp16")),
              ("engine_zero3_bf16", lambda: check_training(3, "bf16")),
              ("hybrid_engine_zero3_graph", check_generation)]
    for name, fn in checks:
        try:
            print(f"{name}: OK {fn()}", flush=True)
        except Exception as exc:  # every check reports, whatever failed
            traceback.print_exc(file=sys.stderr)
            print(f"{name}: FAIL {type(exc).__name__}: {str(exc)[:300]}", flush=True)
            failed = 1
    return failed


if __name__ == "__main__":
    sys.exit(main())
