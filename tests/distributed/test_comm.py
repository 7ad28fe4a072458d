"""deepspeed.comm on gloo ranks, checked against closed-form values.

Rank r contributes values built from r, so every expected result is written
out by hand below (world size 2 unless stated).
"""
import os
import time
import warnings
from datetime import timedelta

import pytest
import torch
import torch.distributed as tdist

import deepspeed.comm as dist
import deepspeed.comm.comm as comm_impl
import deepspeed.utils.groups as ds_utils_groups
from deepspeed.comm import CollectiveTimeoutError, ReduceOp, groups
from dist_harness import distributed_test, run_distributed

_LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


# ---------------------------------------------------------------- no ranks
def test_reduce_op_enum_values_and_mapping():
    assert [op.value for op in ReduceOp] == list(range(9))
    assert [op.name for op in ReduceOp] == ["SUM", "PRODUCT", "MIN", "MAX", "BAND", "BOR", "BXOR", "AVG", "UNUSED"]
    from deepspeed.comm.reduce_op import to_torch_op
    assert to_torch_op(ReduceOp.MAX) == tdist.ReduceOp.MAX
    assert to_torch_op(tdist.ReduceOp.BXOR) == tdist.ReduceOp.BXOR
    with pytest.raises(ValueError, match="UNUSED"):
        to_torch_op(ReduceOp.UNUSED)
    with pytest.raises(TypeError):
        to_torch_op("sum")


def test_avg_on_integer_tensor_is_rejected_before_communicating():
    with pytest.raises(TypeError, match="floating"):
        dist.all_reduce(torch.ones(2, dtype=torch.int64), op=ReduceOp.AVG)


def test_default_timeout_follows_deepspeed_timeout(monkeypatch):
    monkeypatch.delenv("DEEPSPEED_TIMEOUT", raising=False)
    assert comm_impl._default_timeout() == timedelta(minutes=10)
    monkeypatch.setenv("DEEPSPEED_TIMEOUT", "3")
    assert comm_impl._default_timeout() == timedelta(minutes=3)


def test_public_names_exist():
    for name in ["broadcast", "broadcast_object_list", "all_gather", "all_gather_object", "all_gather_into_tensor",
                 "allgather_fn", "all_gather_coalesced", "reduce_scatter", "reduce_scatter_tensor",
                 "reduce_scatter_fn", "all_to_all_single", "all_to_all", "send", "recv", "isend", "irecv", "gather",
                 "scatter", "barrier", "monitored_barrier", "reduce", "all_reduce", "all_reduce_coalesced",
                 "inference_all_reduce", "get_rank", "get_world_size", "get_local_rank", "get_global_rank",
                 "get_world_group", "new_group", "is_initialized", "destroy_process_group",
                 "has_all_gather_into_tensor", "has_reduce_scatter_tensor", "log_summary", "init_distributed"]:
        assert callable(getattr(dist, name)), name
    assert dist.has_all_gather_into_tensor() and dist.has_reduce_scatter_tensor()


# ---------------------------------------------------------------- collectives
def _reductions():
    r = dist.get_rank()
    out = {}
    for label, op in [("sum", ReduceOp.SUM), ("prod", ReduceOp.PRODUCT), ("min", ReduceOp.MIN),
                      ("max", ReduceOp.MAX), ("avg", ReduceOp.AVG), ("torch_avg", tdist.ReduceOp.AVG),
                      ("torch_sum", tdist.ReduceOp.SUM)]:
        t = torch.full((3,), float(r + 1))
        dist.all_reduce(t, op=op)
        out[label] = t.tolist()
    for label, op in [("band", ReduceOp.BAND), ("bor", ReduceOp.BOR), ("bxor", ReduceOp.BXOR)]:
        t = torch.tensor([6 if r == 0 else 3])
        dist.all_reduce(t, op=op)
        out[label] = t.item()
    t = torch.full((2,), float(r + 1))
    work = dist.all_reduce(t, op=ReduceOp.AVG, async_op=True)
    work.wait()
    out["async_avg"] = t.tolist()
    t = torch.full((2,), float(r + 1))
    dist.reduce(t, dst=0, op=ReduceOp.AVG)
    out["reduce_avg"] = t.tolist() if r == 0 else None
    t = torch.full((2,), float(r + 1))
    dist.inference_all_reduce(t)
    out["inference"] = t.tolist()
    return out


def test_all_reduce_and_reduce_ops():
    for out in run_distributed(_reductions):
        assert out["sum"] == out["torch_sum"] == [3.0] * 3
        assert out["prod"] == [2.0] * 3
        assert out["min"] == [1.0] * 3 and out["max"] == [2.0] * 3
        assert out["avg"] == out["torch_avg"] == out["async_avg"][:1] * 3 == [1.5] * 3
        assert (out["band"], out["bor"], out["bxor"]) == (6 & 3, 6 | 3, 6 ^ 3)
        assert out["inference"] == [3.0, 3.0]
    assert run_distributed(_reductions)[0]["reduce_avg"] == [1.5, 1.5]


def _tensor_collectives():
    r, w = dist.get_rank(), dist.get_world_size()
    out = {}
    gathered = torch.empty(2 * w)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist.all_gather_into_tensor(gathered, torch.full((2,), float(r)))
        out["ag_tensor"] = gathered.tolist()
        dist.allgather_fn(gathered, torch.full((2,), float(r + 5)))
        out["allgather_fn"] = gathered.tolist()
        rs_in = torch.arange(4.0) + 10 * r
        rs_out = torch.empty(2)
        dist.reduce_scatter_tensor(rs_out, rs_in)
        out["rs_sum"] = rs_out.tolist()
        dist.reduce_scatter_tensor(rs_out, rs_in, op=ReduceOp.AVG)
        out["rs_avg"] = rs_out.tolist()
        dist.reduce_scatter_fn(rs_out, rs_in, op=ReduceOp.MAX)
        out["rs_fn_max"] = rs_out.tolist()
    out["warnings"] = [f"{w_.category.__name__}: {w_.message}" for w_ in caught]
    lst_out = torch.empty(2)
    dist.reduce_scatter(lst_out, [torch.full((2,), float(r + 1)), torch.full((2,), float(10 * (r + 1)))])
    out["rs_list"] = lst_out.tolist()
    parts = [torch.empty(1) for _ in range(w)]
    dist.all_gather(parts, torch.tensor([float(r * 7)]))
    out["all_gather"] = [p.item() for p in parts]
    coalesced = [[torch.empty(1) for _ in range(w)], [torch.empty(2) for _ in range(w)]]
    dist.all_gather_coalesced(coalesced, [torch.tensor([float(r)]), torch.full((2,), float(r + 3))])
    out["ag_coalesced"] = [[t.tolist() for t in group] for group in coalesced]
    a2a_out = torch.empty(2)
    dist.all_to_all_single(a2a_out, torch.tensor([10.0 * r, 10.0 * r + 1]))
    out["a2a_single"] = a2a_out.tolist()
    a2a_list = [torch.empty(1) for _ in range(w)]
    dist.all_to_all(a2a_list, [torch.tensor([100.0 * r + j]) for j in range(w)])
    out["a2a_list"] = [t.item() for t in a2a_list]
    b = torch.tensor([float(r + 40)])
    dist.broadcast(b, src=1)
    out["broadcast"] = b.item()
    tensors = [torch.full((2,), float(r + 1)), torch.full((3,), r + 1, dtype=torch.int64), torch.full((1, 2), 2.0 * r)]
    dist.all_reduce_coalesced(tensors)
    out["ar_coalesced"] = [t.tolist() for t in tensors]
    floats = [torch.full((2,), float(r + 1)), torch.full((1, 2), 2.0 * r)]
    dist.all_reduce_coalesced(floats, op=ReduceOp.AVG, async_op=True).wait()
    out["ar_coalesced_avg"] = [t.tolist() for t in floats]
    return out


def test_tensor_collectives():
    for r, out in enumerate(run_distributed(_tensor_collectives)):
        assert out["ag_tensor"] == [0.0, 0.0, 1.0, 1.0]
        assert out["allgather_fn"] == [5.0, 5.0, 6.0, 6.0]
        # sum over ranks of arange(4) + 10r is 2*arange(4) + 10; rank r keeps chunk r.
        total = [10.0, 12.0, 14.0, 16.0]
        assert out["rs_sum"] == total[2 * r:2 * r + 2]
        assert out["rs_avg"] == [v / 2 for v in total[2 * r:2 * r + 2]]
        assert out["rs_fn_max"] == [10.0 + v for v in range(4)][2 * r:2 * r + 2]
        assert out["warnings"] == []  # no FutureWarning from deprecated torch names
        assert out["rs_list"] == ([3.0, 3.0] if r == 0 else [30.0, 30.0])
        assert out["all_gather"] == [0.0, 7.0]
        assert out["ag_coalesced"] == [[[0.0], [1.0]], [[3.0, 3.0], [4.0, 4.0]]]
        assert out["a2a_single"] == [float(r), 10.0 + r]
        assert out["a2a_list"] == [float(r), 100.0 + r]
        assert out["broadcast"] == 41.0
        assert out["ar_coalesced"] == [[3.0, 3.0], [3, 3, 3], [[2.0, 2.0]]]
        assert out["ar_coalesced_avg"] == [[1.5, 1.5], [[1.0, 1.0]]]


def _fallback_single_tensor_ops():
    # Pretend torch has no single-tensor all-gather / reduce-scatter, as on
    # an old torch: the list-based fallbacks must give the same results.
    comm_impl._ALL_GATHER_SINGLE_NAMES = ()
    comm_impl._REDUCE_SCATTER_SINGLE_NAMES = ()
    r = dist.get_rank()
    gathered = torch.empty(4)
    dist.all_gather_into_tensor(gathered, torch.full((2,), float(r)))
    rs_out = torch.empty(2)
    dist.reduce_scatter_tensor(rs_out, torch.arange(4.0) + 10 * r, op=ReduceOp.AVG)
    return gathered.tolist(), rs_out.tolist()


def test_single_tensor_fallbacks():
    results = run_distributed(_fallback_single_tensor_ops)
    assert results[0] == ([0.0, 0.0, 1.0, 1.0], [5.0, 6.0])
    assert results[1] == ([0.0, 0.0, 1.0, 1.0], [7.0, 8.0])


def _point_to_point_and_objects():
    r = dist.get_rank()
    out = {}
    if r == 0:
        dist.send(torch.tensor([42.0]), dst=1)
        box = torch.empty(1)
        dist.irecv(box, src=1).wait()
        out["p2p"] = box.item()
    else:
        box = torch.empty(1)
        dist.recv(box, src=0)
        dist.isend(torch.tensor([box.item() + 1]), dst=0).wait()
        out["p2p"] = box.item()
    gather_list = [torch.empty(1) for _ in range(2)] if r == 0 else None
    dist.gather(torch.tensor([float(r + 1)]), gather_list, dst=0)
    out["gather"] = [t.item() for t in gather_list] if r == 0 else None
    got = torch.empty(1)
    dist.scatter(got, [torch.tensor([5.0]), torch.tensor([7.0])] if r == 0 else None, src=0)
    out["scatter"] = got.item()
    objects = [{"from": r}, None]
    dist.broadcast_object_list(objects, src=0)
    out["bcast_obj"] = objects
    everyone = [None, None]
    dist.all_gather_object(everyone, ("x", r))
    out["ag_obj"] = everyone
    dist.barrier()
    dist.monitored_barrier(timeout=timedelta(seconds=30))
    out["ids"] = (dist.get_rank(), dist.get_world_size(), dist.get_local_rank(), dist.get_global_rank(None, 1),
                  dist.get_world_group() is tdist.group.WORLD, dist.is_initialized())
    # A second init_distributed adopts the existing group instead of failing.
    dist.init_distributed(dist_backend="gloo")
    before = dist.log_summary().get("all_reduce", {"count": 0, "bytes": 0})
    for _ in range(3):
        dist.all_reduce(torch.ones(4))
    after = dist.log_summary()["all_reduce"]
    out["summary_delta"] = (after["count"] - before["count"], after["bytes"] - before["bytes"])
    return out


def test_point_to_point_objects_and_queries():
    results = run_distributed(_point_to_point_and_objects)
    assert results[0]["p2p"] == 43.0 and results[1]["p2p"] == 42.0
    assert results[0]["gather"] == [1.0, 2.0]
    assert [res["scatter"] for res in results] == [5.0, 7.0]
    for r, res in enumerate(results):
        assert res["bcast_obj"] == [{"from": 0}, None]
        assert res["ag_obj"] == [("x", 0), ("x", 1)]
        assert res["ids"] == (r, 2, r, 1, True, True)
        assert res["summary_delta"] == (3, 3 * 4 * 4)


# ---------------------------------------------------------------- groups
class _StubMpu:

    def get_data_parallel_group(self):
        return "dp-group"

    def get_data_parallel_world_size(self):
        return 17

    def get_data_parallel_rank(self):
        return 5


def _group_registry():
    r = dist.get_rank()
    out = {"dp_default": (groups.get_data_parallel_world_size(), groups.get_data_parallel_rank(),
                          groups.get_data_parallel_group() is tdist.group.WORLD)}
    out["mpu"] = (groups.get_data_parallel_group(_StubMpu()), groups.get_data_parallel_world_size(_StubMpu()),
                  groups.get_data_parallel_rank(_StubMpu()))
    pair = groups.create_group("pairs", [[0, 1], [2, 3]])
    t = torch.tensor([float(r + 1)])
    dist.all_reduce(t, group=pair)
    out["pair_sum"] = t.item()
    out["pair_ranks"] = groups.get_group_ranks("pairs")
    out["pair_rank_size"] = (dist.get_rank(pair), dist.get_world_size(pair))
    out["pair_global_of_1"] = dist.get_global_rank(pair, 1)
    out["same_again"] = groups.create_group("pairs", [[1, 0], [3, 2]]) is pair
    try:
        groups.create_group("pairs", [[0, 2], [1, 3]])
        out["conflict"] = None
    except ValueError as err:
        out["conflict"] = str(err)
    try:
        groups.create_group("bad", [[0, 1], [1, 2]])
        out["overlap"] = None
    except ValueError as err:
        out["overlap"] = str(err)
    strided = groups.create_group(groups.DATA_PARALLEL, [[0, 2], [1, 3]])
    t = torch.tensor([float(r + 1)])
    dist.all_reduce(t, group=groups.get_data_parallel_group())
    out["dp_sum"] = t.item()
    out["dp_registered"] = (groups.get_data_parallel_group() is strided, groups.get_data_parallel_world_size(),
                            groups.get_data_parallel_rank())
    out["shim"] = (ds_utils_groups._get_data_parallel_world_size(), ds_utils_groups._get_data_parallel_rank(),
                   ds_utils_groups._get_data_parallel_group() is strided,
                   ds_utils_groups._get_sequence_parallel_world_size())
    try:
        groups.get_group("nope")
        out["missing"] = None
    except KeyError as err:
        out["missing"] = str(err)
    groups.reset()
    out["after_reset"] = (groups.has_group("pairs"), groups.get_data_parallel_world_size())
    return out


def test_group_registry_two_subgroups_on_four_ranks():
    results = run_distributed(_group_registry, world_size=4)
    for r, out in enumerate(results):
        assert out["dp_default"] == (4, r, True)
        assert out["mpu"] == ("dp-group", 17, 5)
        assert out["pair_sum"] == (3.0 if r < 2 else 7.0)
        assert out["pair_ranks"] == ([0, 1] if r < 2 else [2, 3])
        assert out["pair_rank_size"] == (r % 2, 2)
        assert out["pair_global_of_1"] == (1 if r < 2 else 3)
        assert out["same_again"] is True
        assert "already exists" in out["conflict"]
        assert "overlap" in out["overlap"]
        assert out["dp_sum"] == (1.0 + 3.0 if r % 2 == 0 else 2.0 + 4.0)
        assert out["dp_registered"] == (True, 2, r // 2)
        assert out["shim"] == (2, r // 2, True, 1)
        assert "pairs" in out["missing"]
        assert out["after_reset"] == (False, 4)


# ---------------------------------------------------------------- timeouts
def _skip_collective(marker: str):
    dist.init_distributed(dist_backend="gloo", timeout=timedelta(seconds=2), verbose=False)
    if dist.get_rank() == 1:
        # Skip the all_reduce, but stay alive until rank 0 has seen the
        # timeout, so rank 0 sees a timeout rather than a closed socket.
        deadline = time.monotonic() + 60
        while not os.path.exists(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        return None
    start = time.monotonic()
    try:
        dist.all_reduce(torch.ones(3))
    except CollectiveTimeoutError as err:
        elapsed = time.monotonic() - start
        open(marker, "w").close()
        return str(err), elapsed, err.op, err.rank, err.world_size, isinstance(err, RuntimeError)
    finally:
        open(marker, "a").close()
    return None


def test_collective_timeout_names_op_and_rank(tmp_path):
    start = time.monotonic()
    result = run_distributed(_skip_collective, args=(str(tmp_path / "done"),), init=False, timeout=60)[0]
    assert result is not None, "rank 0's all_reduce should have timed out"
    message, elapsed, op, rank, world, is_runtime = result
    assert "all_reduce" in message and "rank 0" in message and "world size 2" in message and "2s" in message
    assert (op, rank, world, is_runtime) == ("all_reduce", 0, 2, True)
    assert 1.5 < elapsed < 15
    assert time.monotonic() - start < 30


# ---------------------------------------------------------------- init
def _init_and_report():
    dist.init_distributed(dist_backend="gloo")
    t = torch.full((2,), 4.0)
    dist.all_reduce(t, op=ReduceOp.AVG)
    return (dist.get_rank(), dist.get_world_size(), os.environ.get("LOCAL_RANK"), t.tolist(),
            comm_impl._STATE.timeout)


def test_single_process_fallback_without_launcher():
    unset = {k: None for k in _LAUNCH_VARS}
    assert run_distributed(_init_and_report, world_size=1, init=False, env=unset) == [
        (0, 1, "0", [4.0, 4.0], timedelta(minutes=10))
    ]
    with_timeout = {**unset, "DEEPSPEED_TIMEOUT": "2"}
    assert run_distributed(_init_and_report, world_size=1, init=False, env=with_timeout)[0][4] == timedelta(minutes=2)


def _partial_env_init():
    try:
        dist.init_distributed(dist_backend="gloo")
    except RuntimeError as err:
        return str(err)
    return None


def test_partial_launcher_env_raises_naming_missing_vars():
    message = run_distributed(_partial_env_init, world_size=1, init=False,
                              env={"MASTER_PORT": None, "LOCAL_RANK": None})[0]
    assert message is not None and "MASTER_PORT" in message and "LOCAL_RANK" in message
    assert "MASTER_ADDR" not in message.split("found")[0]


# ---------------------------------------------------------------- harness
def _fail_on_rank_one():
    if dist.get_rank() == 1:
        raise ValueError("marker-7f3 from rank one")
    dist.barrier()  # rank 0 would wait here forever without the harness killing it


def test_harness_reports_failing_rank_traceback():
    start = time.monotonic()
    with pytest.raises(AssertionError) as info:
        run_distributed(_fail_on_rank_one, timeout=60)
    text = str(info.value)
    assert "rank 1" in text and "marker-7f3" in text and "Traceback" in text and "_fail_on_rank_one" in text
    assert time.monotonic() - start < 20


def _hang_on_rank_one():
    if dist.get_rank() == 1:
        time.sleep(60)
    return "done"


def test_harness_timeout_lists_unfinished_ranks():
    start = time.monotonic()
    with pytest.raises(AssertionError, match=r"ranks \[1\] had not finished"):
        run_distributed(_hang_on_rank_one, timeout=2)
    assert time.monotonic() - start < 10


def _matmul_rank():
    a = torch.randn(512, 512)
    total = torch.tensor([(a @ a).shape[0] * 1.0])
    dist.all_reduce(total)
    return total.item()


def test_fork_after_parent_multithreaded_matmul():
    a = torch.randn(512, 512)
    for _ in range(3):
        a = torch.tanh(a @ a)
    assert run_distributed(_matmul_rank, timeout=60) == [1024.0, 1024.0]


@distributed_test(world_size=2)
def test_distributed_test_decorator_passes_fixtures(tmp_path):
    (tmp_path / f"rank{dist.get_rank()}").write_text("x")
    dist.barrier()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank0", "rank1"]



def _scheduler_env_init(names):
    rank = os.environ["RANK"]
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        del os.environ[var]
    os.environ.update({names[0]: rank, names[1]: "2", names[2]: rank})
    return _init_and_report()[:3]


@pytest.mark.parametrize("names", [("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
                                   ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")])
def test_open_mpi_and_slurm_rank_variables_are_used(names):
    # ranks that only know the scheduler's variables (plus the master address)
    assert run_distributed(_scheduler_env_init, world_size=2, init=False, args=(names,)) == [
        (0, 2, "0"), (1, 2, "1")]


def _destroy_with_a_late_peer():
    """Rank 1 tears down 2 s late; rank 0 (the store's host) must not return before it has."""
    rank = dist.get_rank()
    if rank == 1:
        time.sleep(2.0)
    dist.destroy_process_group()
    return rank, time.time(), tdist.is_initialized()


def test_destroying_the_world_waits_for_every_rank():
    (r0, t0, init0), (r1, t1, init1) = run_distributed(_destroy_with_a_late_peer, world_size=2, timeout=60)
    assert (r0, r1) == (0, 1) and not init0 and not init1
    # rank 0 returned after rank 1 finished its teardown (clock skew: same host), and not 60 s later
    assert t1 <= t0 < t1 + 20
