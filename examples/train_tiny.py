"""Train a tiny causal language model with DeepSpeed ZeRO on CPU or GPU.

Launch (2 CPU processes when there is no GPU):

    deepspeed --num_gpus 2 examples/train_tiny.py --zero_stage 2

or with your own config: `... --deepspeed_config ds_config.json`.
The data is a synthetic "copy the previous token pattern" language, so the
loss falls quickly from ln(vocab).
"""
import argparse
import math

import torch
import torch.nn.functional as F

import deepspeed
from deepspeed import comm as dist

# ----------------------------------------------------------------- arguments
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--local_rank", type=int, default=-1, help="set by the launcher")
parser.add_argument("--steps", type=int, default=150)
parser.add_argument("--zero_stage", type=int, default=2, choices=[0, 1, 2])
parser.add_argument("--vocab", type=int, default=128)
parser.add_argument("--hidden", type=int, default=64)
parser.add_argument("--layers", type=int, default=2)
parser.add_argument("--seq", type=int, default=32)
parser.add_argument("--checkpoint_dir", default=None, help="save a checkpoint here at the end")
parser = deepspeed.add_config_arguments(parser)
args = parser.parse_args()


# --------------------------------------------------------------------- model
class TinyLM(torch.nn.Module):
    """Token + position embeddings, causal self-attention blocks, tied LM head."""

    def __init__(self, vocab: int, hidden: int, layers: int, seq: int) -> None:
        super().__init__()
        self.tok = torch.nn.Embedding(vocab, hidden)
        self.pos = torch.nn.Embedding(seq, hidden)
        layer = torch.nn.TransformerEncoderLayer(hidden, nhead=4, dim_feedforward=4 * hidden, dropout=0.0,
                                                 batch_first=True, norm_first=True)
        self.blocks = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = torch.nn.LayerNorm(hidden)
        self.head = torch.nn.Linear(hidden, vocab, bias=False)
        self.head.weight = self.tok.weight
        for emb in (self.tok, self.pos):
            torch.nn.init.normal_(emb.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (B, T) -> mean next-token loss."""
        t = tokens.shape[1]
        x = self.tok(tokens) + self.pos(torch.arange(t, device=tokens.device))
        mask = torch.nn.Transformer.generate_square_subsequent_mask(t, device=tokens.device)
        logits = self.head(self.norm(self.blocks(x, mask=mask, is_causal=True)))
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


def batch_of_patterns(batch: int, seq: int, vocab: int, generator: torch.Generator) -> torch.Tensor:
    """Sequences that repeat a random 4-token motif: learnable, and different every call."""
    motif = torch.randint(0, vocab, (batch, 4), generator=generator)
    return motif.repeat(1, seq // 4 + 1)[:, :seq]


# ---------------------------------------------------------------------- main
config = None if args.deepspeed_config else {
    "train_micro_batch_size_per_gpu": 8,
    "gradient_accumulation_steps": 1,
    "steps_per_print": 50,
    "optimizer": {"type": "AdamW", "params": {"lr": 3e-3, "weight_decay": 0.0}},
    "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 10, "warmup_type": "linear"}},
    "zero_optimization": {"stage": args.zero_stage},
}
deepspeed.init_distributed()
torch.set_num_threads(1)
torch.manual_seed(0)
model = TinyLM(args.vocab, args.hidden, args.layers, args.seq)
engine, optimizer, _, _ = deepspeed.initialize(args=args, model=model, config=config)

gen = torch.Generator().manual_seed(1000 + dist.get_rank())
first = last = None
for step in range(args.steps):
    tokens = batch_of_patterns(engine.train_micro_batch_size_per_gpu(), args.seq, args.vocab, gen).to(engine.device)
    loss = engine(tokens)
    engine.backward(loss)
    engine.step()
    first = loss.item() if first is None else first
    last = loss.item()

if args.checkpoint_dir:
    engine.save_checkpoint(args.checkpoint_dir)
if dist.get_rank() == 0:
    print(f"train_tiny: world={dist.get_world_size()} zero_stage={engine.zero_optimization_stage()} "
          f"steps={engine.global_steps} loss {first:.3f} -> {last:.3f} (ln(vocab)={math.log(args.vocab):.3f})",
          flush=True)
