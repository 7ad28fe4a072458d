"""Shared-memory collectives: the all-reduce of inference TP and the all-gather of ZeRO-3 (deepspeed/comm/shm.py)."""
import torch

from dist_harness import run_distributed


def _matches_gloo():
    from datetime import timedelta

    from deepspeed import comm as dist
    from deepspeed.comm.shm import ShmGroup
    group = dist.new_group([0, 1])
    shm = ShmGroup.create(group, [0, 1], capacity=4096, timeout=timedelta(seconds=30))
    assert shm is not None
    g = torch.Generator().manual_seed(dist.get_rank())
    same, calls = [], 0
    for size, dtype in [(1, torch.float32), (7, torch.float32), (1024, torch.float32), (3, torch.int64),
                        (512, torch.int64), (100, torch.float64)] * 40:
        t = (torch.randn(size, generator=g) * 100).to(dtype)
        ref = t.clone()
        dist.all_reduce(ref, group=group)
        shm.all_reduce(t)
        calls += 1
        same.append(bool(torch.equal(t, ref)))
    # the same values on every rank: gather rank 1's last result
    probe = torch.randn(16, generator=g)
    shm.all_reduce(probe)
    both = [torch.empty(16), torch.empty(16)]
    dist.all_gather(both, probe)
    oversize = torch.zeros(2048)  # 8 KB > capacity: the caller must use the process group
    return all(same), calls, bool(torch.equal(both[0], both[1])), shm.fits(oversize), shm.fits(torch.zeros(8)[::2])


def test_shm_all_reduce_matches_gloo_exactly_over_many_calls():
    for ok, calls, same_on_ranks, oversize_fits, strided_fits in run_distributed(_matches_gloo, world_size=2):
        assert ok and calls == 240 and same_on_ranks
        assert not oversize_fits and not strided_fits


def _times_out():
    from datetime import timedelta

    from deepspeed import comm as dist
    from deepspeed.comm.comm import CollectiveTimeoutError
    from deepspeed.comm.shm import ShmGroup
    shm = ShmGroup.create(dist.new_group([0, 1]), [0, 1], timeout=timedelta(seconds=1))
    if dist.get_rank() == 1:
        return "skipped"  # this rank never calls: rank 0 must time out, not hang
    try:
        shm.all_reduce(torch.ones(4))
    except CollectiveTimeoutError as err:
        return str(err)
    return "no error"


def test_shm_all_reduce_times_out_naming_the_rank_and_the_missing_peer():
    message, _ = run_distributed(_times_out, world_size=2)
    assert "shm all_reduce" in message and "rank 0" in message and "[1]" in message, message


def test_shm_all_reduce_needs_a_peer():
    from deepspeed.comm.shm import ShmGroup
    assert ShmGroup.create(None, [0]) is None  # a group of one needs no all-reduce


def _tp_batch_uses_shm():
    from deepspeed import comm as dist
    from deepspeed.inference.tp import TPBatch
    tp = TPBatch(dist.new_group([0, 1]), [0, 1])
    tokens = torch.tensor([5, 6, 7]) if dist.get_rank() == 0 else torch.tensor([1, 2, 3])
    tp.broadcast_tokens(tokens)
    x = torch.full((2, 3), float(dist.get_rank() + 1))
    tp.all_reduce(x)
    big = torch.ones(2 << 20)  # over the shared capacity: through gloo
    tp.all_reduce(big)
    return tp.shm is not None, tokens.tolist(), x.tolist(), float(big[0])


def test_tp_batch_broadcasts_rank0_tokens_and_sums_partials():
    for uses_shm, tokens, x, big in run_distributed(_tp_batch_uses_shm, world_size=2):
        assert uses_shm and tokens == [5, 6, 7] and x == [[3.0] * 3] * 2 and big == 2.0


def _gather_matches_gloo():
    from datetime import timedelta

    from deepspeed import comm as dist
    from deepspeed.comm.shm import ShmGroup
    group = dist.new_group([0, 1])
    shm = ShmGroup.create(group, [0, 1], capacity=4096, timeout=timedelta(seconds=30))
    g = torch.Generator().manual_seed(10 + dist.get_rank())
    same = []
    # sizes below, at and across the 4096-byte chunk (1024 fp32, 2048 bf16), and empty
    for size, dtype in [(1, torch.float32), (1024, torch.float32), (1025, torch.float32), (5000, torch.float32),
                        (2048, torch.bfloat16), (4099, torch.bfloat16), (3, torch.int64), (0, torch.float32)] * 5:
        inp = (torch.randn(size, generator=g) * 100).to(dtype)
        ref = torch.empty(2 * size, dtype=dtype)
        dist.all_gather_into_tensor(ref, inp, group=group)
        out = torch.full((2 * size,), -1, dtype=dtype)
        shm.all_gather_into_tensor(out, inp)
        same.append(bool(torch.equal(out, ref)))
        # interleaved with all-reduces on the same slots and flags
        probe = torch.ones(4)
        shm.all_reduce(probe)
        same.append(probe.tolist() == [2.0] * 4)
    try:
        shm.all_gather_into_tensor(torch.empty(3), torch.empty(2))
        wrong_size = "accepted"
    except ValueError as err:
        wrong_size = str(err)
    return all(same), len(same), wrong_size


def test_shm_all_gather_matches_gloo_exactly_across_chunks():
    for ok, calls, wrong_size in run_distributed(_gather_matches_gloo, world_size=2):
        assert ok and calls == 80
        assert "world * 2 elements" in wrong_size, wrong_size


def _zero3_gathers_use_shm():
    import deepspeed.comm.shm as shm_mod
    from deepspeed import comm as dist
    from deepspeed.runtime.zero.collectives import gather_params
    from deepspeed.runtime.zero.partition_parameters import Init
    with Init():
        layer = torch.nn.Linear(64, 48)
    calls = []
    real = shm_mod.ShmGroup.all_gather_into_tensor
    shm_mod.ShmGroup.all_gather_into_tensor = lambda self, out, inp: calls.append(inp.numel()) or real(self, out, inp)
    before = dist.log_summary().get("all_gather_into_tensor", {"bytes": 0})["bytes"]
    gather_params(list(layer.parameters()))
    counted = dist.log_summary()["all_gather_into_tensor"]["bytes"] - before  # the comm log still sees them
    full = [layer.weight.detach().clone(), layer.bias.detach().clone()]
    both = [[torch.empty_like(t) for _ in range(2)] for t in full]
    for t, out in zip(full, both):
        dist.all_gather(out, t)
    return bool(calls), all(torch.equal(a, b) for a, b in both), tuple(full[0].shape), counted / full[0].element_size()


def test_zero3_gathers_on_one_host_go_through_shared_memory():
    for used, same_on_ranks, shape, counted in run_distributed(_zero3_gathers_use_shm, world_size=2):
        assert used and same_on_ranks and shape == (48, 64)
        assert counted == 48 * 64 + 48  # the gathered (full) elements' bytes, as gloo's are counted


def _vocab_shards_rebuild_the_logits():
    from deepspeed import comm as dist
    from deepspeed.inference.tp import TPBatch
    tp = TPBatch(dist.new_group([0, 1]), [0, 1])
    g = torch.Generator().manual_seed(4)  # the same head and hidden states on both ranks
    head, bias, hidden = torch.randn(63, 16, generator=g), torch.randn(63, generator=g), torch.randn(5, 16, generator=g)
    shard = tp.vocab_shard()
    w, b = shard.cut(head, bias)  # 32 rows each; rank 1's last row is padding
    logits = shard.gather(torch.nn.functional.linear(hidden, w, b), vocab=63)
    rows = [torch.nn.functional.linear(hidden[i:i + 1], head[j:j + 1], bias[j:j + 1])
            for i in range(5) for j in range(63)]
    ref = torch.cat(rows, dim=1).view(5, 63)  # each logit alone: no blocking can change it
    both = [torch.empty_like(logits) for _ in range(2)]
    dist.all_gather(both, logits)
    padding = w[-1].abs().sum().item() if dist.get_rank() == 1 else 0.0
    return tuple(w.shape), padding, torch.allclose(logits, ref, rtol=1e-6, atol=1e-6), torch.equal(both[0], both[1])


def test_vocab_sharded_lm_head_gathers_full_logits_in_vocabulary_order():
    for shape, padding, close, same_on_ranks in run_distributed(_vocab_shards_rebuild_the_logits, world_size=2):
        assert shape == (32, 16) and padding == 0.0
        assert close and same_on_ranks
