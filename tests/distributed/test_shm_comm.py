"""The shared-memory all-reduce of inference TP ([Note: shared-memory all-reduce] in deepspeed/comm/shm.py)."""
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
