"""RewardModel maths against hand-computed values, and strict critic checkpoint loading (spec §4, §12.8)."""
import math
import os
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dschat.lora import LinearLayer_LoRA, convert_linear_layer_to_lora
from dschat.models import CheckpointMismatchError, RewardModel, create_critic_model, save_hf_format
from dschat.utils import load_hf_tokenizer

PAD = 0


class FixedHidden(nn.Module):
    """A base model whose hidden state at (row, t) is a given number, so rewards are known exactly."""

    def __init__(self, values):
        super().__init__()
        self.config = SimpleNamespace(hidden_size=1)
        self.values = torch.tensor(values, dtype=torch.float32)

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        assert input_ids.shape == self.values.shape
        return (self.values.unsqueeze(-1),)


def _reward_model(values, num_padding_at_beginning=0, compute_fp32_loss=False):
    model = RewardModel(FixedHidden(values), SimpleNamespace(pad_token_id=PAD), num_padding_at_beginning,
                        compute_fp32_loss)
    with torch.no_grad():
        model.v_head.weight.fill_(1.0)  # reward = hidden state
    return model


def softplus_neg(x):
    """-logsigmoid(x) = log(1 + exp(-x))."""
    return math.log1p(math.exp(-x))


def test_pairwise_loss_divergent_identical_and_full_length_pairs():
    chosen = [[5, 6, 7, 8, PAD, PAD],  # ends at 4
              [5, 6, 7, PAD, PAD, PAD],  # identical pair
              [5, 6, 7, 8, 9, 10]]  # no pad: ends at L = 6
    rejected = [[5, 6, 9, PAD, PAD, PAD],  # ends at 3; first difference at 2
                [5, 6, 7, PAD, PAD, PAD],
                [5, 6, 7, 8, 9, 11]]  # differs only at the last position
    c_vals = [[9, 9, 1.0, 2.0, 9, 9], [9, 9, 0.7, 9, 9, 0.3], [9, 9, 9, 9, 9, 1.5]]
    r_vals = [[9, 9, 0.5, -1.0, 9, 9], [9, 9, -0.4, 9, 9, -0.2], [9, 9, 9, 9, 9, 2.5]]
    model = _reward_model(c_vals + r_vals)
    out = model(torch.tensor(chosen + rejected), torch.tensor(chosen + rejected) != PAD)
    # pair 0: span [div=2, end=max(4, 3)=4) -> positions 2 and 3
    loss0 = (softplus_neg(1.0 - 0.5) + softplus_neg(2.0 - (-1.0))) / 2
    # pair 1: identical -> only position L-1 = 5 is compared
    loss1 = softplus_neg(0.3 - (-0.2))
    # pair 2: span [5, 6)
    loss2 = softplus_neg(1.5 - 2.5)
    assert out["loss"].item() == pytest.approx((loss0 + loss1 + loss2) / 3, rel=1e-6)
    # scores at each row's last real token: chosen c_ind-1, rejected r_ind-1 (r_ind = c_ind when identical)
    assert out["chosen_mean_scores"].tolist() == pytest.approx([2.0, 0.7, 1.5])
    assert out["rejected_mean_scores"].tolist() == pytest.approx([0.5, -0.4, 2.5])


def test_num_padding_at_beginning_skips_opt_bos():
    # OPT: BOS has the pad id, so the first pad of every row is the BOS.
    chosen = [[PAD, 5, 6, PAD, PAD, PAD]]  # second pad at 3
    rejected = [[PAD, 5, 7, 8, PAD, PAD]]  # second pad at 4
    c_vals = [[9, 9, 0.2, 0.1, 9, 9]]
    r_vals = [[9, 9, 0.4, 1.1, 9, 9]]
    out = _reward_model(c_vals + r_vals, num_padding_at_beginning=1)(torch.tensor(chosen + rejected))
    expected = (softplus_neg(0.2 - 0.4) + softplus_neg(0.1 - 1.1)) / 2  # span [2, 4)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-6)
    assert out["chosen_mean_scores"].tolist() == pytest.approx([0.2])  # c_ind = 3
    assert out["rejected_mean_scores"].tolist() == pytest.approx([1.1])  # r_ind = 4
    # with num_padding_at_beginning=0 the BOS would end both rows at 0: a different (wrong) span
    out0 = _reward_model(c_vals + r_vals, num_padding_at_beginning=0)(torch.tensor(chosen + rejected))
    assert out0["loss"].item() != pytest.approx(expected, rel=1e-3)


def test_pair_differing_only_after_both_ends_is_treated_as_identical():
    chosen = [[5, 6, PAD, PAD, 3]]
    rejected = [[5, 6, PAD, PAD, 4]]  # first difference at 4, both end at 2
    vals = [[9, 0.5, 9, 9, 1.0], [9, 0.5, 9, 9, 3.0]]
    out = _reward_model(vals)(torch.tensor(chosen + rejected))
    assert out["loss"].item() == pytest.approx(softplus_neg(1.0 - 3.0), rel=1e-6)
    assert torch.isfinite(out["loss"])


def test_divergence_at_position_zero_is_an_error():
    with pytest.raises(ValueError, match="position 0"):
        _reward_model([[0.0, 0.0], [0.0, 0.0]])(torch.tensor([[5, 6], [7, 6]]))


def test_fp32_loss_from_half_rewards():
    vals = [[9, 9, 1.0, 2.0], [9, 9, 0.5, -1.0]]
    model = _reward_model(vals, compute_fp32_loss=True)
    model.rwtransformer.values = model.rwtransformer.values.half()
    model.v_head.half()
    out = model(torch.tensor([[5, 6, 7, 8], [5, 6, 9, 3]]))
    assert out["loss"].dtype == torch.float32
    assert out["loss"].item() == pytest.approx((softplus_neg(0.5) + softplus_neg(3.0)) / 2, rel=1e-3)


def test_forward_value_end_scores():
    ids = torch.tensor([[PAD, 4, 5, 6, PAD, PAD],  # left-padded prompt of length 2, answer ends at 4
                        [3, 4, PAD, PAD, PAD, PAD],  # empty answer -> last prompt token
                        [3, 4, 5, 6, 7, 8]])  # answer fills the row -> last position
    vals = [[0.0, 0.1, 0.2, 0.3, 0.4, 0.5], [1.0, 1.1, 1.2, 1.3, 1.4, 1.5], [2.0, 2.1, 2.2, 2.3, 2.4, 2.5]]
    model = _reward_model(vals)
    out = model.forward_value(ids, ids != PAD, prompt_length=2)
    torch.testing.assert_close(out["values"], torch.tensor(vals))
    assert out["chosen_end_scores"].tolist() == pytest.approx([0.3, 1.1, 2.5])
    torch.testing.assert_close(model.forward_value(ids, return_value_only=True), torch.tensor(vals))
    with pytest.raises(ValueError, match="prompt_length"):
        model.forward_value(ids, prompt_length=1)


def test_v_head_width_follows_the_base_config():
    tok = SimpleNamespace(pad_token_id=0)
    base = FixedHidden([[0.0]])
    base.config = SimpleNamespace(word_embed_proj_dim=24, hidden_size=64)  # OPT projects to word_embed_proj_dim
    assert RewardModel(base, tok).v_head.weight.shape == (1, 24)
    base.config = SimpleNamespace(n_embd=40)  # GPT-2 style
    assert RewardModel(base, tok).v_head.weight.shape == (1, 40)
    assert RewardModel(base, tok).v_head.bias is None


# --------------------------------------------------------------------------
# Real tiny models: positions, checkpoints.
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    return load_hf_tokenizer("tiny-llama")


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-opt"])
def test_values_do_not_depend_on_left_padding(tokenizer, preset):
    torch.manual_seed(0)
    critic = create_critic_model(preset, tokenizer, None).eval()
    tokens = tokenizer("what is 2+3? 5", return_tensors="pt").input_ids[0]
    n, pad = len(tokens), tokenizer.pad_token_id

    def values(left):
        ids = torch.cat([torch.full((left,), pad), tokens]).unsqueeze(0)
        return critic.forward_value(ids, (ids != pad).long(), return_value_only=True)[0, left:]

    torch.testing.assert_close(values(0), values(5), atol=1e-5, rtol=1e-4)
    assert values(0).shape == (n,)


def test_gradient_checkpointing_delegates(tokenizer):
    critic = create_critic_model("tiny-llama", tokenizer, None)
    critic.gradient_checkpointing_enable()
    assert critic.rwtransformer.is_gradient_checkpointing
    critic.gradient_checkpointing_disable()
    assert not critic.rwtransformer.is_gradient_checkpointing


def _trained_critic(tokenizer, preset="tiny-llama", lora=False):
    torch.manual_seed(0)
    critic = create_critic_model(preset, tokenizer, None, num_padding_at_beginning=0)
    with torch.no_grad():
        critic.v_head.weight.normal_()
    if lora:
        convert_linear_layer_to_lora(critic, "layers.", lora_dim=4)
        for layer in critic.modules():
            if isinstance(layer, LinearLayer_LoRA):
                nn.init.normal_(layer.lora_left_weight, std=0.05)
    return critic.eval()


def _values(model, tokenizer):
    enc = tokenizer(["reverse abc: cba", "3+4=7"], padding="max_length", max_length=12, return_tensors="pt")
    with torch.no_grad():
        return model.forward_value(enc.input_ids, enc.attention_mask, prompt_length=3)


@pytest.mark.parametrize("preset,lora", [("tiny-llama", True), ("tiny-opt", False)])
def test_saved_critic_loads_back_with_its_head(tmp_path, tokenizer, preset, lora):
    critic = _trained_critic(tokenizer, preset, lora)
    expected = _values(critic, tokenizer)
    save_hf_format(critic, tokenizer, SimpleNamespace(output_dir=str(tmp_path)), sub_folder="critic")
    folder = str(tmp_path / "critic")
    keys = load_file(os.path.join(folder, "model.safetensors")).keys()
    assert "v_head.weight" in keys and not any("lora" in k for k in keys)
    for rlhf_training in (True, False):  # a reward folder is never read as a bare LM
        loaded = create_critic_model(folder, tokenizer, None, rlhf_training=rlhf_training).eval()
        got = _values(loaded, tokenizer)
        torch.testing.assert_close(got["values"], expected["values"], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got["chosen_end_scores"], expected["chosen_end_scores"], atol=1e-5, rtol=1e-4)


def test_critic_from_actor_folder_lists_missing_head(tmp_path, tokenizer):
    from transformers import AutoModelForCausalLM
    from dschat.models import create_hf_model
    actor = create_hf_model(AutoModelForCausalLM, "tiny-llama", tokenizer)
    save_hf_format(actor, tokenizer, SimpleNamespace(output_dir=str(tmp_path)))
    with pytest.raises(CheckpointMismatchError) as err:
        create_critic_model(str(tmp_path), tokenizer, None, rlhf_training=True)
    message = str(err.value)
    assert "missing keys" in message and "v_head.weight" in message
    assert "unexpected keys" in message and "lm_head.weight" in message


def test_strict_loading_lists_unexpected_and_mismatched_keys(tmp_path, tokenizer):
    critic = _trained_critic(tokenizer)
    save_hf_format(critic, tokenizer, SimpleNamespace(output_dir=str(tmp_path)))
    path = os.path.join(tmp_path, "model.safetensors")
    state = load_file(path)
    state["extra.weight"] = torch.zeros(2)
    state["v_head.weight"] = torch.zeros(1, 7)
    del state["rwtransformer.norm.weight"]
    save_file(state, path, metadata={"format": "pt"})
    with pytest.raises(CheckpointMismatchError) as err:
        create_critic_model(str(tmp_path), tokenizer, None, rlhf_training=True)
    message = str(err.value)
    assert "extra.weight" in message and "rwtransformer.norm.weight" in message
    assert "v_head.weight: checkpoint (1, 7) vs model (1, 64)" in message


def test_old_prefix_and_bin_format_are_accepted(tmp_path, tokenizer):
    critic = _trained_critic(tokenizer)
    expected = _values(critic, tokenizer)
    save_hf_format(critic, tokenizer, SimpleNamespace(output_dir=str(tmp_path)), safe_serialization=False)
    assert not os.path.exists(tmp_path / "model.safetensors")
    path = os.path.join(tmp_path, "pytorch_model.bin")
    state = torch.load(path, weights_only=True)
    # DS-Chat before Oct 2023 spelled the base-model attribute "rwtranrsformer"
    torch.save({k.replace("rwtransformer.", "rwtranrsformer."): v for k, v in state.items()}, path)
    for rlhf_training in (True, False):
        loaded = create_critic_model(str(tmp_path), tokenizer, None, rlhf_training=rlhf_training).eval()
        torch.testing.assert_close(_values(loaded, tokenizer)["values"], expected["values"], atol=1e-5, rtol=1e-4)


def test_rlhf_critic_needs_a_checkpoint(tmp_path, tokenizer):
    with pytest.raises(FileNotFoundError, match="step-2"):
        create_critic_model(str(tmp_path), tokenizer, None, rlhf_training=True)
    with pytest.raises(FileNotFoundError):
        create_critic_model("tiny-llama", tokenizer, None, rlhf_training=True)
