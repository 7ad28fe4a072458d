"""ZeRO stage 3 on 2 gloo ranks: parity, partition invariants, mode switching, generation."""
import pytest
import torch

from dist_harness import run_distributed
from simple_models import make_model, random_tokens
from zero3_models import VOCAB, tiny_hf_model

STEPS = 10


def _zero3(**extra) -> dict:
    # small thresholds so that nearly every parameter is really partitioned and prefetched
    zero = {"stage": 3, "reduce_bucket_size": 600, "stage3_param_persistence_threshold": 40,
            "stage3_prefetch_bucket_size": 800, "stage3_max_live_parameters": 4000, "stage3_max_reuse_distance": 0}
    zero.update(extra)
    return zero


def _config(zero: dict, gas: int = 1, clip: float = 0.0) -> dict:
    return {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": gas, "gradient_clipping": clip,
            "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "weight_decay": 0.01}},
            "zero_optimization": zero}


def _build(kind: str, seed: int = 0):
    return make_model(seed=seed) if kind == "tiny" else tiny_hf_model(kind, seed=seed)


def _loss(kind, model, batch):
    return model(batch) if kind == "tiny" else model(input_ids=batch, labels=batch).loss


def _data(kind, n):
    return random_tokens(n, 2, seq=12, vocab=64 if kind == "tiny" else VOCAB)


def _reference(kind: str, gas: int, clip: float) -> list:
    model = _build(kind)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    data = _data(kind, STEPS * gas * 2)
    losses = []
    for step in range(STEPS):
        total = 0.0
        for micro in range(gas):
            batch = torch.cat(data[(step * gas + micro) * 2:(step * gas + micro) * 2 + 2])
            loss = _loss(kind, model, batch) / gas
            loss.backward()
            total += loss.item()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad()
        losses.append(total)
    return losses


def _train(kind: str, zero: dict, gas: int, clip: float):
    import deepspeed
    from deepspeed import comm as dist
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus
    rank = dist.get_rank()
    engine, _, _, _ = deepspeed.initialize(model=_build(kind), config=_config(zero, gas, clip))
    data = _data(kind, STEPS * gas * 2)
    losses = []
    for step in range(STEPS):
        total = torch.zeros(())
        for micro in range(gas):
            # the reference's global batch (step, micro) is micro-batches 2k and 2k+1; rank r takes 2k+r
            batch = data[(step * gas + micro) * 2 + rank]
            loss = _loss(kind, engine, batch)
            engine.backward(loss)
            engine.step()
            total += loss.detach() / gas
        dist.all_reduce(total)
        losses.append(total.item() / 2)
        # between steps nothing is gathered except persistent params
        for p in engine.module.parameters():
            assert p.ds_status == (ZeroParamStatus.AVAILABLE if p.ds_persist else ZeroParamStatus.NOT_AVAILABLE)
    return losses


GRID = [
    ("tiny", {}, 1, 0.0),
    ("tiny", {}, 2, 0.0),
    ("tiny", {}, 1, 0.05),
    ("tiny", {"offload_optimizer": {"device": "cpu"}}, 1, 0.0),
    ("tiny", {"offload_param": {"device": "cpu"}, "offload_optimizer": {"device": "cpu"}}, 2, 0.05),
    ("tiny", {"stage3_max_reuse_distance": 10**9, "stage3_prefetch_bucket_size": 0}, 1, 0.0),
    ("opt", {}, 1, 0.05),
    ("llama", {}, 2, 0.0),
]


@pytest.mark.parametrize("kind,extra,gas,clip", GRID)
def test_stage3_matches_single_process(kind, extra, gas, clip):
    ref = _reference(kind, gas, clip)
    for losses in run_distributed(_train, world_size=2, args=(kind, _zero3(**extra), gas, clip)):
        assert losses == pytest.approx(ref, rel=1e-5)
    assert len(set(ref)) == len(ref)  # the weights really move every step


def _with_solo_gathers(fn, *args):
    """Run `fn` with nearly every shard all-gathered by itself ([Note: solo gathers]); biases and norms
    stay below the threshold, so every gather mixes solo and coalesced collectives."""
    from deepspeed.runtime.zero import collectives
    collectives.SOLO_GATHER_NUMEL = 64
    return fn(*args)


@pytest.mark.parametrize("kind,extra,gas,clip", [GRID[0], GRID[4], GRID[6]])
def test_stage3_with_solo_gathers_matches_single_process(kind, extra, gas, clip):
    ref = _reference(kind, gas, clip)
    for losses in run_distributed(_with_solo_gathers, world_size=2, args=(_train, kind, _zero3(**extra), gas, clip)):
        assert losses == pytest.approx(ref, rel=1e-5)


def _invariants():
    import deepspeed
    from deepspeed import comm as dist
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus
    reference = make_model()
    engine, _, _, _ = deepspeed.initialize(model=make_model(), config=_config(_zero3()))
    world = dist.get_world_size()
    for p in engine.module.parameters():
        assert p.ds_tensor.numel() == (p.ds_numel + world - 1) // world
        if not p.ds_persist:
            assert p.ds_status == ZeroParamStatus.NOT_AVAILABLE and p.data.numel() == 0
    params = list(engine.module.parameters())
    with deepspeed.zero.GatheredParameters(params):
        for p, q in zip(params, reference.parameters()):
            assert torch.equal(p.data, q.data)
    assert all(p.data.numel() == 0 for p in params if not p.ds_persist)
    # an edit on rank 0 reaches every rank
    weight = engine.module.blocks[0].fc1.weight
    with deepspeed.zero.GatheredParameters(weight, modifier_rank=0):
        if dist.get_rank() == 0:
            weight.data.fill_(0.5)
    with deepspeed.zero.GatheredParameters(weight):
        edited = bool((weight.data == 0.5).all())
    # GatheredParameters ignores plain tensors and can be disabled
    with deepspeed.zero.GatheredParameters([torch.nn.Parameter(torch.ones(2))]):
        pass
    with deepspeed.zero.GatheredParameters(weight, enabled=False):
        assert weight.data.numel() == 0
    ids = [p.ds_id for p in params]
    return edited, len(set(ids)) == len(ids)


def test_partition_invariants_and_gathered_parameters():
    assert run_distributed(_invariants, world_size=2) == [(True, True), (True, True)]
    assert run_distributed(_with_solo_gathers, world_size=2, args=(_invariants,)) == [(True, True), (True, True)]


def _switching(stage: int, cycles: int):
    import deepspeed
    from deepspeed import comm as dist
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus
    zero = _zero3(stage3_prefetch_bucket_size=3000) if stage == 3 else {"stage": stage}
    engine, _, _, _ = deepspeed.initialize(model=tiny_hf_model("opt"), config=_config(zero))
    data = _data("opt", 4)
    outputs, max_live = [], 0
    for i in range(cycles):
        batch = data[(i % 2) * 2 + dist.get_rank()]
        engine.train()
        engine.backward(engine(input_ids=batch, labels=batch).loss)
        engine.step()
        engine.eval()
        with torch.no_grad():
            eval_loss = engine(input_ids=batch, labels=batch).loss.item()
        generated = engine.module.generate(batch[:, :4], max_new_tokens=3, do_sample=False, synced_gpus=stage == 3,
                                           pad_token_id=0)
        if stage == 3:
            statuses = [p.ds_status for p in engine.module.parameters()]
            assert ZeroParamStatus.INFLIGHT not in statuses
            assert engine.parameter_offload.coordinator.inflight_count() == 0
            live = sum(p.ds_numel for p in engine.module.parameters()
                       if p.ds_status == ZeroParamStatus.AVAILABLE and not p.ds_persist)
            max_live = max(max_live, live)
        if i % 20 == 0 or i == cycles - 1:
            outputs.append((round(eval_loss, 4), generated.tolist()))
    return outputs, max_live


@pytest.mark.slow
def test_200_train_eval_generate_alternations():
    stage3 = run_distributed(_switching, world_size=2, args=(3, 200), timeout=600)
    stage0 = run_distributed(_switching, world_size=2, args=(0, 200), timeout=600)
    for (out3, max_live), (out0, _) in zip(stage3, stage0):
        assert out3 == out0
        assert max_live == 0  # nothing non-persistent stays gathered after a call


def test_train_eval_generate_alternations_quick():
    stage3 = run_distributed(_switching, world_size=2, args=(3, 12))
    stage0 = run_distributed(_switching, world_size=2, args=(0, 12))
    assert [o for o, _ in stage3] == [o for o, _ in stage0]
    assert all(m == 0 for _, m in stage3)


def _generate(stage: int):
    import deepspeed
    from deepspeed import comm as dist
    config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": _zero3() if stage == 3 else {"stage": 0}}
    engine, _, _, _ = deepspeed.initialize(model=tiny_hf_model("llama"), config=config)
    engine.eval()
    # different prompt lengths and an eos that one rank hits early
    prompt = torch.tensor([[5, 9, 11, 3, 7][:3 + 2 * dist.get_rank()]])
    out = engine.module.generate(prompt, max_new_tokens=8 + 6 * dist.get_rank(), do_sample=False,
                                 synced_gpus=stage == 3, pad_token_id=0)
    return out.tolist()


def test_generate_synced_gpus_matches_single_process():
    model = tiny_hf_model("llama").eval()
    expected = []
    for rank in (0, 1):
        prompt = torch.tensor([[5, 9, 11, 3, 7][:3 + 2 * rank]])
        expected.append(model.generate(prompt, max_new_tokens=8 + 6 * rank, do_sample=False, pad_token_id=0).tolist())
    assert run_distributed(_generate, world_size=2, args=(3,)) == expected


def _unwrap():
    import deepspeed
    engine, _, _, _ = deepspeed.initialize(model=tiny_hf_model("opt"),
                                           config={"train_micro_batch_size_per_gpu": 1, "zero_optimization": _zero3()})
    engine.eval()
    calls = {"n": 0}
    real = deepspeed.runtime.zero.coordinator.gather_params

    def counting(params, async_op=False):
        calls["n"] += 1
        return real(params, async_op)

    deepspeed.runtime.zero.coordinator.gather_params = counting
    with deepspeed.zero.unwrap_model_for_generation(engine) as model:
        out = model.generate(torch.tensor([[4, 5, 6]]), max_new_tokens=6, do_sample=False, pad_token_id=0)
    deepspeed.runtime.zero.coordinator.gather_params = real
    released = all(p.data.numel() == 0 for p in engine.module.parameters() if not p.ds_persist)
    return out.tolist(), calls["n"], released


def test_unwrap_model_for_generation_gathers_once():
    expected = tiny_hf_model("opt").eval().generate(torch.tensor([[4, 5, 6]]), max_new_tokens=6, do_sample=False,
                                                     pad_token_id=0).tolist()
    for out, per_module_gathers, released in run_distributed(_unwrap, world_size=2):
        assert out == expected and per_module_gathers == 0 and released


def _safe_get():
    import deepspeed
    from deepspeed.runtime.zero.safe_get import safe_get_full_fp32_param, safe_get_full_grad
    engine, _, _, _ = deepspeed.initialize(model=make_model(), config=_config(_zero3()))
    weight = engine.module.blocks[0].fc1.weight
    full = safe_get_full_fp32_param(weight)
    batch = random_tokens(1, 2, seq=12)[0]
    engine.backward(engine(batch))
    grad = safe_get_full_grad(weight)
    return full.tolist(), list(grad.shape)


def test_safe_get_full_fp32_param_and_grad():
    full, grad_shape = run_distributed(_safe_get, world_size=2)[0]
    assert full == make_model().blocks[0].fc1.weight.tolist()
    assert grad_shape == [128, 32]
