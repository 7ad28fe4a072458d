"""Tiny HF models for ZeRO-3 tests (built from configs, never downloaded)."""
import torch

__all__ = ["tiny_hf_model", "VOCAB"]

VOCAB = 96


def tiny_hf_model(kind: str, seed: int = 0) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM
    torch.manual_seed(seed)
    if kind == "opt":
        cfg = OPTConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
                        max_position_embeddings=64, word_embed_proj_dim=32, dropout=0.0, pad_token_id=0)
        return OPTForCausalLM(cfg)
    if kind == "llama":
        # grouped-query attention and tied embeddings
        cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                          tie_word_embeddings=True, pad_token_id=0)
        return LlamaForCausalLM(cfg)
    raise ValueError(kind)
