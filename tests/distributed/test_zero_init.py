"""zero.Init: partitioned at construction, bounded peak memory, HF from_pretrained under HfDeepSpeedConfig."""
import pytest
import torch

from dist_harness import run_distributed

WIDTH = 1024  # each layer: 4 MiB of fp32 weights
LAYER_MIB = WIDTH * WIDTH * 4 / 2**20


class _Stack(torch.nn.Module):

    def __init__(self, layers: int):
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(WIDTH, WIDTH, bias=False) for _ in range(layers))


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _fixed_mmap_threshold() -> None:
    """Make glibc return freed large blocks to the OS, so peak RSS measures live tensors."""
    import ctypes
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 1 << 20)
    libc.mallopt(m_trim_threshold, 1 << 20)


def _peak_growth_mib(use_init: bool, layers: int):
    import deepspeed
    _fixed_mmap_threshold()
    config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}
    init = deepspeed.zero.Init(config_dict_or_path=config, enabled=use_init, dtype=torch.float32)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS counter (VmHWM) to the current RSS
    before = _status_kib("VmRSS") * 1024
    with init:
        model = _Stack(layers)
    peak = _status_kib("VmHWM") * 1024
    shards = sum(p.ds_tensor.numel() * 4 for p in model.parameters()) if use_init else None
    return (peak - before) / 2**20, shards


def test_zero_init_peak_memory_is_a_shard_plus_a_layer():
    """Peak RSS while building grows by 1/world of the model (plus a constant of a few layers)."""
    small, large = 8, 16
    grown = {}
    for layers in (small, large):
        results = run_distributed(_peak_growth_mib, world_size=2, args=(True, layers))
        for _, shard_bytes in results:
            assert shard_bytes == layers * WIDTH * WIDTH * 4 // 2
        grown[layers] = max(g for g, _ in results)
        full = layers * LAYER_MIB
        assert grown[layers] < full / 2 + 5 * LAYER_MIB, grown
    slope = (grown[large] - grown[small]) / ((large - small) * LAYER_MIB)
    assert slope < 0.6, grown  # ~1/world_size of every added layer stays resident
    plain = [run_distributed(_peak_growth_mib, world_size=1, args=(False, n))[0][0] for n in (small, large)]
    assert (plain[1] - plain[0]) / ((large - small) * LAYER_MIB) > 0.9  # without Init: all of it


def _hf_from_pretrained(path: str):
    import deepspeed
    from transformers import AutoModelForCausalLM
    from transformers.integrations import HfDeepSpeedConfig
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus
    config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3,
              "stage3_param_persistence_threshold": 0}}
    keep = HfDeepSpeedConfig(config)  # noqa: F841 (must stay alive while from_pretrained runs)
    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
    partitioned = all(p.ds_status == ZeroParamStatus.NOT_AVAILABLE for p in model.parameters())
    engine, _, _, _ = deepspeed.initialize(model=model, config=config)
    engine.eval()
    with torch.no_grad():
        logits = engine(input_ids=torch.tensor([[3, 4, 5, 6]])).logits
    return partitioned, logits.tolist()


def test_hf_from_pretrained_under_hf_deepspeed_config(tmp_path):
    from zero3_models import tiny_hf_model
    model = tiny_hf_model("llama", seed=3)
    model.save_pretrained(tmp_path)
    expected = model.eval()(input_ids=torch.tensor([[3, 4, 5, 6]])).logits
    for partitioned, logits in run_distributed(_hf_from_pretrained, world_size=2, args=(str(tmp_path),)):
        assert partitioned
        assert torch.allclose(torch.tensor(logits), expected, atol=1e-5)
